"""The ULX3S (ECP5-85F) build: input gearboxes, clocks, and a placeholder host port.

Input capture on ECP5: IDDRX2F is the widest input gearbox the family has (the 7:1 mode is
for video receivers). It takes the pad at 2 bits per ECLK and gives 4 bits per SCLK = ECLK / 2.
Lattice's ECP5 datasheet (DS1044, "High-Speed I/O Interface") allows generic DDRX2 inputs up to
800 Mb/s in speed grades 6, so: ECLK 400 MHz, system clock 200 MHz, 4 samples per clock, a bin
of 1/800 MHz = 1250 ps. (The RTL also takes 8 bits per clock, which gives 1 ns at 125 MHz on
parts whose input SERDES runs at 1 Gb/s; ECP5 does not reach that.) X2 gearing exists only on the
left and right banks, so the 8 inputs are the ULX3S GPIO header pins on the right edge.

The host talks to it over the FTDI USB-UART (amaranth-boards' ``uart`` resource: rx M1, tx L4)
through gateware/top.py's LinkedTimeTagger (core + link engine + UART, 3 Mbaud by default);
LED 0 shows the link receiving, LED 1 sending, LED 7 the PLL lock.
"""

from amaranth import Cat, ClockDomain, ClockSignal, Elaboratable, Module, ResetSignal, Signal
from amaranth.build import Attrs, Pins, Resource
from amaranth.hdl import Instance
from amaranth.lib import io

from .top import DEFAULT_BAUD, LinkedTimeTagger

SYS_CLK_HZ = 200_000_000
ECLK_HZ = 400_000_000
OVERSAMPLING = 4
INPUT_PINS = ("14+", "15+", "16+", "17+", "18+", "19+", "20+", "21+")  # right-edge banks
BOARD = "ulx3s"


def ulx3s_resources():
    return [Resource("tdc_in", i, Pins(pin, dir="i", conn=("gpio", 0)), Attrs(IO_TYPE="LVCMOS33"))
            for i, pin in enumerate(INPUT_PINS)]


class ULX3STop(Elaboratable):
    def __init__(self, channels: int = 8, fifo_depth: int = 16, output_depth: int = 16,
                 baud: int = DEFAULT_BAUD, gateware_hash: str = "0" * 16):
        """``gateware_hash``: the manifest's content hash (gateware/manifest.py), 16 hex digits."""
        self.linked = LinkedTimeTagger(board=BOARD, channels=channels, oversampling=OVERSAMPLING,
                                       sys_clk_hz=SYS_CLK_HZ, baud=baud, gateware_hash=gateware_hash,
                                       fifo_depth=fifo_depth, output_depth=output_depth)
        self.core = self.linked.core

    def elaborate(self, platform):
        m = Module()
        clk25 = platform.request("clk25", dir="-")
        m.submodules.clk25_buf = clk25_buf = io.Buffer("i", clk25)

        # 25 MHz -> 400 MHz edge clock (VCO 800 MHz), divided by 2 for the system clock.
        pll_out, locked = Signal(name="pll_out"), Signal(name="pll_locked")
        eclk, sclk = Signal(name="eclk"), Signal(name="sclk")
        m.submodules.pll = Instance(
            "EHXPLLL",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
            p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
            p_CLKI_DIV=1, p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=2, p_CLKOP_CPHASE=1,
            p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=16,
            i_RST=0, i_STDBY=0, i_CLKI=clk25_buf.i, o_CLKOP=pll_out, i_CLKFB=pll_out,
            i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
            i_PLLWAKESYNC=0, i_ENCLKOP=0, o_LOCK=locked,
            a_FREQUENCY_PIN_CLKI="25", a_FREQUENCY_PIN_CLKOP="400",
            a_ICP_CURRENT="6", a_LPF_RESISTOR="16", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
        )
        m.submodules.eclksync = Instance("ECLKSYNCB", i_ECLKI=pll_out, i_STOP=0, o_ECLKO=eclk)
        m.submodules.clkdiv = Instance("CLKDIVF", p_DIV="2.0", i_CLKI=eclk, i_RST=0,
                                       i_ALIGNWD=0, o_CDIVX=sclk)
        m.domains.sync = ClockDomain()
        m.d.comb += [ClockSignal("sync").eq(sclk), ResetSignal("sync").eq(~locked)]
        # nextpnr derives the 200 MHz of the system clock through the PLL and CLKDIVF itself
        # ("Derived frequency constraint of 200.0 MHz for net clk"); the edge clock is named.
        platform.add_clock_constraint(eclk, ECLK_HZ)

        m.submodules.linked = linked = self.linked
        core = linked.core
        for i in range(core.channels):
            pad = platform.request("tdc_in", i, dir="-")
            buf = io.Buffer("i", pad)
            m.submodules[f"tdc_buf{i}"] = buf
            q = [Signal(name=f"tdc{i}_q{b}") for b in range(OVERSAMPLING)]
            m.submodules[f"iddr{i}"] = Instance(
                "IDDRX2F", i_D=buf.i, i_ECLK=eclk, i_SCLK=sclk, i_RST=0, i_ALIGNWD=0,
                o_Q0=q[0], o_Q1=q[1], o_Q2=q[2], o_Q3=q[3])  # Q0 is the earliest sample
            m.d.comb += linked.pins[i].eq(Cat(q))

        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx_buf = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.uart_tx_buf = tx_buf = io.Buffer("o", uart.tx)
        m.d.comb += [linked.uart_rx.eq(rx_buf.i), tx_buf.o.eq(linked.uart_tx)]
        for j, level in ((0, ~linked.uart_rx), (1, ~linked.uart_tx), (7, locked)):
            m.submodules[f"led{j}"] = led = io.Buffer("o", platform.request("led", j, dir="-"))
            m.d.comb += led.o.eq(level)
        return m
