"""CoincidenceUnit: patterns of channels clicking within a window, on the merged stream.

It sits on the merger's time-ordered stream (``Merged`` in, ``Marked`` out) and passes every
entry through unchanged. Each of ``PATTERNS`` patterns has a channel mask (0 disables it), a
window in bins and a minimum fold (0 = every channel of the mask). The definition is the host's
(``qnode.host.measurements.CoincidencePattern``), so host and gateware count the same:

* a window opens at a tag on a mask channel when no window of the pattern is open, and holds
  every tag of the mask's channels up to and including ``window_bins`` after the one that
  opened it; the next tag after that opens the next window (each tag belongs to at most one
  window per pattern, so bursts and overlapping windows are not counted twice);
* a window counts once, at the tag that brings its number of distinct channels to the minimum
  fold (2-of-3 counts a window where 2 or 3 of the channels clicked, once).

Loss records pass through and take no part. When a pattern's ``emit`` bit is set, each counted
window also becomes a record right behind the entry that completed it: channel = pattern index,
``entry.time`` = the click that opened the window, ``entry.count`` = the mask of the channels
that had clicked in it (exactly min_fold of them), ``coincidence`` = 1. Several patterns
completed by one tag leave in pattern order, one per clock, holding the merger meanwhile.

Timing: per tag and pattern the unit makes one compare (the tag against the window's last bin,
registers set when the window opened: a 17-bit compare of the low bits, the high bits' block
from two equalities against the last tag's that all patterns share) and one 5-bit
compare (channels seen so far, a register kept with the mask, against the fold needed,
registered from the settings). Settings therefore take effect a clock after they are written,
and a window keeps the length it opened with: change them while no tags flow (as the host does,
with the channels disabled or the core in reset).
"""

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from . import onehot
from .merger import Merged
from .params import TIME_BITS
from .timestamper import Entry

PATTERNS = 8
MASK_BITS = 16
WINDOW_BITS = 16
FOLD_BITS = 5
LOW_BITS = WINDOW_BITS + 1  # a window's end is at most one carry past its opening tag's block

Marked = data.StructLayout({"entry": Entry, "channel": 6, "coincidence": 1, "source": 6})
"""A merged entry (coincidence = 0) or a coincidence record (coincidence = 1, see above).
``source``: the channel of the entry, or for a record the channel of the tag that completed the
window (the packer counts a record it cannot send as an OUTPUT loss of that channel)."""


