"""Timestamper: one channel's sample words -> at most one tag per clock, with its same-clock losses.

Stage A finds the edges in the word (against the previous word's last bit, so an edge at bit 0 is
seen), masks those still inside the dead time, and takes the earliest left by priority encoder.
Any further edge in the same word that is past the dead time measured from that tag cannot be
recorded (one tag per channel per clock): it is counted and leaves as a LOSS record with reason
SAME_CLOCK right behind the tag, carrying the first lost edge's time. Nothing is dropped silently.

Stage B adds the channel's delay: ``time_bins = now * N + fine + delay_bins``, and finds the
same-clock losses from stage A's registered edges.

Dead time runs from recorded tags only (edges lost in the same clock do not extend it). An edge
inside the dead time is ignored by design (the detector's own recovery, set by the user) and is
not counted as lost. Changing ``delay_bins`` while a channel is enabled can reorder its events;
disable the channel, change it, enable it again.
"""

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from qnode.firmware.registers import DEAD_TIME_BITS, DELAY_BITS, REGISTER_MAP

from . import onehot
from .capture import coarse_bits
from .params import COUNT_BITS, ENTRY_FIELDS, GAP_BITS, TIME_BITS

DEAD_TIME_RESET = REGISTER_MAP["ts_dead_time_bins"].reset

Entry = data.StructLayout(dict(ENTRY_FIELDS))
"""A ChannelFifo entry (see gateware/params.py for what each field means)."""


