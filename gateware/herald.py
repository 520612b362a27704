"""HeraldUnit: attempt windows from the sync channel's tags, success rules, a herald pin with a
fixed latency, HERALD records and counters.

It listens to the timestampers' outputs directly (every channel's stage-B entry, before the
channel FIFOs and the merger), because only there is the time at which a tag is seen a fixed
function of its sample clock: a word sampled at clock k is seen at clock k + 3 with
``time = k*N + fine + delay_bins``. Behind the merger the wait depends on the other channels.

Attempts. Every sync tag (time ``t_s``) is one attempt, numbered from 0 after reset; its window
starts at ``S = t_s + offset_bins`` and lasts ``length_bins`` bins, ``[S, S + length)``. Attempts
wait in a queue of ``ATTEMPT_QUEUE`` in-flight windows (the reference lab has 49 in flight: its
window opens 49 us after its sync, one attempt per us), so the offset may span many sync periods.
A sync that finds the queue full is counted in ``lost`` (no window).

Rules (``rule``):

* ``RULE_SINGLE`` (1): exactly one click on the detector channels (``detector_mask``) in
  ``[S, S + length)``. Outcome 1 (psi+) when it is on the lowest channel of the mask, 2 (psi-)
  otherwise. The deciding click is that click.
* ``RULE_TWO`` (2, Barrett-Kok): exactly one detector click in the early window
  ``[S, S + length)`` and exactly one in the late window ``[S + late_bins, S + late_bins + length)``.
  Outcome 3 when both are on the same detector (psi+), 4 when on different ones (psi-). The
  deciding click is the late one. ``late_bins`` has 16 bits (at most 82 us at 1250 ps), so a
  click's offset from S is 17 bits and so is every window compare.
* Veto, with either rule: any click on a ``veto_mask`` channel from S to the end of the attempt's
  last window cancels the herald (``vetoed`` pulses; the core counts it).
* ``RULE_OFF`` (0), or ``length_bins`` 0: attempts are counted, nothing is decided.

A click is a tag, plus the first edge the timestamper lost in the same clock (its time is
``time + gap``), which therefore counts as a second click: two clicks in one clock fail the rule.

Decision and latency. Let E be the attempt's last window bin and ``d_min`` the smallest
``delay_bins`` of the detector and veto channels. Word k of the fastest of them holds bin E when
``k = (E - d_min) // N``; all clicks up to E have been shown at clock k + 3, their offsets from
S are registered at k + 4, their window compares at k + 5 and accumulated then (pipeline stages,
so no wide adder feeds a compare, and no compare a count, in the same clock), the decision is
registered at k + 6, the HERALD ``record`` at k + 7 (``record.valid`` for one clock) and the
pin rises at **k + 8**, whatever the outcome or when the deciding click came: ``PIN_LATENCY = 8``
clocks from the sample word that completes the condition (the one holding the window's last
bin) to the pin. (The pin follows the registered record, so the pin's timer by the pad is a
clock away from the decision logic.)

Settings are static while attempts run (the host writes them with the channels disabled or the
core in reset): the window offsets reach the channels' compares through a chain of registers,
up to ``channels + 1`` clocks after a write.

One attempt is evaluated at a time. The next window is taken from the queue (through a
register after it: a sync tag's attempt can be taken 4 clocks after the tag was seen) the clock
after a decision (or at once when idle); if a click at S could already have been seen then (``S`` at or
below ``(now - 3)*N + N - 1 + d_max``, d_max the largest delay of the watched channels), the
attempt is counted ``late`` and skipped, never decided on partial clicks. With the reference
lab's 1 us between attempts and 10 ns windows this never happens.
"""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from qnode.firmware.events import HERALD_ATTEMPT_BITS
from qnode.firmware.registers import DELAY_BITS

from . import onehot
from .params import HERALD_PIN_LATENCY, HERALD_RECORD_LATENCY, TIME_BITS, WRITE_LATENCY
from .timestamper import Entry

