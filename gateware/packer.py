"""Packer: marked entries and heralds -> 64-bit event words (firmware/events.py) on an output stream.

Words, at most one per clock, in this order: a HEADER once after reset; then for each record its
word, each preceded by an EPOCH word when its time's high bits (time_bins >> 32) differ from the
last EPOCH sent (a COINCIDENCE or HERALD word can step the epoch back). Records come from the
coincidence unit's ``marked`` stream (an entry: TAG, or LOSS reason CHANNEL_FIFO, and for a tag
that lost edges in its clock a LOSS record reason SAME_CLOCK right behind it; a coincidence
record: COINCIDENCE) and from the herald unit's ``herald`` records (HERALD), which wait in a
4-deep queue and go first whenever the packer takes its next record. A record with two words (or
an EPOCH) holds the marked stream for the extra clocks.

The herald queue cannot overflow: heralds are at least 3 clocks apart (the herald unit decides
one attempt at a time, docs/gateware.md) and the packer takes the queue's head at most 4 clocks
after it shows, then spends at most 2 clocks on it; ``herald_overflow`` says if it ever did (the
core counts it in ``herald_lost_count``).

Words go through an output FIFO (``output_depth``) to the stream. When that FIFO is full the
record is dropped and its count (1 for a tag, coincidence or herald, the count of a loss record)
added to its channel's pending OUTPUT loss (a coincidence's channel is the tag that completed it,
a herald's its deciding detector), with the time of the first such drop. Between records, when a
channel has pending losses and the FIFO has room for the EPOCH and the record (level <= depth - 4,
so it can never be dropped itself), the lowest such channel's count is sent as a LOSS record
reason OUTPUT.
"""

from amaranth import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from qnode.firmware.events import (
    AUX_BITS, LOSS_COUNT_MAX, TIME_BITS as WORD_TIME_BITS, Kind, LossReason, header_word,
)

from . import onehot
from .channel_fifo import PENDING_BITS
from .coincidence import Marked
from .herald import HeraldRecord
from .params import COUNT_BITS, GAP_BITS, TIME_BITS

HERALD_QUEUE = 4  # HERALD records waiting for the packer (at most 2 can, see above)


def event_word(kind, channel, aux, time):
    return Cat(time[:WORD_TIME_BITS], aux[:AUX_BITS], channel[:6], Const(kind, 4))


