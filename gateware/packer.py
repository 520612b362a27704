"""Packer: merged entries -> 64-bit event words (firmware/events.py) on an output stream.

Words, at most one per clock, in this order: a HEADER once after reset; then for each entry its
record (TAG, or LOSS reason CHANNEL_FIFO) and, for a tag that lost edges in its clock, a LOSS
record reason SAME_CLOCK; each record preceded by an EPOCH word when its time's high bits
(time_bins >> 32) differ from the last EPOCH sent. An entry with two records (or an EPOCH) holds
the merger for the extra clocks.

Words go through an output FIFO (``output_depth``) to the stream. When that FIFO is full the
record is dropped and its count (1 for a tag, the count of a loss record) added to its channel's
pending OUTPUT loss, with the time of the first such drop. Between entries, when a channel has
pending losses and the FIFO has room for the EPOCH and the record (level <= depth - 4, so it can
never be dropped itself), the lowest such channel's count is sent as a LOSS record reason OUTPUT.
"""

from amaranth import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from qnode.firmware.events import (
    AUX_BITS, LOSS_COUNT_MAX, TIME_BITS as WORD_TIME_BITS, Kind, LossReason, header_word,
)

from .channel_fifo import PENDING_BITS
from .merger import Merged
from .params import COUNT_BITS, GAP_BITS, TIME_BITS

# What the record in hand is.
REC_TAG, REC_FIFO_LOSS, REC_OUTPUT_LOSS = 0, 1, 2


def event_word(kind, channel, aux, time):
    return Cat(time[:WORD_TIME_BITS], aux[:AUX_BITS], channel[:6], Const(kind, 4))


class Packer(wiring.Component):
    def __init__(self, channels: int, bin_ps: int, output_depth: int):
        self.channels = channels
        self.bin_ps = bin_ps
        self.output_depth = output_depth
        super().__init__({
            "merged": In(stream.Signature(Merged)),
            "words": Out(stream.Signature(64)),
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

        # The entry (or pending loss) in hand, and which of its records is next.
        busy = Signal()
        second = Signal()  # 0: its main record, 1: its SAME_CLOCK loss record
        kind = Signal(2)
        channel = Signal(6)
        time = Signal(TIME_BITS)
        count = Signal(COUNT_BITS)
        gap = Signal(GAP_BITS)

        has_second = Signal()  # a tag with SAME_CLOCK losses: registered when the entry is taken
        time2 = Signal(TIME_BITS)  # time + gap, added when the entry is taken (off the hot path)
        rec_time = Signal(TIME_BITS)
        m.d.comb += rec_time.eq(Mux(second, time2, time))
        rec_epoch = rec_time[WORD_TIME_BITS:]
        # rec_epoch != epoch_sent, kept as a register: set from parallel compares whenever the
        # record in hand or epoch_sent changes, so no 24-bit compare sits on the control path
        epoch_differs = Signal()
        drop_count = Signal(PENDING_BITS)
        m.d.comb += drop_count.eq(Mux((kind == REC_TAG) & ~second, 1, count))
        # drop_count - LOSS_COUNT_MAX from registers (count_less is set with count), so a flush
        # and a drop in one clock cost one adder, not two in a row
        count_less = Signal(PENDING_BITS + 1)
        drop_less = Signal(PENDING_BITS + 1)
        m.d.comb += drop_less.eq(Mux((kind == REC_TAG) & ~second,
                                     (1 - LOSS_COUNT_MAX) & ((1 << (PENDING_BITS + 1)) - 1),
                                     count_less))

        tag_word = event_word(Kind.TAG, channel, Const(0, AUX_BITS), rec_time)
        loss_reason = Signal(4)
        m.d.comb += loss_reason.eq(Mux(second, LossReason.SAME_CLOCK,
                                       Mux(kind == REC_FIFO_LOSS, LossReason.CHANNEL_FIFO,
                                           LossReason.OUTPUT)))
        loss_word = event_word(Kind.LOSS, channel, Cat(count, loss_reason), rec_time)
        rec_word = Mux((kind == REC_TAG) & ~second, tag_word, loss_word)
        epoch_word = Cat(rec_epoch, Const(0, 60 - len(rec_epoch)), Const(Kind.EPOCH, 4))

        advance = Signal()
        drop = Signal()
        with m.If(~header_sent):
            m.d.comb += [out.w_en.eq(1), out.w_data.eq(int(header_word(self.bin_ps, self.channels)))]
            with m.If(out.w_rdy):
                m.d.sync += header_sent.eq(1)
        with m.Elif(busy):
            with m.If(~out.w_rdy):
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
                m.d.sync += epoch_differs.eq(time2[WORD_TIME_BITS:] != epoch_sent)
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
        lowest = Signal(self.channels)  # one-hot: the lowest channel with pending losses
        m.d.comb += lowest.eq(nonzero & ~(nonzero - 1))
        flush_channel = Signal(range(max(self.channels, 2)))
        for i in reversed(range(self.channels)):
            with m.If(nonzero[i]):
                m.d.comb += flush_channel.eq(i)
        chunk = Signal(PENDING_BITS)
        flush_time = Signal(TIME_BITS)
        chunk_or = 0
        time_or = 0
        for i in range(self.channels):
            chunk_or = chunk_or | (chunks[i] & lowest[i].replicate(COUNT_BITS))
            time_or = time_or | (pending_time[i] & lowest[i].replicate(TIME_BITS))
        m.d.comb += [chunk.eq(chunk_or), flush_time.eq(time_or)]

        # out.level <= q - 4, kept as a register: the output FIFO's level counted alongside it
        level = Signal(range(q + 1))
        room4 = Signal(init=1)
        level_next = Signal(range(q + 2))
        m.d.comb += level_next.eq(level + (out.w_en & out.w_rdy) - (out.r_en & out.r_rdy))
        m.d.sync += [level.eq(level_next), room4.eq(level_next <= q - 4)]

        take = header_sent & (~busy | finishing)
        flush = Signal()
        m.d.comb += [
            flush.eq(take & any_pending & room4),
            self.merged.ready.eq(take & ~flush),
        ]
        with m.If(flush):
            m.d.sync += [
                busy.eq(1), second.eq(0), kind.eq(REC_OUTPUT_LOSS), channel.eq(flush_channel),
                time.eq(flush_time), time2.eq(flush_time),
                count.eq(chunk), count_less.eq(chunk - LOSS_COUNT_MAX), gap.eq(0),
                has_second.eq(0),
                epoch_differs.eq(flush_time[WORD_TIME_BITS:] != epoch_sent),
            ]
        with m.Elif(self.merged.valid & self.merged.ready):
            entry = self.merged.payload.entry
            m.d.sync += [
                busy.eq(1), second.eq(0), kind.eq(Mux(entry.loss, REC_FIFO_LOSS, REC_TAG)),
                channel.eq(self.merged.payload.channel), time.eq(entry.time),
                time2.eq(entry.time + entry.gap), count.eq(entry.count), gap.eq(entry.gap),
                count_less.eq(entry.count - LOSS_COUNT_MAX),
                has_second.eq(~entry.loss & (entry.count != 0)),
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
