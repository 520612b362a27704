"""TimeTaggerCore: capture -> timestamper per channel -> channel FIFOs -> merger -> coincidence
unit -> packer, with the herald unit beside them on the timestampers' outputs.

The merged stream is an ordinary ``amaranth.lib.stream`` of (entry, channel); the coincidence
unit passes it on with its COINCIDENCE records behind the entries that completed them; the herald
unit listens to every timestamper's stage-B output (a fixed number of clocks after the pins),
drives ``herald_pin`` and hands its HERALD records to the packer. The link takes the packer's
``words`` stream. Registers come from firmware/registers.py REGISTER_MAP.
"""

from amaranth import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from qnode.firmware.events import PROTOCOL_VERSION
from qnode.firmware.registers import ADDRESS_BITS, DATA_BITS, REGISTER_MAP

from .capture import InputCapture, coarse_bits
from .channel_fifo import ChannelFifo
from .coincidence import Marked, CoincidenceUnit
from .herald import OUTCOMES, PIN_LATENCY, HeraldUnit
from .merger import Merged, Merger
from .packer import Packer
from .params import check_geometry
from .regfile import RegisterFile
from .skid import SkidBuffer
from .timestamper import Timestamper

COUNTERS = ("ts_tag_count", "ts_same_clock_lost", "ts_fifo_lost", "ts_output_lost")
COINC_SETTINGS = (("coinc_mask", "masks"), ("coinc_window_bins", "windows"),
                  ("coinc_min_fold", "min_folds"))
HERALD_SETTINGS = ("rule", "sync_channel", "detector_mask", "veto_mask", "offset_bins",
                   "length_bins", "late_bins", "pin_clocks")


