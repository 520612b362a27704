"""The ULX3S (ECP5-85F) build: input gearboxes, clocks, and the host link on the FTDI UART.

Input capture on ECP5 (gateware/capture.py, ``ECP5Capture``): IDDRX2F is the widest input
gearbox the family has (the 7:1 mode is for video receivers). It takes the pad at 2 bits per
ECLK and gives 4 bits per SCLK = ECLK / 2. Lattice's ECP5 datasheet (DS1044, "High-Speed I/O
Interface") allows generic DDRX2 inputs up to 800 Mb/s in speed grade 6, so: ECLK 400 MHz,
SCLK 200 MHz, 4 samples per SCLK, a bin of 1/800 MHz = 1250 ps. The core does not close timing
at 200 MHz on this device, so the 4-bit words are geared 2:1 in fabric into a 100 MHz system
clock from the same PLL: N = 8 samples per 100 MHz clock, the same 1250 ps bin. (The RTL also
gives 1 ns with N = 8 at 125 MHz on parts whose input SERDES runs at 1 Gb/s; ECP5 does not reach
that.) X2 gearing exists only on the left and right banks, so the 8 inputs are the ULX3S GPIO
header pins on the right edge.

The host talks to it over the FTDI USB-UART (amaranth-boards' ``uart`` resource: rx M1, tx L4)
through gateware/top.py's LinkedTimeTagger (core + link engine + UART, 3 Mbaud by default);
The herald pin is GPIO gp0 (``HERALD_PIN``); LED 0 shows the link receiving, LED 1 sending,
LED 7 the PLL lock.
"""

from amaranth import Elaboratable, Module
from amaranth.build import Attrs, Pins, Resource
from amaranth.lib import io

from .capture import ECP5_OVERSAMPLING, ECP5_SYS_CLK_HZ, ECP5Capture
from .top import DEFAULT_BAUD, LinkedTimeTagger

SYS_CLK_HZ = ECP5_SYS_CLK_HZ  # 100 MHz: the core's clock after the 2:1 gearbox
OVERSAMPLING = ECP5_OVERSAMPLING  # 8 samples per system clock, bin 1250 ps
INPUT_PINS = ("14+", "15+", "16+", "17+", "18+", "19+", "20+", "21+")  # right-edge banks
HERALD_PIN = "0+"  # GPIO header gp0: the herald unit's output
BOARD = "ulx3s"

__all__ = ["BOARD", "DEFAULT_BAUD", "HERALD_PIN", "INPUT_PINS", "OVERSAMPLING", "SYS_CLK_HZ", "ULX3STop",
           "ulx3s_resources"]


def ulx3s_resources():
    return [Resource("tdc_in", i, Pins(pin, dir="i", conn=("gpio", 0)), Attrs(IO_TYPE="LVCMOS33"))
            for i, pin in enumerate(INPUT_PINS)] + [
        Resource("herald_out", 0, Pins(HERALD_PIN, dir="o", conn=("gpio", 0)),
                 Attrs(IO_TYPE="LVCMOS33", DRIVE="8"))]


class ULX3STop(Elaboratable):
    def __init__(self, channels: int = 8, fifo_depth: int = 16, output_depth: int = 16,
                 baud: int = DEFAULT_BAUD, gateware_hash: str = "0" * 16,
                 coincidence: bool = True, herald: bool = True):
        """``gateware_hash``: the manifest's content hash (gateware/manifest.py), 16 hex digits.
        ``coincidence``/``herald``: build the core's coincidence and herald units."""
        self.capture = ECP5Capture(channels)
        self.linked = LinkedTimeTagger(board=BOARD, channels=channels, oversampling=OVERSAMPLING,
                                       sys_clk_hz=SYS_CLK_HZ, baud=baud, gateware_hash=gateware_hash,
                                       fifo_depth=fifo_depth, output_depth=output_depth,
                                       coincidence=coincidence, herald=herald)
        self.core = self.linked.core

    def elaborate(self, platform):
        m = Module()
        # ECP5Capture owns the clocks: the PLL, the 200 MHz ``capture`` and 100 MHz ``sync``
        # domains (held in reset until the PLL locks), and the clock constraints of both.
        m.submodules.capture = capture = self.capture
        clk25 = platform.request("clk25", dir="-")
        m.submodules.clk25_buf = clk25_buf = io.Buffer("i", clk25)
        m.d.comb += capture.clk25.eq(clk25_buf.i)
        for i in range(capture.channels):
            m.submodules[f"tdc_buf{i}"] = buf = io.Buffer("i", platform.request("tdc_in", i, dir="-"))
            m.d.comb += capture.pads[i].eq(buf.i)

        m.submodules.linked = linked = self.linked
        m.d.comb += linked.pins.eq(capture.words)

        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx_buf = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.uart_tx_buf = tx_buf = io.Buffer("o", uart.tx)
        m.d.comb += [linked.uart_rx.eq(rx_buf.i), tx_buf.o.eq(linked.uart_tx)]
        m.submodules.herald_buf = herald_buf = io.Buffer("o", platform.request("herald_out", 0, dir="-"))
        m.d.comb += herald_buf.o.eq(linked.herald_pin)
        for j, level in ((0, ~linked.uart_rx), (1, ~linked.uart_tx), (7, capture.locked)):
            m.submodules[f"led{j}"] = led = io.Buffer("o", platform.request("led", j, dir="-"))
            m.d.comb += led.o.eq(level)
        return m
