"""Merger: the channel FIFO heads leave in time order, one per clock, ties in channel order.

Every pair of heads is compared in parallel (modulo 2**COMPARE_BITS, see params.py), so the
winner is known one comparator after the FIFO registers and a head can leave in every clock.
A channel whose FIFO is empty still takes part: it cannot later deliver anything earlier than
``horizon`` (bins), so a head only leaves before an empty channel if its time is below that.

The winner goes into a 4-deep output queue (SyncFIFOBuffered: two clocks, one per clock
throughput) whose ``w_rdy`` is a register: the consumer's ``ready`` never reaches back
through the comparators into the channel FIFOs, which keeps the system clock's paths short.
"""

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .params import COMPARE_BITS, MERGE_QUEUE
from .timestamper import Entry

Merged = data.StructLayout({"entry": Entry, "channel": 6})
QUEUE_DEPTH = MERGE_QUEUE


class Merger(wiring.Component):
    def __init__(self, channels: int):
        self.channels = channels
        super().__init__({
            "heads": In(stream.Signature(Entry)).array(channels),
            "horizon": In(COMPARE_BITS),  # low bits of (now - HORIZON_CLOCKS) * N
            "merged": Out(stream.Signature(Merged)),
        })

    def elaborate(self, platform):
        m = Module()
        w = COMPARE_BITS
        n = self.channels
        times = [head.payload.time[:w] for head in self.heads]

        # first[i][j] (i < j): head i leaves before head j (t_i <= t_j, sign of t_i - t_j - 1).
        first = {}
        for i in range(n):
            for j in range(i + 1, n):
                s = Signal(name=f"first_{i}_{j}")
                m.d.comb += s.eq((times[i] + ~times[j])[w - 1])
                first[i, j] = s
        early = []  # head i is before anything an empty channel can still deliver
        for i in range(n):
            s = Signal(name=f"early_{i}")
            m.d.comb += s.eq((times[i] - self.horizon)[w - 1])
            early.append(s)

        wins = []
        for i in range(n):
            beats = []
            for j in range(n):
                if j == i:
                    continue
                over_j = first[i, j] if i < j else ~first[j, i]
                beats.append(Mux(self.heads[j].valid, over_j, early[i]))
            win = Signal(name=f"win_{i}")
            m.d.comb += win.eq(self.heads[i].valid & Cat(beats).all())
            wins.append(win)

        payload = 0
        channel = 0
        for i, win in enumerate(wins):
            payload = payload | (self.heads[i].payload.as_value() & win.replicate(Entry.size))
            channel = channel | (win.replicate(6) & i)
        m.submodules.queue = queue = fifo.SyncFIFOBuffered(width=Merged.size, depth=QUEUE_DEPTH)
        winner = Signal(Merged)
        m.d.comb += [
            winner.entry.eq(payload),
            winner.channel.eq(channel),
            queue.w_en.eq(Cat(wins).any()),
            queue.w_data.eq(winner),
            self.merged.valid.eq(queue.r_rdy),
            self.merged.payload.eq(queue.r_data),
            queue.r_en.eq(self.merged.ready),
        ]
        for i, win in enumerate(wins):
            m.d.comb += self.heads[i].ready.eq(win & queue.w_rdy)
        return m
