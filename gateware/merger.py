"""Merger: the channel FIFO heads leave in time order, one per clock, ties in channel order.

A tree of registered two-way merge nodes, ``merge_levels(channels)`` levels deep (params.py):
level 1 merges pairs of channel FIFO heads, level L merges pairs of level L-1 nodes, the root
feeds the packer. Each node holds a two-entry output buffer (a ring of two slots); its
``space`` (a slot free) comes from its own valid bits, so neither the consumer's ``ready`` nor
any other node's decision reaches through a node: every clock path is one 24-bit compare, a few
LUTs of decision and the slots' input select.
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

        def bound(name, lv):
            """Low bits of (now - HORIZON_CLOCKS - lv) * N, a counter of the node's own: one per
            level was a 3.3 ns route to that level's nodes (counters are never merged)."""
            b = Signal(w, name=f"{name}_bound",
                       init=((self.start_now - HORIZON_CLOCKS - lv) * n) & mask)
            m.d.sync += b.eq(b + n)
            return b

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
                name = f"n{lv}_{j}"
                parents.append(self._node(m, name, a, b, bound(name, lv - 1), lv))
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
        """One registered two-way merge; returns its output as the parent's child head.

        Its two-entry buffer is a ring of two slots: a slot is loaded with the incoming value
        in every clock it is free (whether or not the node takes one: the valid bit says), and
        the head is the slot ``rd`` points at. So no data register's clock enable waits for a
        decision: the take's only loads are the slots' selects and the two valid bits, and a pop
        only moves ``rd`` (before, the parent's take shifted slot 1 into slot 0 and enabled
        both, a few hundred loads behind a compare). The node behaves as a two-entry FIFO:
        it takes one while it holds at most one, and shows the oldest."""
        w = COMPARE_BITS
        v = [Signal(name=f"{name}_v{k}") for k in range(2)]  # slot k holds an entry
        slots = [Signal(Merged, name=f"{name}_s{k}") for k in range(2)]
        rd = Signal(name=f"{name}_rd")  # the head's slot (the older entry)
        wr = Signal(name=f"{name}_wr")  # the slot the next entry goes to
        head = Signal(Merged, name=f"{name}_head")
        m.d.comb += head.eq(Mux(rd, slots[1], slots[0]))
        valid = Signal(name=f"{name}_valid")
        m.d.comb += valid.eq(v[0] | v[1])  # with one entry it is at rd
        out = _Head(valid, head, level)
        space = ~(v[0] & v[1])

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
            # which value a take would load: a's whenever take_a can hold (fewer inputs than
            # take_a itself: no space, no bound)
            sel_a = Signal(name=f"{name}_sel_a")
            m.d.comb += sel_a.eq(a.valid & (~b.valid | a_first))
            incoming = Signal(Merged, name=f"{name}_in")
            m.d.comb += incoming.eq(Mux(sel_a, a.value, b.value))
        if a is not None:
            m.d.comb += a.pop.eq(take_a)
        if b is not None:
            m.d.comb += b.pop.eq(take_b)

        push = take_a | take_b
        for k in range(2):
            with m.If(~v[k]):
                m.d.sync += slots[k].eq(incoming)
        with m.If(push):
            m.d.sync += wr.eq(~wr)
        with m.If(out.pop):
            m.d.sync += rd.eq(~rd)
        for k in range(2):
            with m.If(push & (wr == k)):
                m.d.sync += v[k].eq(1)
            with m.Elif(out.pop & (rd == k)):
                m.d.sync += v[k].eq(0)
        return out