class CoincidenceUnit(wiring.Component):
    def __init__(self, patterns: int = PATTERNS):
        self.patterns = patterns
        super().__init__({
            "merged": In(stream.Signature(Merged)),
            "marked": Out(stream.Signature(Marked)),
            "masks": In(MASK_BITS).array(patterns),
            "windows": In(WINDOW_BITS).array(patterns),
            "min_folds": In(FOLD_BITS).array(patterns),
            "emit": In(patterns),
            "counted": Out(patterns),  # pulses: pattern p counted a window this clock
        })

    def elaborate(self, platform):
        m = Module()
        p_n = self.patterns

        # The entry in hand, whether it has been passed on, and the records it still owes.
        held = Signal(Merged)
        busy = Signal()
        entry_sent = Signal()
        owed = Signal(p_n)

        # The time of the tag that opened each pattern's window, loaded a clock after the take
        # from ``held`` (which holds that tag then) when ``opening`` says the tag opened it: the
        # 56-bit registers' enable is then a flip-flop, not the end of the window compare. A
        # record reads it no earlier than two clocks after its take (the entry goes first).
        opened = [Signal(TIME_BITS, name=f"opened_{p}") for p in range(p_n)]
        opening = [Signal(name=f"opening_{p}") for p in range(p_n)]
        for p in range(p_n):
            m.d.sync += opening[p].eq(0)  # set below for one clock by a tag that opens
            with m.If(opening[p]):
                m.d.sync += opened[p].eq(held.entry.time)
        seen = [Signal(MASK_BITS, name=f"seen_{p}") for p in range(p_n)]
        is_open = [Signal(name=f"open_{p}") for p in range(p_n)]

        # the lowest pattern still owed, one-hot as a LUT priority, and its record selected by
        # it (AND-OR): no carry or mux chain on it
        owed_lowest = Signal(p_n)
        m.d.comb += owed_lowest.eq(onehot.lowest(owed))
        record = Signal(Marked)
        m.d.comb += [record.entry.time.eq(onehot.select(owed_lowest, opened)),
                     record.entry.count.eq(onehot.select(owed_lowest, seen)),
                     record.channel.eq(onehot.index(owed_lowest)), record.coincidence.eq(1),
                     record.source.eq(held.channel)]

        out = Signal(Marked)
        m.d.comb += [
            out.entry.eq(held.entry), out.channel.eq(held.channel), out.coincidence.eq(0),
            out.source.eq(held.channel),
        ]
        m.d.comb += [
            self.marked.valid.eq(busy),
            self.marked.payload.eq(Mux(entry_sent, record, out)),
        ]
        moved = busy & self.marked.ready
        left_after = Mux(entry_sent, owed & ~owed_lowest, owed)
        finishing = moved & (left_after == 0) & (entry_sent | (owed == 0))
        with m.If(moved):
            with m.If(entry_sent):
                m.d.sync += owed.eq(owed & ~owed_lowest)
            m.d.sync += entry_sent.eq(1)
        with m.If(finishing):
            m.d.sync += busy.eq(0)

        take = Signal()
        m.d.comb += [take.eq(~busy | finishing), self.merged.ready.eq(take)]
        arriving = self.merged.payload
        is_tag = ~arriving.entry.loss
        t = arriving.entry.time
        bit = Signal(MASK_BITS)
        m.d.comb += bit.eq(1 << arriving.channel)

        # The high part of t (above LOW_BITS) against the last tag's, shared by all patterns:
        # the same block (``same_hi``), the next one (``next_hi``) or further. Each pattern
        # keeps how far the last tag's block is past its window's opening block (``ahead``:
        # 0, 1 or 2 = two or more; the stream is time-ordered, so blocks never go back), and
        # adds this step to it. So the per-tag test of an open window needs no compare of its
        # own on the high bits: two shared equalities instead of two per pattern.
        t_lo, t_hi = t[:LOW_BITS], t[LOW_BITS:]
        last_hi = Signal(len(t_hi))
        last_hi_next = Signal(len(t_hi))  # last_hi + 1, registered: no adder on the path
        same_hi, next_hi = Signal(), Signal()
        m.d.comb += [same_hi.eq(t_hi == last_hi), next_hi.eq(t_hi == last_hi_next)]
        with m.If(take & self.merged.valid & is_tag):
            m.d.sync += [last_hi.eq(t_hi), last_hi_next.eq(t_hi + 1)]

        # Per pattern, kept short for timing: the window's last bin ``close`` = opened + window
        # is a register set when the window opens (one compare, no subtract, per tag), the
        # number of distinct channels seen so far is a register kept with ``seen`` (no popcount
        # per tag), and the fold needed is registered from the settings. (Settings are static
        # while tags flow: a window keeps the length it opened with.)
        completes = []
        for p in range(p_n):
            member = Signal(name=f"member_{p}")
            # a mux of the mask's bits by the channel (no one-hot decode on this path)
            m.d.comb += member.eq(self.masks[p].bit_select(arriving.channel[:4], 1)
                                  & (arriving.channel < MASK_BITS) & is_tag)
            need = Signal(FOLD_BITS, name=f"need_{p}")
            m.d.sync += need.eq(Mux(self.min_folds[p] == 0,
                                    sum(self.masks[p][i] for i in range(MASK_BITS)),
                                    self.min_folds[p]))
            # t > close without a 56-bit compare: the window is < 2**16 bins, so its last bin
            # (close) is in the opening tag's block of 2**LOW_BITS bins or, when the low sum
            # carried (``crossed``), the next one; and no tag is earlier than the one that
            # opened it (the stream is time-ordered). So t <= close is the block t is in
            # (from ``ahead`` and the shared equalities) and one 17-bit compare.
            close_lo = Signal(LOW_BITS, name=f"close_lo_{p}")
            crossed = Signal(name=f"crossed_{p}")
            ahead = Signal(2, name=f"ahead_{p}")
            in_first, in_second = Signal(name=f"in_first_{p}"), Signal(name=f"in_second_{p}")
            m.d.comb += [in_first.eq((ahead == 0) & same_hi),
                         in_second.eq(((ahead == 0) & next_hi) | ((ahead == 1) & same_hi))]
            low_in = Signal(name=f"low_in_{p}")
            m.d.comb += low_in.eq(t_lo <= close_lo)
            inside = Signal(name=f"inside_{p}")
            m.d.comb += inside.eq((in_first & (crossed | low_in)) | (in_second & crossed & low_in))
            fold = Signal(FOLD_BITS, name=f"fold_{p}")  # distinct channels in seen[p]
            outside = Signal(name=f"outside_{p}")
            m.d.comb += outside.eq(~is_open[p] | ~inside)
            fresh = Signal(name=f"fresh_{p}")  # this tag's channel is new to the open window
            m.d.comb += fresh.eq(~seen[p].bit_select(arriving.channel[:4], 1))
            done = Signal(name=f"completes_{p}")
            m.d.comb += done.eq(member & Mux(outside, need == 1, fresh & (fold + 1 == need)))
            completes.append(done)
            with m.If(take & self.merged.valid & is_tag):
                m.d.sync += ahead.eq(Mux(in_first, 0, Mux(in_second, 1, 2)))
            with m.If(take & self.merged.valid & member):
                with m.If(outside):
                    low_sum = t_lo + self.windows[p]
                    m.d.sync += [opening[p].eq(1), close_lo.eq(low_sum[:LOW_BITS]),
                                 crossed.eq(low_sum[LOW_BITS]), ahead.eq(0),
                                 is_open[p].eq(1), seen[p].eq(bit), fold.eq(1)]
                with m.Else():
                    m.d.sync += [seen[p].eq(seen[p] | bit), fold.eq(fold + fresh)]

        fire = Signal(p_n)
        m.d.comb += fire.eq(Cat(completes))
        with m.If(take & self.merged.valid):
            m.d.sync += [held.eq(arriving), busy.eq(1), entry_sent.eq(0),
                         owed.eq(fire & self.emit)]
            m.d.comb += self.counted.eq(fire)
        return m