class TimeTaggerCore(wiring.Component):
    def __init__(self, *, channels: int = 8, oversampling: int = 8, sys_clk_hz: int = 125_000_000,
                 fifo_depth: int = 16, output_depth: int = 16, start_now: int = 0,
                 coincidence: bool = True, herald: bool = True):
        """``start_now``: the clock counter's value at reset (tests start near an epoch edge).
        ``coincidence``/``herald``: build the coincidence unit (three more clocks between merger
        and packer: a skid buffer, the unit, a skid buffer) and the herald unit; without them their
        registers read 0."""
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
        self.coincidence = coincidence
        self.herald = herald
        self.regs = RegisterFile(
            REGISTER_MAP,
            constants={
                "protocol_version": PROTOCOL_VERSION, "gateware_hash": [0, 0],
                "channel_count": channels, "bin_ps": self.bin_ps, "oversampling": oversampling,
                "sys_clk_khz": sys_clk_hz // 1000,
                "herald_latency_clocks": PIN_LATENCY if herald else 0,
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
            "herald_pin": Out(1),
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
        if self.coincidence:
            m.submodules.coincidence = coinc = CoincidenceUnit()
            # register slices on both sides of the unit: its pattern logic reads flip-flops, not
            # the merger root's slot mux (whose select fanned out over a 5 ns route), and the
            # unit's record select and the packer's take each end at registers
            m.submodules.merged_skid = merged = SkidBuffer(Merged)
            m.submodules.coincidence_skid = skid = SkidBuffer(Marked)
            wiring.connect(m, merger.merged, merged.input)
            wiring.connect(m, merged.output, coinc.merged)
            wiring.connect(m, coinc.marked, skid.input)
            wiring.connect(m, skid.output, packer.marked)
            for reg, port in COINC_SETTINGS:
                for p in range(coinc.patterns):
                    m.d.comb += getattr(coinc, port)[p].eq(self._local(m, regs.rw[reg][p]))
            m.d.comb += coinc.emit.eq(self._local(m, regs.rw["coinc_emit"][0]))
            # counted a clock late: the pulse leaves the unit's take/ready logic through a
            # register, not into the counters' adders
            counted = Signal(coinc.patterns)
            m.d.sync += counted.eq(coinc.counted)
            self._count(m, regs.wo["coinc_counters_clear"],
                        [(regs.ro["coinc_count"][p], counted[p]) for p in range(coinc.patterns)])
        else:
            marked = Signal(Marked)
            m.d.comb += [marked.entry.eq(merger.merged.payload.entry),
                         marked.channel.eq(merger.merged.payload.channel),
                         marked.source.eq(merger.merged.payload.channel),
                         packer.marked.valid.eq(merger.merged.valid),
                         packer.marked.payload.eq(marked),
                         merger.merged.ready.eq(packer.marked.ready)]
        wiring.connect(m, wiring.flipped(self.words), packer.words)

        if self.herald:
            m.submodules.herald = herald = HeraldUnit(c, n)
            m.d.comb += herald.now.eq(now)
            for name in HERALD_SETTINGS:
                m.d.comb += getattr(herald, name).eq(self._local(m, regs.rw[f"herald_{name}"][0]))
            m.d.comb += [packer.herald.valid.eq(herald.record.valid),
                         packer.herald.payload.eq(herald.record.payload),
                         self.herald_pin.eq(herald.pin)]
            ro = regs.ro
            self._count(m, regs.wo["herald_counters_clear"], [
                (ro["herald_attempt_count"][0], herald.attempt),
                *[(ro["herald_success_count"][k], herald.success[k]) for k in range(OUTCOMES)],
                (ro["herald_veto_count"][0], herald.vetoed),
                (ro["herald_late_count"][0], herald.late),
                # a full attempt queue, or (it cannot happen, packer.py) a full herald queue
                (ro["herald_lost_count"][0], herald.lost + packer.herald_overflow),
            ])

        clear = regs.wo["ts_counters_clear"]
        counters = {name: regs.ro[name] for name in COUNTERS}
        for i in range(c):
            ts = Timestamper(n)
            fifo = ChannelFifo(self.fifo_depth)
            m.submodules[f"timestamper{i}"] = ts
            m.submodules[f"fifo{i}"] = fifo
            # Each timestamper counts its own copy of capture.sample_now (the count of the clock
            # its word was sampled in): one register for all of them (synthesis merges copies
            # loaded alike) was an 8.6 ns route to the farthest channel's time adders, and
            # counters, each fed by its own output, are never merged. It equals sample_now from
            # the clock after reset on (sample_now starts at 0 there, when no word holds an edge).
            sample_now = Signal(coarse_bits(n), name=f"sample_now_{i}",
                                init=(self.start_now - 1) % (1 << coarse_bits(n)))
            m.d.sync += sample_now.eq(sample_now + 1)
            m.d.comb += [
                ts.samples.eq(capture.samples[i]),
                ts.sample_now.eq(sample_now),
                ts.enable.eq(self._local(m, regs.rw["ts_enable"][i])),
                ts.edge.eq(self._local(m, regs.rw["ts_edge"][i])),
                ts.delay_bins.eq(self._local(m, regs.rw["ts_delay_bins"][i])),
                ts.dead_time_bins.eq(self._local(m, regs.rw["ts_dead_time_bins"][i])),
            ]
            wiring.connect(m, ts.entry, fifo.entry)
            wiring.connect(m, fifo.head, merger.heads[i])
            if self.herald:
                m.d.comb += [herald.tags[i].valid.eq(ts.entry.valid),
                             herald.tags[i].payload.eq(ts.entry.payload),
                             herald.lost_times[i].eq(ts.lost_time),
                             herald.delays[i].eq(self._local(m, regs.rw["ts_delay_bins"][i]))]

            increments = {
                "ts_tag_count": ts.tagged,
                "ts_same_clock_lost": ts.same_clock_lost,
                "ts_fifo_lost": fifo.dropped,
                "ts_output_lost": Mux(packer.dropped_channel == i, packer.dropped, 0),
            }
            for name, inc in increments.items():
                # counted a clock late: the 32-bit adders start from flip-flops, not from the
                # timestamper's same-clock popcount or the FIFO's and the packer's drop logic
                inc_q = Signal(inc.shape(), name=f"{name}_inc_{i}")
                m.d.sync += inc_q.eq(inc)
                counter = counters[name][i]
                with m.If(clear):
                    m.d.sync += counter.eq(0)
                with m.Else():
                    m.d.sync += counter.eq(counter + inc_q)
        return m

    @staticmethod
    def _local(m, setting):
        """A registered copy of a register-file setting for one unit: the copy can sit next to
        the logic it feeds instead of every unit reaching back to the register file (settings
        are static while events flow; a write takes effect a clock later)."""
        copy = Signal.like(setting, name=f"local_{setting.name}")
        m.d.sync += copy.eq(setting)
        return copy

    @staticmethod
    def _count(m, clear, pairs):
        """Counters (register, increment this clock) that a write-only strobe zeroes."""
        for counter, inc in pairs:
            with m.If(clear):
                m.d.sync += counter.eq(0)
            with m.Else():
                m.d.sync += counter.eq(counter + inc)