class Timestamper(wiring.Component):
    def __init__(self, oversampling: int):
        self.oversampling = oversampling
        super().__init__({
            "samples": In(oversampling),
            "sample_now": In(coarse_bits(oversampling)),
            "enable": In(1),
            "edge": In(1),  # 0 rising, 1 falling
            "delay_bins": In(DELAY_BITS),
            "dead_time_bins": In(DEAD_TIME_BITS),
            "entry": Out(stream.Signature(Entry, always_ready=True)),
            "tagged": Out(1),  # stage A found a tag this clock (for the tag counter)
            "same_clock_lost": Out(range(oversampling)),  # edges lost in this clock
            # with ``entry``: time + gap, the first same-clock loss's time, when its count is not
            # 0 (the herald unit counts it as a click; here it costs an adder beside stage B's,
            # not one after it)
            "lost_time": Out(TIME_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.oversampling
        shift = n.bit_length() - 1

        # --- stage A: edges, dead time, priority encoder -------------------------------
        prev = Signal()  # raw level of the previous word's last bin
        m.d.sync += prev.eq(self.samples[n - 1])
        level = Signal(n)
        m.d.comb += level.eq(self.samples ^ Mux(self.edge, (1 << n) - 1, 0))
        before = Cat(prev ^ self.edge, level[: n - 1])  # level one bin earlier, bit by bit
        edges = Signal(n)
        m.d.comb += edges.eq(Mux(self.enable, level & ~before, 0))

        # Bins of dead time left, counted from the start of the current word, and two registered
        # views of it that the loop word -> tag -> dead time reads: below N? its low bits.
        dt = self.dead_time_bins
        dead_left = Signal(DEAD_TIME_BITS + 1)
        dl_near = Signal(init=1)  # dead_left < N: some bin of this word may be past it
        dl_low = Signal(shift)  # dead_left's low bits (all of it when near)
        allowed = Signal(n)
        m.d.comb += allowed.eq(Cat(edges[b] & dl_near & (dl_low <= b) for b in range(n)))

        # one-hot: the earliest allowed edge, as a LUT priority (no carry chain on the loop)
        first = Signal(n)
        m.d.comb += first.eq(onehot.lowest(allowed))
        fine = Signal(range(n))
        for b in range(n):
            with m.If(first[b]):
                m.d.comb += fine.eq(b)
        hit = allowed.any()

        # What dead_left becomes after a tag at bin f, for every f, and the mask of the bins a
        # tag at f leaves inside this word past its dead time (SAME_CLOCK losses if they hold
        # an edge): functions of the setting alone, registered, so the loop word -> tag -> dead
        # time only selects among them with the one-hot ``first``.
        left_after = 0
        near_after = 0
        past = []
        dt0 = DEAD_TIME_RESET  # the registers start as the setting's reset value implies
        for f in range(n):
            until_f = Signal(DEAD_TIME_BITS + 2, name=f"until_{f}")
            left_f = Signal(DEAD_TIME_BITS + 1, name=f"left_after_{f}", init=max(dt0 + f - n, 0))
            near_f = Signal(name=f"near_after_{f}", init=dt0 + f < 2 * n)
            past_f = Signal(n, name=f"past_{f}",
                            init=sum(1 << b for b in range(n) if f < b and dt0 + f <= b))
            m.d.comb += until_f.eq(dt + f)
            m.d.sync += [left_f.eq(Mux(until_f > n, until_f - n, 0)), near_f.eq(until_f < 2 * n),
                         past_f.eq(Cat((b > f) & (until_f <= b) for b in range(n)))]
            left_after = left_after | (left_f & first[f].replicate(DEAD_TIME_BITS + 1))
            near_after = near_after | (first[f] & near_f)
            past.append(past_f)
        left_tag = Signal(DEAD_TIME_BITS + 1)
        m.d.comb += left_tag.eq(left_after)
        left_idle = Signal(DEAD_TIME_BITS + 1)
        m.d.comb += left_idle.eq(Mux(dead_left > n, dead_left - n, 0))
        with m.If(hit):
            m.d.sync += [dead_left.eq(left_tag), dl_near.eq(near_after),
                         dl_low.eq(left_tag[:shift])]
        with m.Else():
            m.d.sync += [dead_left.eq(left_idle), dl_near.eq(dead_left < 2 * n),
                         dl_low.eq(left_idle[:shift])]

        # Same-clock losses need no place in the loop: stage A registers the allowed edges and
        # the tag, and stage B finds the lost ones (allowed edges past the tag's dead time)
        # beside the time adder.
        a_hit = Signal()
        a_fine = Signal(range(n))
        a_first = Signal(n)
        a_allowed = Signal(n)
        # The time's coarse part with the delay's coarse part added, and that plus one: stage B
        # adds the fine position to the delay's low bits only and picks one of the two by the
        # carry, so no 56-bit carry chain sits behind its priority logic.
        a_hi = Signal(coarse_bits(n))
        a_hi1 = Signal(coarse_bits(n))
        delay_hi = self.delay_bins[shift:]
        m.d.sync += [
            a_hit.eq(hit),
            a_fine.eq(fine),
            a_first.eq(first),
            a_allowed.eq(allowed),
            a_hi.eq(self.sample_now + delay_hi),
            a_hi1.eq(self.sample_now + delay_hi + 1),
        ]
        lost = Signal(n)
        m.d.comb += lost.eq(a_allowed & Cat(
            (a_first[:b] & Cat(past[f][b] for f in range(b))).any() if b else 0 for b in range(n)))
        a_count = Signal(range(n))
        m.d.comb += a_count.eq(sum(lost[b] for b in range(n)))
        # the first lost edge's bin, one-hot (a LUT priority) for its time in stage B, and as an
        # index for its gap from the tag
        lost_first = Signal(n)
        m.d.comb += lost_first.eq(onehot.lowest(lost))
        first_lost = Signal(range(n))
        m.d.comb += first_lost.eq(onehot.index(lost_first))
        a_gap = Signal(GAP_BITS)
        m.d.comb += a_gap.eq(first_lost - a_fine)
        m.d.comb += [
            self.tagged.eq(a_hit),
            self.same_clock_lost.eq(Mux(a_hit, a_count, 0)),
        ]

        # --- stage B: time in bins with the channel delay --------------------------------
        delay_lo = self.delay_bins[:shift]

        def with_coarse(lo):
            """sample clock * N + delay_bins + a bin, from ``lo`` = bin + the delay's low bits
            (shift + 1 bits, its top one the carry) and the two registered coarse sums."""
            return Cat(lo[:shift], Mux(lo[shift], a_hi1, a_hi))

        time_lo = Signal(shift + 1)
        m.d.comb += time_lo.eq(a_fine + delay_lo)
        time = Signal(TIME_BITS)
        m.d.comb += time.eq(with_coarse(time_lo))
        # The first lost edge's time without a priority encoder and an adder in series behind the
        # loss logic: per bin b the sum b + the delay's low bits (logic of the setting alone),
        # picked by the one-hot (AND-OR).
        lost_lo = Signal(shift + 1)
        m.d.comb += lost_lo.eq(onehot.select(lost_first, [b + delay_lo for b in range(n)]))
        m.d.sync += self.lost_time.eq(with_coarse(lost_lo))
        m.d.sync += [
            self.entry.valid.eq(a_hit),
            self.entry.payload.time.eq(time),
            self.entry.payload.loss.eq(0),
            self.entry.payload.count.eq(a_count),
            self.entry.payload.gap.eq(a_gap),
        ]
        assert COUNT_BITS >= n.bit_length() and shift >= 2
        return m
