"""Merger: the channel FIFO heads leave in time order, one per clock, ties in channel order.

A tree of registered two-way merge nodes, ``merge_levels(channels)`` levels deep (params.py):
level 1 merges pairs of channel FIFO heads, level L merges pairs of level L-1 nodes, the root
feeds the packer. Each node holds a two-entry output buffer; its ``space`` is its own register
(second slot empty), so neither the consumer's ``ready`` nor any other node's decision reaches
through a node: every clock path is one 24-bit compare, a few LUTs of decision and a 2:1 mux.
A node takes one entry per clock as long as its parent takes one, so the tree sustains one
event per clock in aggregate.

A node takes the earlier of its two children's heads (modulo 2**COMPARE_BITS, ties: the lower
channels' side). When one child shows nothing, its whole subtree still bounds what it can
deliver: a channel FIFO empty at clock ``now`` can only later deliver words sampled at clock
>= now - HORIZON_CLOCKS, and a node at level L empty at ``now`` only what its children could
deliver after now - 1, so the bound of a child at level L' is ``(now - HORIZON_CLOCKS - L') * N``
bins; the other head leaves only if it is earlier. A subtree with no channel (padding of a
channel count that is not a power of two) bounds nothing. So the root delivers in exact global
(time, channel) order.
"""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .params import COMPARE_BITS, HORIZON_CLOCKS, merge_levels
from .timestamper import Entry

Merged = data.StructLayout({"entry": Entry, "channel": 6})


class _Head:
    """What a node sees of one child: valid, the (entry, channel) value, and the pop it drives."""

    def __init__(self, valid, value, level):
        self.valid = valid
        self.value = value  # Merged
        self.level = level  # of the child: 0 for a channel FIFO
        self.pop = Signal()

    @property
    def time(self):
        return self.value.entry.time[:COMPARE_BITS]


class Merger(wiring.Component):
    def __init__(self, channels: int, oversampling: int = 8, start_now: int = 0):
        self.channels = channels
        self.oversampling = oversampling
        self.start_now = start_now
        self.levels = merge_levels(channels)
        super().__init__({
            "heads": In(stream.Signature(Entry)).array(channels),
            "merged": Out(stream.Signature(Merged)),
        })

    def elaborate(self, platform):
        m = Module()
        w = COMPARE_BITS
        n = self.oversampling
        mask = (1 << w) - 1

        # bound[L'] = low bits of (now - HORIZON_CLOCKS - L') * N: registers counting with now
        bounds = []
        for lv in range(self.levels):
            b = Signal(w, name=f"bound_{lv}",
                       init=((self.start_now - HORIZON_CLOCKS - lv) * n) & mask)
            m.d.sync += b.eq(b + n)
            bounds.append(b)

        heads = []
        for i in range(1 << self.levels):
            if i >= self.channels:
                heads.append(None)
                continue
            value = Signal(Merged, name=f"leaf_{i}")
            m.d.comb += [value.entry.eq(self.heads[i].payload), value.channel.eq(i)]
            h = _Head(self.heads[i].valid, value, 0)
            m.d.comb += self.heads[i].ready.eq(h.pop)
            heads.append(h)

        for lv in range(1, self.levels + 1):
            parents = []
            for j in range(len(heads) // 2):
                a, b = heads[2 * j], heads[2 * j + 1]
                if a is None and b is None:
                    parents.append(None)
                    continue
                parents.append(self._node(m, f"n{lv}_{j}", a, b, bounds[lv - 1], lv))
            heads = parents
        root = heads[0]
        m.d.comb += [
            self.merged.valid.eq(root.valid),
            self.merged.payload.eq(root.value),
            root.pop.eq(self.merged.ready & root.valid),
        ]
        return m

    @staticmethod
    def _node(m, name, a, b, bound, level):
        """One registered two-way merge; returns its output as the parent's child head."""
        w = COMPARE_BITS
        v0 = Signal(name=f"{name}_v0")  # slot 0 (the head) holds an entry
        v1 = Signal(name=f"{name}_v1")  # slot 1 holds one too: no space
        s0 = Signal(Merged, name=f"{name}_s0")
        s1 = Signal(Merged, name=f"{name}_s1")
        out = _Head(v0, s0, level)
        space = ~v1

        take_a = Signal(name=f"{name}_take_a")
        take_b = Signal(name=f"{name}_take_b")
        if b is None:
            m.d.comb += take_a.eq(space & a.valid)
            incoming = a.value
        elif a is None:
            m.d.comb += take_b.eq(space & b.valid)
            incoming = b.value
        else:
            a_first = Signal(name=f"{name}_a_first")  # t_a <= t_b (sign of t_a - t_b - 1)
            a_early = Signal(name=f"{name}_a_early")  # t_a < what b's subtree can still deliver
            b_early = Signal(name=f"{name}_b_early")
            m.d.comb += [
                a_first.eq((a.time + ~b.time)[w - 1]),
                a_early.eq((a.time - bound)[w - 1]),
                b_early.eq((b.time - bound)[w - 1]),
                take_a.eq(space & a.valid & Mux(b.valid, a_first, a_early)),
                take_b.eq(space & b.valid & Mux(a.valid, ~a_first, b_early)),
            ]
            incoming = Signal(Merged, name=f"{name}_in")
            m.d.comb += incoming.eq(Mux(take_a, a.value, b.value))
        if a is not None:
            m.d.comb += a.pop.eq(take_a)
        if b is not None:
            m.d.comb += b.pop.eq(take_b)

        push = take_a | take_b
        pop = out.pop
        with m.If(v1):
            with m.If(pop):
                m.d.sync += [s0.eq(s1), v1.eq(0)]
        with m.Elif(v0):
            with m.If(push & pop):
                m.d.sync += s0.eq(incoming)
            with m.Elif(push):
                m.d.sync += [s1.eq(incoming), v1.eq(1)]
            with m.Elif(pop):
                m.d.sync += v0.eq(0)
        with m.Elif(push):
            m.d.sync += [s0.eq(incoming), v0.eq(1)]
        return out