RULE_OFF, RULE_SINGLE, RULE_TWO = 0, 1, 2
OUTCOME_PSI_PLUS, OUTCOME_PSI_MINUS, OUTCOME_TWO_SAME, OUTCOME_TWO_DIFFERENT = 1, 2, 3, 4
OUTCOMES = 4
ATTEMPT_QUEUE = 64  # windows in flight: >= the 49 of the reference lab
SEEN_LATENCY = WRITE_LATENCY  # a word sampled at k is seen here at k + 3
# k + 3 all clicks shown, k + 4 offsets, k + 5 compared and accumulated, k + 6 decision,
# k + 7 record, k + 8 pin
RECORD_LATENCY, PIN_LATENCY = HERALD_RECORD_LATENCY, HERALD_PIN_LATENCY
OFFSET_BITS = 32
LENGTH_BITS = 16
LATE_BITS = 16  # the late window within 65535 bins of the early one (82 us at 1250 ps)
PIN_CLOCKS_BITS = 16
# a click's offset from S, up to late_bins + length_bins: every window compare is this wide
OFFSET_SPAN_BITS = max(LATE_BITS, LENGTH_BITS) + 1

HeraldRecord = data.StructLayout({
    "channel": 6, "outcome": 4, "attempt": HERALD_ATTEMPT_BITS, "time": TIME_BITS,
})
Attempt = data.StructLayout({"start": TIME_BITS, "number": HERALD_ATTEMPT_BITS})


