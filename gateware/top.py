"""LinkedTimeTagger: TimeTaggerCore + LinkEngine + UART -- detector pins in, one serial line
each way, and the herald pin out. The board tops (gateware/ulx3s.py) add clocks, input
gearboxes and pads around it.

The link engine is the register bus master and takes the packer's word stream; its word FIFO's
``ready`` back-pressures the packer, which turns what it cannot send into LOSS (OUTPUT) records.
The register file is built with its registered bus and two-stage read path (``read_latency=3``,
gateware/regfile.py): the one-clock decode and read mux, and then the bus address's fan-out to
every bank, were critical paths of the ULX3S build; the link engine waits the extra clocks. (The
bare TimeTaggerCore keeps one clock, which its testbenches use.)
The identity registers carry ``gateware_hash`` (16 hex digits, the manifest's content hash,
gateware/manifest.py), so IDENTIFY and a register read both say which build is running.
"""

from amaranth import Module
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .core import TimeTaggerCore
from .link_engine import LinkEngine
from .uart import UART, divisor_for

DEFAULT_BAUD = 3_000_000  # the ULX3S's FT231X runs to 3 Mbaud


class LinkedTimeTagger(wiring.Component):
    def __init__(self, *, board: str, channels: int = 8, oversampling: int = 8,
                 sys_clk_hz: int = 125_000_000, baud: int = DEFAULT_BAUD,
                 gateware_hash: str = "0" * 16, fifo_depth: int = 16, output_depth: int = 16,
                 word_fifo_depth: int = 1024, start_now: int = 0, read_latency: int = 3,
                 coincidence: bool = True, herald: bool = True):
        """``coincidence``/``herald``: build the core's coincidence and herald units (both by
        default; without them their registers read 0)."""
        self.baud = baud
        self.divisor = divisor_for(sys_clk_hz, baud)
        self.gateware_hash = gateware_hash
        self.core = TimeTaggerCore(channels=channels, oversampling=oversampling,
                                   sys_clk_hz=sys_clk_hz, fifo_depth=fifo_depth,
                                   output_depth=output_depth, start_now=start_now,
                                   coincidence=coincidence, herald=herald)
        ghash = int(gateware_hash, 16)
        if not 0 <= ghash < 1 << 64:
            raise ValueError(f"gateware_hash {gateware_hash!r} is not 16 hex digits")
        # The core declares the identity block from the register map with the hash at 0; the
        # build fills in the real one (register 0 = low 32 bits, as the simulated FPGA has it).
        self.core.regs.constants["gateware_hash"] = [ghash & 0xFFFF_FFFF, ghash >> 32]
        self.core.regs.read_latency = read_latency
        self.link = LinkEngine(board=board, word_fifo_depth=word_fifo_depth,
                               read_latency=read_latency)
        self.uart = UART(self.divisor)
        super().__init__({
            "pins": In(data.ArrayLayout(oversampling, channels)),
            "uart_rx": In(1, init=1),
            "uart_tx": Out(1, init=1),
            "herald_pin": Out(1),  # the herald unit's output (docs/gateware.md, herald latency)
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        m.submodules.link = link = self.link
        m.submodules.uart = uart = self.uart
        m.d.comb += [
            core.pins.eq(self.pins),
            uart.rx_pin.eq(self.uart_rx),
            self.herald_pin.eq(core.herald_pin),
            self.uart_tx.eq(uart.tx_pin),
            core.addr.eq(link.addr), core.w_en.eq(link.w_en), core.w_data.eq(link.w_data),
            link.r_data.eq(core.r_data),
        ]
        wiring.connect(m, uart.rx, link.rx)
        wiring.connect(m, link.tx, uart.tx)
        wiring.connect(m, core.words, link.words)
        return m
