"""TimeTaggerCore: capture -> timestamper per channel -> channel FIFOs -> merger -> packer.

The merged stream between Merger and Packer is an ordinary ``amaranth.lib.stream`` of
(entry, channel): the coincidence and herald units of later issues slot in there, and the link
takes the packer's ``words`` stream. Registers come from firmware/registers.py REGISTER_MAP.
"""

from amaranth import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from qnode.firmware.events import PROTOCOL_VERSION
from qnode.firmware.registers import ADDRESS_BITS, DATA_BITS, REGISTER_MAP

from .capture import InputCapture, coarse_bits
from .channel_fifo import ChannelFifo
from .merger import Merger
from .packer import Packer
from .params import check_geometry
from .regfile import RegisterFile
from .timestamper import Timestamper

COUNTERS = ("ts_tag_count", "ts_same_clock_lost", "ts_fifo_lost", "ts_output_lost")


class TimeTaggerCore(wiring.Component):
    def __init__(self, *, channels: int = 8, oversampling: int = 8, sys_clk_hz: int = 125_000_000,
                 fifo_depth: int = 16, output_depth: int = 16, start_now: int = 0):
        """``start_now``: the clock counter's value at reset (tests start near an epoch edge)."""
        check_geometry(channels, oversampling, fifo_depth, output_depth)
        if 10**12 % (sys_clk_hz * oversampling):
            raise ValueError("sys_clk_hz * oversampling must give a whole number of ps per bin")
        self.channels = channels
        self.oversampling = oversampling
        self.sys_clk_hz = sys_clk_hz
        self.bin_ps = 10**12 // (sys_clk_hz * oversampling)
        self.fifo_depth = fifo_depth
        self.output_depth = output_depth
        self.start_now = start_now
        self.regs = RegisterFile(
            REGISTER_MAP,
            constants={
                "protocol_version": PROTOCOL_VERSION, "gateware_hash": [0, 0],
                "channel_count": channels, "bin_ps": self.bin_ps, "oversampling": oversampling,
                "sys_clk_khz": sys_clk_hz // 1000,
            },
            implemented={reg.name: channels for reg in REGISTER_MAP if reg.name.startswith("ts_")},
        )
        super().__init__({
            "pins": In(data.ArrayLayout(oversampling, channels)),
            "words": Out(stream.Signature(64)),
            "addr": In(ADDRESS_BITS),
            "w_en": In(1),
            "w_data": In(DATA_BITS),
            "r_data": Out(DATA_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        n, c = self.oversampling, self.channels

        m.submodules.regs = regs = self.regs
        m.d.comb += [regs.addr.eq(self.addr), regs.w_en.eq(self.w_en), regs.w_data.eq(self.w_data),
                     self.r_data.eq(regs.r_data)]

        now = Signal(coarse_bits(n), init=self.start_now)  # coarse time: one count per clock
        m.d.sync += now.eq(now + 1)

        m.submodules.capture = capture = InputCapture(c, n)
        m.d.comb += [capture.pins.eq(self.pins), capture.now.eq(now)]

        m.submodules.merger = merger = Merger(c, n, self.start_now)

        m.submodules.packer = packer = Packer(c, self.bin_ps, self.output_depth)
        wiring.connect(m, merger.merged, packer.merged)
        wiring.connect(m, wiring.flipped(self.words), packer.words)

        clear = regs.wo["ts_counters_clear"]
        counters = {name: regs.ro[name] for name in COUNTERS}
        for i in range(c):
            ts = Timestamper(n)
            fifo = ChannelFifo(self.fifo_depth)
            m.submodules[f"timestamper{i}"] = ts
            m.submodules[f"fifo{i}"] = fifo
            m.d.comb += [
                ts.samples.eq(capture.samples[i]),
                ts.sample_now.eq(capture.sample_now),
                ts.enable.eq(regs.rw["ts_enable"][i]),
                ts.edge.eq(regs.rw["ts_edge"][i]),
                ts.delay_bins.eq(regs.rw["ts_delay_bins"][i]),
                ts.dead_time_bins.eq(regs.rw["ts_dead_time_bins"][i]),
            ]
            wiring.connect(m, ts.entry, fifo.entry)
            wiring.connect(m, fifo.head, merger.heads[i])

            increments = {
                "ts_tag_count": ts.tagged,
                "ts_same_clock_lost": ts.same_clock_lost,
                "ts_fifo_lost": fifo.dropped,
                "ts_output_lost": Mux(packer.dropped_channel == i, packer.dropped, 0),
            }
            for name, inc in increments.items():
                counter = counters[name][i]
                with m.If(clear):
                    m.d.sync += counter.eq(0)
                with m.Else():
                    m.d.sync += counter.eq(counter + inc)
        return m