class HeraldUnit(wiring.Component):
    def __init__(self, channels: int, oversampling: int):
        self.channels = channels
        self.oversampling = oversampling
        super().__init__({
            "tags": In(stream.Signature(Entry, always_ready=True)).array(channels),
            "now": In(TIME_BITS),  # coarse clock counter (the core's ``now``)
            "lost_times": In(TIME_BITS).array(channels),  # with tags: Timestamper.lost_time
            "delays": In(DELAY_BITS).array(channels),  # the channels' ts_delay_bins
            # settings
            "rule": In(2),
            "sync_channel": In(4),
            "detector_mask": In(16),
            "veto_mask": In(16),
            "offset_bins": In(OFFSET_BITS),
            "length_bins": In(LENGTH_BITS),
            "late_bins": In(LATE_BITS),
            "pin_clocks": In(PIN_CLOCKS_BITS),
            # results
            "pin": Out(1),
            "record": Out(stream.Signature(HeraldRecord, always_ready=True)),
            "attempt": Out(1),  # pulses: a sync made an attempt
            "lost": Out(1),  # a sync found the attempt queue full
            "late": Out(1),  # an attempt was skipped (its window had begun)
            "vetoed": Out(1),
            "success": Out(OUTCOMES),  # one-hot by outcome - 1
        })

    def elaborate(self, platform):
        m = Module()
        n, c = self.oversampling, self.channels
        shift = n.bit_length() - 1

        # --- settings derived once a clock (they change only while the unit is idle) -------
        watched = Signal(16)
        m.d.comb += watched.eq(self.detector_mask | self.veto_mask)
        # Smallest and largest delay of the watched channels: a tree with a register per level
        # (settings are static while attempts run, so the clocks it takes do not matter).
        lows = [Mux(watched[i], self.delays[i], (1 << DELAY_BITS) - 1) for i in range(c)]
        highs = [Mux(watched[i], self.delays[i], 0) for i in range(c)]
        level = 0
        while len(lows) > 1 or level == 0:
            next_lows, next_highs = [], []
            for j in range(0, len(lows), 2):
                a_lo, b_lo = lows[j], lows[j + 1] if j + 1 < len(lows) else lows[j]
                a_hi, b_hi = highs[j], highs[j + 1] if j + 1 < len(highs) else highs[j]
                lo_r = Signal(DELAY_BITS, name=f"d_lo_{level}_{j}")
                hi_r = Signal(DELAY_BITS, name=f"d_hi_{level}_{j}")
                m.d.sync += [lo_r.eq(Mux(a_lo < b_lo, a_lo, b_lo)),
                             hi_r.eq(Mux(a_hi > b_hi, a_hi, b_hi))]
                next_lows.append(lo_r)
                next_highs.append(hi_r)
            lows, highs, level = next_lows, next_highs, level + 1
        d_min, d_max = lows[0], highs[0]
        lowest_detector = Signal(range(16))
        lowest_next = Signal(range(16))
        for i in reversed(range(16)):
            with m.If(self.detector_mask[i]):
                m.d.comb += lowest_next.eq(i)
        m.d.sync += lowest_detector.eq(lowest_next)

        # Highest time each watched channel has surely delivered by this clock (stage B holds
        # word now - 3): the fastest channel's bound decides, the slowest guards the next window.
        # Both are registers, computed a clock ahead so no adder sits before their compares:
        # seen_max: every click a watched channel can show up to this clock is at or below it;
        # seen_min_before: all clicks up to it, on every watched channel, were shown two clocks
        # ago (those are the ones the accumulators hold now, see the pipeline below).
        seen_min_before = Signal(TIME_BITS)
        seen_max = Signal(TIME_BITS)
        m.d.sync += [
            seen_min_before.eq(Cat(Const(n - 1, shift), self.now - SEEN_LATENCY - 1) + d_min),
            seen_max.eq(Cat(Const(n - 1, shift), self.now + 1 - SEEN_LATENCY) + d_max),
        ]

        # --- attempts: sync tags -> queue of windows ---------------------------------------
        m.submodules.queue = queue = fifo.SyncFIFOBuffered(width=Attempt.size, depth=ATTEMPT_QUEUE)
        number = Signal(HERALD_ATTEMPT_BITS)
        # the sync channel's tag, registered (one clock) before its window start is computed
        sync_tag = Signal()
        sync_time = Signal(TIME_BITS)
        m.d.sync += [sync_tag.eq(0), sync_time.eq(0)]
        for i in range(c):
            with m.If(self.sync_channel == i):
                m.d.sync += [sync_tag.eq(self.tags[i].valid), sync_time.eq(self.tags[i].payload.time)]
        pushed = Signal(Attempt)
        m.d.comb += [pushed.start.eq(sync_time + self.offset_bins), pushed.number.eq(number)]
        with m.If(sync_tag):
            m.d.sync += number.eq(number + 1)
            m.d.comb += [queue.w_en.eq(1), queue.w_data.eq(pushed), self.attempt.eq(1),
                         self.lost.eq(~queue.w_rdy)]

        # --- the attempt being evaluated ------------------------------------------------------
        active = Signal()
        deciding = Signal()
        start = Signal(TIME_BITS)
        attempt_no = Signal(HERALD_ATTEMPT_BITS)
        two = Signal()  # the rule when this window was taken
        single = Signal()
        last_offset = Signal(OFFSET_SPAN_BITS)  # E - S
        m.d.comb += last_offset.eq(Mux(self.rule == RULE_TWO, self.late_bins, 0) + self.length_bins - 1)
        last_bin = Signal(TIME_BITS)  # E: the attempt's last bin

        # the next attempt, registered after the queue (its block RAM output is slow): the late
        # compare below and the window registers' loads start from flip-flops
        head = Signal(Attempt)
        head_valid = Signal()
        take = Signal()
        m.d.comb += take.eq(head_valid & (~active | deciding))
        m.d.comb += queue.r_en.eq(~head_valid | take)
        with m.If(queue.r_en):
            m.d.sync += [head.eq(queue.r_data), head_valid.eq(queue.r_rdy)]
        head_late = Signal()
        # taken now, evaluated from the next clock: a click at S may already be in this clock
        m.d.comb += head_late.eq(head.start <= seen_max)

        # Click accumulators: number of clicks (0, 1, 2 = two or more), first click's channel/time.
        early_n, late_n = Signal(2), Signal(2)
        early_ch, late_ch = Signal(6), Signal(6)
        early_off, late_off_first = Signal(OFFSET_SPAN_BITS), Signal(OFFSET_SPAN_BITS)  # from S
        veto = Signal()

        # Each click's place relative to S, once per channel: d = t - S (and for a lost edge
        # its own time, which the timestamper gives beside the tag), near when
        # 0 <= d < 2**OFFSET_SPAN_BITS; the windows are then narrow compares of d against the
        # attempt's offsets instead of full-width compares of times. Three registered stages:
        # P the offsets, W the window compares (per channel and click, the masks applied),
        # then the counts and the first click of each window, accumulated. ``placed`` says
        # P and W were both taken against the window that is current.
        # The windows as offsets from S for stage W: early [0, early_len), late [late_off,
        # late_end), the attempt up to last_off = E - S. They follow from the settings alone
        # (static while attempts run), so each channel reads its own copy, passed down a chain
        # of registers one link per channel: one copy for every channel's compares was a 12-15 ns
        # route across the die, and copies loaded alike would be merged by synthesis (links of a
        # chain are not). A setting reaches the last channel c + 1 clocks after it is written.
        Windows = data.StructLayout({"early_len": LENGTH_BITS, "late_off": LATE_BITS,
                                     "late_end": OFFSET_SPAN_BITS, "last_off": OFFSET_SPAN_BITS})
        link = Signal(Windows, name="windows_in")
        m.d.sync += [link.early_len.eq(self.length_bins), link.late_off.eq(self.late_bins),
                     link.late_end.eq(self.late_bins + self.length_bins), link.last_off.eq(last_offset)]
        hits_e, hits_l, hits_v, offsets = [], [], [], []
        for i in range(c):
            w = Signal(Windows, name=f"windows_{i}")
            m.d.sync += w.eq(link)
            link = w
            tag = self.tags[i]
            d = Signal(TIME_BITS + 1, name=f"d_{i}")
            d2 = Signal(TIME_BITS + 1, name=f"d_lost_{i}")
            m.d.comb += [d.eq(tag.payload.time - start), d2.eq(self.lost_times[i] - start)]
            seen = tag.valid & ~tag.payload.loss
            near, near2 = Signal(name=f"near_{i}"), Signal(name=f"near_lost_{i}")
            off, off2 = (Signal(OFFSET_SPAN_BITS, name=f"off_{i}"),
                         Signal(OFFSET_SPAN_BITS, name=f"off_lost_{i}"))
            m.d.sync += [
                near.eq(seen & (d[OFFSET_SPAN_BITS:] == 0)), off.eq(d[:OFFSET_SPAN_BITS]),
                near2.eq(seen & (tag.payload.count != 0) & (d2[OFFSET_SPAN_BITS:] == 0)),
                off2.eq(d2[:OFFSET_SPAN_BITS]),
            ]
            # stage W: in order tag, lost edge (the lowest channel's tag is the first click)
            for hits, mask, inside in (
                    (hits_e, self.detector_mask, lambda o: o < w.early_len),
                    (hits_l, self.detector_mask, lambda o: (o >= w.late_off) & (o < w.late_end)),
                    (hits_v, self.veto_mask, lambda o: o <= w.last_off)):
                for k, (nr, o) in enumerate(((near, off), (near2, off2))):
                    h = Signal(name=f"hit_{len(hits)}_{k}_{i}")
                    m.d.sync += h.eq(mask[i] & nr & inside(o))
                    hits.append(h)
            # the clicks' offsets go on (a time is S + offset: the record adds it once)
            for o in (off, off2):
                w_o = Signal(OFFSET_SPAN_BITS, name=f"w_{o.name}")
                m.d.sync += w_o.eq(o)
                offsets.append(w_o)
        placed_p = Signal()
        placed = Signal()

        def window_clicks(hits):
            """Stage W's hits of one window -> (count saturated at 2, channel and offset from S
            of the first click): an OR tree and a one-hot select, no adder or priority chain."""
            v = Cat(hits)
            first = Signal(len(v))
            m.d.comb += first.eq(onehot.lowest(v))
            count = Signal(2)
            m.d.comb += count.eq(Mux(v.any(), Mux((v & ~first).any(), 2, 1), 0))
            ch = Signal(6)
            tm = Signal(OFFSET_SPAN_BITS)
            m.d.comb += [ch.eq(onehot.index(first) >> 1),  # two clicks per channel
                         tm.eq(onehot.select(first, offsets))]
            return count, ch, tm

        e_cnt, e_ch, e_t = window_clicks(hits_e)
        l_cnt, l_ch, l_t = window_clicks(hits_l)
        v_cnt, _, _ = window_clicks(hits_v)

        def accumulate(acc_n, cnt):
            # saturating 0, 1, 2 (two or more) as logic of two 2-bit values
            m.d.sync += acc_n.eq(Mux(acc_n[1] | cnt[1] | (acc_n[0] & cnt[0]), 2, acc_n | cnt))

        # The first click's channel and offset follow the window's selection in every clock the
        # count is still 0 (they are read only with a count of 1 or more, and they freeze the
        # clock the first click is counted): the wide registers' enable is that 2-bit compare,
        # not the take / active / placed logic in front of the counts (a routed path of 15 ns)
        for acc_n, acc_ch, acc_t, ch, t in ((early_n, early_ch, early_off, e_ch, e_t),
                                           (late_n, late_ch, late_off_first, l_ch, l_t)):
            with m.If(acc_n == 0):
                m.d.sync += [acc_ch.eq(ch), acc_t.eq(t)]

        m.d.sync += self.late.eq(0)
        with m.If(take):
            off = (self.rule == RULE_OFF) | (self.length_bins == 0)
            # the window registers load on every take, late or not (only ``active`` waits for
            # the late compare), so the wide clock enables hang on ``take`` alone
            s = head.start
            m.d.sync += [
                active.eq(~(head_late | off)), start.eq(s), attempt_no.eq(head.number),
                two.eq(self.rule == RULE_TWO), single.eq(self.rule == RULE_SINGLE),
                last_bin.eq(s + last_offset),
                early_n.eq(0), late_n.eq(0), veto.eq(0),
            ]
            m.d.sync += self.late.eq(head_late & ~off)  # the pulse a clock after the take
            m.d.sync += deciding.eq(0)
        with m.Elif(deciding):
            m.d.sync += [active.eq(0), deciding.eq(0)]
        with m.Elif(active):
            with m.If(placed):
                accumulate(early_n, e_cnt)
                with m.If(two):
                    accumulate(late_n, l_cnt)
                with m.If(v_cnt != 0):
                    m.d.sync += veto.eq(1)
            # every click up to E was shown by the previous clock and is accumulated now: done
            with m.If(seen_min_before >= last_bin):
                m.d.sync += deciding.eq(1)
        m.d.sync += [placed_p.eq(~take), placed.eq(~take & placed_p)]

        # --- decision (the clock after done), registered to the pin and the record ------------
        outcome = Signal(4)
        with m.If(deciding & ~veto):
            with m.If(single & (early_n == 1)):
                m.d.comb += outcome.eq(Mux(early_ch == lowest_detector, OUTCOME_PSI_PLUS,
                                           OUTCOME_PSI_MINUS))
            with m.If(two & (early_n == 1) & (late_n == 1)):
                m.d.comb += outcome.eq(Mux(early_ch == late_ch, OUTCOME_TWO_SAME,
                                           OUTCOME_TWO_DIFFERENT))
        pin_left = Signal(PIN_CLOCKS_BITS)
        m.d.sync += [
            self.record.valid.eq(outcome != 0),
            self.record.payload.outcome.eq(outcome),
            self.record.payload.attempt.eq(attempt_no),
            self.record.payload.channel.eq(Mux(two, late_ch, early_ch)),
            self.record.payload.time.eq(start + Mux(two, late_off_first, early_off)),
            self.vetoed.eq(deciding & veto),
            self.success.eq(Cat((outcome == k + 1) for k in range(OUTCOMES))),
        ]
        # the pin a clock behind the record, from its registered valid: the decision logic and
        # the pin's timer (placed by the pad) each get a clock of their own (a routed 18 ns path)
        with m.If(self.record.valid):
            m.d.sync += [self.pin.eq(self.pin_clocks != 0), pin_left.eq(self.pin_clocks - 1)]
        with m.Elif(pin_left != 0):
            m.d.sync += pin_left.eq(pin_left - 1)
        with m.Else():
            m.d.sync += self.pin.eq(0)
        return m
