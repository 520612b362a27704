"""ChannelFifo: one channel's entries wait here for the merger; a full FIFO becomes a loss record.

When an entry arrives and the FIFO is full, the entry is dropped and its edges (the tag and any
same-clock losses it carried) are added to a pending count, remembering the time of the first
dropped one. At the first clock the FIFO has room again the pending count is written as a LOSS
record (reason CHANNEL_FIFO) in place of whatever arrives in that clock, which is itself dropped
and starts the next pending count. So the record always gets its slot, and because at least
``depth - 1`` older entries are still queued when it is written, the FIFO never runs empty before
the record shows at its head: records stay in time order with the tags (the merger relies on it).
"""

from amaranth import Module, Mux, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from qnode.firmware.events import LOSS_COUNT_MAX

from .params import COUNT_BITS, TIME_BITS
from .timestamper import Entry

PENDING_BITS = 32


class ChannelFifo(wiring.Component):
    def __init__(self, depth: int):
        self.depth = depth
        super().__init__({
            "entry": In(stream.Signature(Entry, always_ready=True)),
            "head": Out(stream.Signature(Entry)),
            "dropped": Out(PENDING_BITS),  # edges dropped in the last clock (for the loss counter)
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.queue = queue = fifo.SyncFIFOBuffered(width=Entry.size, depth=self.depth)

        pending = Signal(PENDING_BITS)  # edges dropped and not yet written as a loss record
        pending_time = Signal(TIME_BITS)  # time of the first of them, in bins
        arriving = Signal(PENDING_BITS)  # edges the arriving entry stands for
        m.d.comb += arriving.eq(Mux(self.entry.valid, 1 + self.entry.payload.count, 0))
        # ``pending != 0`` and "more than one record's worth" as registers beside ``pending``,
        # computed from its next value: the record mux and the FIFO write start from flip-flops
        # instead of a 32-bit compare on the adder's output.
        # Both are logic of this clock's case, not compares on the chosen sum: after a full
        # record the rest is > 0 (pending was > MAX), while records wait the sum only grows,
        # and an entry dropped at an idle FIFO counts at least one edge.
        pending_next = Signal(PENDING_BITS)
        waiting = Signal()  # pending != 0
        big = Signal()  # pending > LOSS_COUNT_MAX
        waiting_next = Signal()
        big_next = Signal()
        m.d.comb += [pending_next.eq(pending), waiting_next.eq(waiting), big_next.eq(big)]
        m.d.sync += [pending.eq(pending_next), waiting.eq(waiting_next), big.eq(big_next)]
        # edges dropped in this clock, for the core's loss counter: registered (the counter
        # shows a drop one clock later; nothing reads it within a clock)
        dropped = Signal(PENDING_BITS)
        m.d.sync += self.dropped.eq(dropped)

        record = Signal(Entry)
        m.d.comb += [
            record.time.eq(pending_time),
            record.loss.eq(1),
            record.count.eq(Mux(big, LOSS_COUNT_MAX, pending)),
        ]

        # after a full record (big) the rest is pending - LOSS_COUNT_MAX + arriving: one adder
        # from ``pending``, its other operand made from the arriving entry alone
        arriving_less_max = Signal(PENDING_BITS)
        m.d.comb += arriving_less_max.eq(arriving - LOSS_COUNT_MAX)

        rest = Signal(PENDING_BITS)  # after a full record
        grown = Signal(PENDING_BITS)  # no room yet: the count grows
        m.d.comb += [rest.eq(pending + arriving_less_max), grown.eq(pending + arriving)]
        with m.If(waiting):
            with m.If(queue.w_rdy):
                m.d.comb += [queue.w_en.eq(1), queue.w_data.eq(record)]
                m.d.comb += [pending_next.eq(Mux(big, rest, arriving)),
                             waiting_next.eq(big | self.entry.valid),
                             big_next.eq(big & rest[COUNT_BITS:].any())]
                with m.If(~big & self.entry.valid):
                    m.d.sync += pending_time.eq(self.entry.payload.time)
            with m.Else():
                m.d.comb += [pending_next.eq(grown), big_next.eq(grown[COUNT_BITS:].any())]
            m.d.comb += dropped.eq(arriving)
        with m.Elif(self.entry.valid):
            with m.If(queue.w_rdy):
                m.d.comb += [queue.w_en.eq(1), queue.w_data.eq(self.entry.payload)]
            with m.Else():
                m.d.comb += [pending_next.eq(arriving), waiting_next.eq(1), big_next.eq(0)]
                m.d.sync += pending_time.eq(self.entry.payload.time)
                m.d.comb += dropped.eq(arriving)

        m.d.comb += [
            self.head.valid.eq(queue.r_rdy),
            self.head.payload.eq(queue.r_data),
            queue.r_en.eq(self.head.ready),
        ]
        return m