class Packer(wiring.Component):
    def __init__(self, channels: int, bin_ps: int, output_depth: int):
        self.channels = channels
        self.bin_ps = bin_ps
        self.output_depth = output_depth
        super().__init__({
            "marked": In(stream.Signature(Marked)),
            "herald": In(stream.Signature(HeraldRecord, always_ready=True)),
            "words": Out(stream.Signature(64)),
            "herald_overflow": Out(1),  # a herald found its queue full (cannot happen, above)
            "dropped": Out(PENDING_BITS),  # events dropped at the output in this clock ...
            "dropped_channel": Out(6),  # ... and their channel (for the loss counters)
        })

    def elaborate(self, platform):
        m = Module()
        q = self.output_depth
        m.submodules.out = out = fifo.SyncFIFOBuffered(width=64, depth=q)
        m.d.comb += [
            self.words.valid.eq(out.r_rdy),
            self.words.payload.eq(out.r_data),
            out.r_en.eq(self.words.ready),
        ]

        header_sent = Signal()
        epoch_sent = Signal(TIME_BITS - WORD_TIME_BITS)

        # The record in hand, and which of its words is next.
        busy = Signal()
        second = Signal()  # 0: its main word, 1: its SAME_CLOCK loss record
        main_kind = Signal(4)  # the main word's kind, aux and channel field, set when taken
        main_aux = Signal(AUX_BITS)
        word_channel = Signal(6)
        channel = Signal(6)  # whose OUTPUT loss a drop is (a coincidence: the tag that completed it)
        time = Signal(TIME_BITS)
        count = Signal(COUNT_BITS)  # a loss record's count; a tag's SAME_CLOCK count

        has_second = Signal()  # a tag with SAME_CLOCK losses: registered when the entry is taken
        # time + gap (the SAME_CLOCK record's time): the gap is kept when the entry is taken and
        # the sum registered a clock later, when the record's second word can first be written,
        # so no adder sits behind the take's selection of the incoming record
        gap = Signal(GAP_BITS)
        time2_sum = Signal(TIME_BITS)
        time2 = Signal(TIME_BITS)
        m.d.comb += time2_sum.eq(time + gap)
        m.d.sync += time2.eq(time2_sum)
        rec_time = Signal(TIME_BITS)
        m.d.comb += rec_time.eq(Mux(second, time2, time))
        rec_epoch = rec_time[WORD_TIME_BITS:]
        # rec_epoch != epoch_sent, kept as a register: set from parallel compares whenever the
        # record in hand or epoch_sent changes, so no 24-bit compare sits on the control path
        epoch_differs = Signal()
        # What a drop of the word in hand adds to its channel's OUTPUT loss (1 for a TAG,
        # COINCIDENCE or HERALD word, the count of a loss record), and that less
        # LOSS_COUNT_MAX: registers, set with the record and when its second word comes up, so
        # the pending sums start from flip-flops and a flush and a drop in one clock cost one
        # adder, not two in a row
        drop_count = Signal(PENDING_BITS)
        drop_less = Signal(PENDING_BITS + 1)
        one_less = (1 - LOSS_COUNT_MAX) & ((1 << (PENDING_BITS + 1)) - 1)

        main_word = Cat(time[:WORD_TIME_BITS], main_aux, word_channel, main_kind)
        same_clock_word = event_word(Kind.LOSS, word_channel,
                                     Cat(count, Const(LossReason.SAME_CLOCK, 4)), time2)
        rec_word = Mux(second, same_clock_word, main_word)
        epoch_word = Cat(rec_epoch, Const(0, 60 - len(rec_epoch)), Const(Kind.EPOCH, 4))

        # The output FIFO's room, as registers: the level counted alongside the FIFO's own,
        # room1 (level < q) and room4 (level <= q - 4). room1 is exactly out.w_rdy (the buffered
        # FIFO's inner part is full only with its output register loaded, at q >= 3), but from a
        # flip-flop: the drop it decides enables every channel's pending-loss registers.
        level = Signal(range(q + 1))
        room1 = Signal(init=1)
        room4 = Signal(init=1)
        level_next = Signal(range(q + 2))
        m.d.comb += level_next.eq(level + (out.w_en & room1) - (out.r_en & out.r_rdy))
        m.d.sync += [level.eq(level_next), room1.eq(level_next < q), room4.eq(level_next <= q - 4)]

        advance = Signal()
        drop = Signal()
        with m.If(~header_sent):
            m.d.comb += [out.w_en.eq(1), out.w_data.eq(int(header_word(self.bin_ps, self.channels)))]
            with m.If(room1):
                m.d.sync += header_sent.eq(1)
        with m.Elif(busy):
            with m.If(~room1):
                m.d.comb += [drop.eq(1), advance.eq(1)]
            with m.Elif(epoch_differs):
                m.d.comb += [out.w_en.eq(1), out.w_data.eq(epoch_word)]
                m.d.sync += [epoch_sent.eq(rec_epoch), epoch_differs.eq(0)]
            with m.Else():
                m.d.comb += [out.w_en.eq(1), out.w_data.eq(rec_word), advance.eq(1)]

        finishing = advance & ~(~second & has_second)
        with m.If(advance):
            m.d.sync += second.eq(~second & has_second)
            with m.If(~second & has_second):
                m.d.sync += [epoch_differs.eq(time2_sum[WORD_TIME_BITS:] != epoch_sent),
                             drop_count.eq(count), drop_less.eq(count - LOSS_COUNT_MAX)]
            with m.If(finishing):
                m.d.sync += busy.eq(0)

        # Pending OUTPUT losses per channel.
        pending = Array(Signal(PENDING_BITS, name=f"pending_{i}") for i in range(self.channels))
        pending_time = Array(Signal(TIME_BITS, name=f"pending_time_{i}") for i in range(self.channels))
        # per channel, registered with pending: != 0, more than one record's worth, and the
        # next record's count min(pending, LOSS_COUNT_MAX)
        nonzero = Signal(self.channels)
        big = Signal(self.channels)
        chunks = [Signal(COUNT_BITS, name=f"chunk_{i}") for i in range(self.channels)]
        any_pending = nonzero.any()
        # one-hot: the lowest channel with pending losses, as a LUT priority (no carry chain),
        # and everything a flush takes selected by it (AND-OR): its channel, count, time, and
        # whether its time is in another epoch, each channel's compare made in parallel
        lowest = Signal(self.channels)
        m.d.comb += lowest.eq(onehot.lowest(nonzero))
        flush_channel = Signal(range(max(self.channels, 2)))
        chunk = Signal(PENDING_BITS)
        flush_time = Signal(TIME_BITS)
        flush_epoch_differs = Signal()
        m.d.comb += [
            flush_channel.eq(onehot.index(lowest)), chunk.eq(onehot.select(lowest, chunks)),
            flush_time.eq(onehot.select(lowest, pending_time)),
            flush_epoch_differs.eq(onehot.select(lowest, [t[WORD_TIME_BITS:] != epoch_sent
                                                          for t in pending_time])),
        ]


        # Heralds wait in a short queue and go first; then pending OUTPUT losses; then the
        # marked stream. (The queue's r_rdy is a register.)
        m.submodules.herald_queue = hq = fifo.SyncFIFOBuffered(width=HeraldRecord.size,
                                                               depth=HERALD_QUEUE)
        m.d.comb += [hq.w_en.eq(self.herald.valid), hq.w_data.eq(self.herald.payload),
                     self.herald_overflow.eq(self.herald.valid & ~hq.w_rdy)]
        herald = Signal(HeraldRecord)
        m.d.comb += herald.eq(hq.r_data)

        take = header_sent & (~busy | finishing)
        take_herald = Signal()
        flush = Signal()
        m.d.comb += [
            take_herald.eq(take & hq.r_rdy),
            hq.r_en.eq(take_herald),
            flush.eq(take & ~hq.r_rdy & any_pending & room4),
            self.marked.ready.eq(take & ~hq.r_rdy & ~flush),
        ]
        with m.If(take_herald):
            m.d.sync += [
                busy.eq(1), second.eq(0), main_kind.eq(Kind.HERALD),
                main_aux.eq(Cat(herald.attempt, herald.outcome)),
                word_channel.eq(herald.channel), channel.eq(herald.channel),
                time.eq(herald.time), gap.eq(0), count.eq(0), has_second.eq(0),
                drop_count.eq(1), drop_less.eq(one_less),
                epoch_differs.eq(herald.time[WORD_TIME_BITS:] != epoch_sent),
            ]
        with m.Elif(flush):
            m.d.sync += [
                busy.eq(1), second.eq(0), main_kind.eq(Kind.LOSS),
                main_aux.eq(Cat(chunk[:COUNT_BITS], Const(LossReason.OUTPUT, 4))),
                word_channel.eq(flush_channel), channel.eq(flush_channel),
                time.eq(flush_time), gap.eq(0),
                count.eq(chunk), drop_count.eq(chunk), drop_less.eq(chunk - LOSS_COUNT_MAX),
                has_second.eq(0),
                epoch_differs.eq(flush_epoch_differs),
            ]
        with m.Elif(self.marked.valid & self.marked.ready):
            rec = self.marked.payload
            entry = rec.entry
            is_loss = entry.loss & ~rec.coincidence
            m.d.sync += [
                busy.eq(1), second.eq(0),
                main_kind.eq(Mux(rec.coincidence, Kind.COINCIDENCE,
                                 Mux(entry.loss, Kind.LOSS, Kind.TAG))),
                main_aux.eq(Mux(rec.coincidence, entry.count,
                                Mux(entry.loss, Cat(entry.count, Const(LossReason.CHANNEL_FIFO, 4)),
                                    0))),
                word_channel.eq(rec.channel), channel.eq(rec.source), time.eq(entry.time),
                gap.eq(entry.gap), count.eq(entry.count),
                drop_count.eq(Mux(is_loss, entry.count, 1)),
                drop_less.eq(Mux(is_loss, entry.count - LOSS_COUNT_MAX, one_less)),
                has_second.eq(~entry.loss & ~rec.coincidence & (entry.count != 0)),
                # marked's payload comes from registers (the merger's root or the skid
                # buffer behind the coincidence unit), so the compare starts from flip-flops
                epoch_differs.eq(entry.time[WORD_TIME_BITS:] != epoch_sent),
            ]

        for i in range(self.channels):
            # what is left after a flush takes one record's worth: pending - min(pending, MAX)
            # every outcome computed in parallel, then chosen by this clock's drop and flush
            after_flush = Signal(PENDING_BITS, name=f"after_flush_{i}")
            m.d.comb += after_flush.eq(Mux(big[i], pending[i] - LOSS_COUNT_MAX, 0))
            flushed = flush & lowest[i]
            dropped_here = drop & (channel == i)
            add_kept = Signal(PENDING_BITS + 1, name=f"add_kept_{i}")  # no flush, a drop
            add_flushed = Signal(PENDING_BITS + 1, name=f"add_flushed_{i}")  # both
            m.d.comb += [add_kept.eq(pending[i] + drop_count),
                         add_flushed.eq(Mux(big[i], pending[i] + drop_less, drop_count))]

            def big_of(v):
                return v[COUNT_BITS:PENDING_BITS].any()

            def chunk_of(v):
                return Mux(big_of(v), LOSS_COUNT_MAX, v[:COUNT_BITS])

            with m.If(dropped_here):
                with m.If(flushed):
                    m.d.sync += [pending[i].eq(add_flushed), big[i].eq(big_of(add_flushed)),
                                 chunks[i].eq(chunk_of(add_flushed))]
                    with m.If(~big[i]):
                        m.d.sync += pending_time[i].eq(rec_time)
                with m.Else():
                    m.d.sync += [pending[i].eq(add_kept), big[i].eq(big_of(add_kept)),
                                 chunks[i].eq(chunk_of(add_kept))]
                    with m.If(~nonzero[i]):
                        m.d.sync += pending_time[i].eq(rec_time)
                m.d.sync += nonzero[i].eq(1)  # a drop counts at least one event
            with m.Elif(flushed):
                m.d.sync += [pending[i].eq(after_flush), nonzero[i].eq(big[i]),
                             big[i].eq(big_of(after_flush)), chunks[i].eq(chunk_of(after_flush))]
        m.d.comb += [
            self.dropped.eq(Mux(drop, drop_count, 0)),
            self.dropped_channel.eq(channel),
        ]
        return m
