"""The ULX3S (ECP5-85F) build: input gearboxes, clocks, and a placeholder host port.

Input capture on ECP5: IDDRX2F is the widest input gearbox the family has (the 7:1 mode is
for video receivers). It takes the pad at 2 bits per ECLK and gives 4 bits per SCLK = ECLK / 2.
Lattice's ECP5 datasheet (DS1044, "High-Speed I/O Interface") allows generic DDRX2 inputs up to
800 Mb/s in speed grades 6, so: ECLK 400 MHz, system clock 200 MHz, 4 samples per clock, a bin
of 1/800 MHz = 1250 ps. (The RTL also takes 8 bits per clock, which gives 1 ns at 125 MHz on
parts whose input SERDES runs at 1 Gb/s; ECP5 does not reach that.) X2 gearing exists only on the
left and right banks, so the 8 inputs are the ULX3S GPIO header pins on the right edge.

Until the link arrives (a later issue), registers are reached through a 3-wire shift port
(``reg_sck``, ``reg_sdi``, ``reg_sdo`` on spare header pins) and the event words are folded into
the LEDs, so synthesis keeps every path the real design has: this is for resource and timing
figures, not for use in the lab.
"""

from amaranth import Cat, ClockDomain, ClockSignal, Elaboratable, Module, ResetSignal, Signal
from amaranth.build import Attrs, Pins, Resource
from amaranth.hdl import Instance
from amaranth.lib import io

from qnode.firmware.registers import ADDRESS_BITS, DATA_BITS

from .core import TimeTaggerCore

SYS_CLK_HZ = 200_000_000
ECLK_HZ = 400_000_000
OVERSAMPLING = 4
INPUT_PINS = ("14+", "15+", "16+", "17+", "18+", "19+", "20+", "21+")  # right-edge banks
REG_PINS = {"reg_sck": "0+", "reg_sdi": "1+", "reg_sdo": "2+", "words_ready": "3+"}


def ulx3s_resources():
    res = [Resource("tdc_in", i, Pins(pin, dir="i", conn=("gpio", 0)), Attrs(IO_TYPE="LVCMOS33"))
           for i, pin in enumerate(INPUT_PINS)]
    for name, pin in REG_PINS.items():
        direction = "o" if name == "reg_sdo" else "i"
        res.append(Resource(name, 0, Pins(pin, dir=direction, conn=("gpio", 0)), Attrs(IO_TYPE="LVCMOS33")))
    return res


class ULX3STop(Elaboratable):
    def __init__(self, channels: int = 8, fifo_depth: int = 16, output_depth: int = 16):
        self.core = TimeTaggerCore(channels=channels, oversampling=OVERSAMPLING,
                                   sys_clk_hz=SYS_CLK_HZ, fifo_depth=fifo_depth,
                                   output_depth=output_depth)

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

        m.submodules.core = core = self.core
        for i in range(core.channels):
            pad = platform.request("tdc_in", i, dir="-")
            buf = io.Buffer("i", pad)
            m.submodules[f"tdc_buf{i}"] = buf
            q = [Signal(name=f"tdc{i}_q{b}") for b in range(OVERSAMPLING)]
            m.submodules[f"iddr{i}"] = Instance(
                "IDDRX2F", i_D=buf.i, i_ECLK=eclk, i_SCLK=sclk, i_RST=0, i_ALIGNWD=0,
                o_Q0=q[0], o_Q1=q[1], o_Q2=q[2], o_Q3=q[3])  # Q0 is the earliest sample
            m.d.comb += core.pins[i].eq(Cat(q))

        # Placeholder host port: shift in {w_en, addr, data}, shift out r_data.
        pins = {name: platform.request(name, 0) for name in REG_PINS}
        sck_q = Signal(3)
        m.d.sync += sck_q.eq(Cat(pins["reg_sck"].i, sck_q[:2]))
        rise = sck_q[1] & ~sck_q[2]
        frame = Signal(1 + ADDRESS_BITS + DATA_BITS)
        out = Signal(DATA_BITS)
        bits = Signal(range(len(frame) + 1))
        m.d.comb += [core.addr.eq(frame[DATA_BITS:DATA_BITS + ADDRESS_BITS]),
                     core.w_data.eq(frame[:DATA_BITS]), pins["reg_sdo"].o.eq(out[-1])]
        m.d.sync += core.w_en.eq(0)
        with m.If(rise):
            m.d.sync += [frame.eq(Cat(pins["reg_sdi"].i, frame[:-1])), out.eq(out << 1), bits.eq(bits + 1)]
            with m.If(bits == len(frame) - 1):
                m.d.sync += [core.w_en.eq(frame[-2]), bits.eq(0), out.eq(core.r_data)]

        fold = Signal(8)
        m.d.comb += core.words.ready.eq(pins["words_ready"].i)
        with m.If(core.words.valid & core.words.ready):
            m.d.sync += fold.eq(fold ^ Cat(core.words.payload[j::8].xor() for j in range(8)))
        for j in range(8):
            led = platform.request("led", j)
            m.d.comb += led.o.eq(fold[j])
        return m
