"""Twins of the coincidence unit (gateware/coincidence.py) and the herald unit
(gateware/herald.py): the same records, counts and clocks as the RTL on the same stimulus.

Coincidences: one pass over the merged (time, channel) order per pattern (numba), with the
host's definition (qnode.host.measurements.CoincidencePattern).

Heralds: one numba pass over the attempts: when the unit takes each from its queue (it evaluates
one at a time), which gives each herald's clock, then the clicks in a decided attempt's windows,
counted by pointers that walk the sorted clicks as the windows move on with the attempts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np

from qnode.gateware.params import HERALD_PIN_LATENCY, HERALD_RECORD_LATENCY, WRITE_LATENCY

# Keep in step with gateware/herald.py (pure numbers: the twin does not import Amaranth).
RULE_OFF, RULE_SINGLE, RULE_TWO = 0, 1, 2
OUTCOME_PSI_PLUS, OUTCOME_PSI_MINUS, OUTCOME_TWO_SAME, OUTCOME_TWO_DIFFERENT = 1, 2, 3, 4
SEEN_LATENCY = WRITE_LATENCY
RECORD_LATENCY, PIN_LATENCY = HERALD_RECORD_LATENCY, HERALD_PIN_LATENCY
QUEUE_LATENCY = 4  # the sync tag registered, written at P + 1, at the queue's head at P + 3,
# in the next-attempt register at P + 4
ATTEMPT_BITS = 18
DELAY_MAX = (1 << 16) - 1


# ---------------------------------------------------------------------------------------
# Coincidences

@numba.njit(cache=True)
def _coincidences(time, channel, is_tag, masks, windows, folds):
    """Per pattern: the index of the entry completing each counted window, its opening time
    and the mask of channels that had clicked. Returns flat arrays (entry, pattern, opened, mask)."""
    n = time.shape[0]
    p_n = masks.shape[0]
    out_entry = np.empty(n * p_n, np.int64)
    out_pattern = np.empty(n * p_n, np.int64)
    out_opened = np.empty(n * p_n, np.int64)
    out_mask = np.empty(n * p_n, np.int64)
    k = 0
    for p in range(p_n):
        mask = masks[p]
        need = folds[p]
        if need == 0:
            need = 0
            for b in range(16):
                need += (mask >> b) & 1
        is_open = False
        opened = np.int64(0)
        seen = np.int64(0)
        for i in range(n):
            if not is_tag[i]:
                continue
            bit = np.int64(1) << channel[i]
            if (mask & bit) == 0:
                continue
            t = time[i]
            if not is_open or t - opened > windows[p]:
                is_open = True
                opened = t
                seen = bit
                fold = 1
                if fold == need:
                    out_entry[k], out_pattern[k], out_opened[k], out_mask[k] = i, p, opened, seen
                    k += 1
            elif (seen & bit) == 0:
                seen |= bit
                fold = 0
                for b in range(16):
                    fold += (seen >> b) & 1
                if fold == need:
                    out_entry[k], out_pattern[k], out_opened[k], out_mask[k] = i, p, opened, seen
                    k += 1
    return out_entry[:k], out_pattern[:k], out_opened[:k], out_mask[:k]


@dataclass
class CoincidenceResult:
    entry: np.ndarray  # index (in the merged stream) of the entry that completed the window
    pattern: np.ndarray
    opened: np.ndarray  # time of the click that opened the window, bins
    mask: np.ndarray  # channels that had clicked in it when it counted
    counts: np.ndarray  # per pattern


def coincidences(time_bins, channel, masks, windows_bins, min_folds, *, is_tag=None) -> CoincidenceResult:
    """The merged stream (time order, ties by channel) -> counted windows, in stream order (by
    the completing entry, then by pattern: the order the unit emits them)."""
    time_bins = np.asarray(time_bins, np.int64)
    channel = np.asarray(channel, np.int64)
    is_tag = np.ones(len(time_bins), np.bool_) if is_tag is None else np.asarray(is_tag, np.bool_)
    masks = np.asarray(masks, np.int64)
    e, p, o, mk = _coincidences(time_bins, channel, is_tag, masks,
                                np.asarray(windows_bins, np.int64), np.asarray(min_folds, np.int64))
    order = np.lexsort((p, e))
    counts = np.bincount(p, minlength=len(masks)).astype(np.int64)
    return CoincidenceResult(e[order], p[order], o[order], mk[order], counts)


def marked_stream(time_bins, channel, masks, windows_bins, min_folds, emit, *, is_tag=None):
    """What the unit passes on: (coincidence flag, channel or pattern, time, count or mask) rows,
    entries as they came with the records of emitting patterns right behind their entry.
    Entries carry count 0 here (the caller compares the fields it drove)."""
    res = coincidences(time_bins, channel, masks, windows_bins, min_folds, is_tag=is_tag)
    keep = ((np.int64(emit) >> res.pattern) & 1).astype(bool)
    n = len(time_bins)
    flag = np.concatenate([np.zeros(n, np.int64), np.ones(keep.sum(), np.int64)])
    ch = np.concatenate([np.asarray(channel, np.int64), res.pattern[keep]])
    t = np.concatenate([np.asarray(time_bins, np.int64), res.opened[keep]])
    aux = np.concatenate([np.zeros(n, np.int64), res.mask[keep]])
    # an entry's position is its index; its records sort right behind it, in pattern order
    key = np.concatenate([np.arange(n, dtype=np.int64) * 32, res.entry[keep] * 32 + 1 + res.pattern[keep]])
    order = np.argsort(key, kind="stable")
    return np.stack([flag[order], ch[order], t[order], aux[order]], axis=1), res.counts


# ---------------------------------------------------------------------------------------
# Heralds

@dataclass
class HeraldSettings:
    rule: int = RULE_SINGLE
    sync_channel: int = 0
    detector_mask: int = 0b11000
    veto_mask: int = 0
    offset_bins: int = 0
    length_bins: int = 10
    late_bins: int = 0
    pin_clocks: int = 1

    @classmethod
    def from_lab(cls, heralding, bin_ps: int, **overrides) -> "HeraldSettings":
        """The reference lab's single-click settings from [sim.heralding] (channels, 49 us, 10 ns)."""
        s = cls(rule=RULE_SINGLE,
                detector_mask=(1 << heralding.channel_plus) | (1 << heralding.channel_minus),
                offset_bins=round(heralding.arrival_delay_ps / bin_ps),
                length_bins=round(heralding.window_ps / bin_ps))
        for k, v in overrides.items():
            setattr(s, k, v)
        return s


@dataclass
class HeraldResult:
    clock: np.ndarray  # clock the record is valid (the pin rises a clock later)
    channel: np.ndarray  # detector of the deciding click
    outcome: np.ndarray
    attempt: np.ndarray  # attempt number mod 2**18 (what the HERALD word carries)
    attempt_index: np.ndarray  # the full attempt number (sync tags since reset)
    time: np.ndarray  # the deciding click, bins
    done_sample: np.ndarray  # the sample word (clock) holding the attempt's last window bin
    counters: dict = field(default_factory=dict)

    @property
    def pin_clock(self) -> np.ndarray:
        """Clock the pin rises: the pin follows the registered record."""
        return self.clock + (PIN_LATENCY - RECORD_LATENCY)


@numba.njit(cache=True, inline="always")
def _schedule(push_clock, start, last_bin, free, n, d_min, d_max, start_now):
    """One attempt (rule on), taken from the queue when it is free: the clock it is taken,
    whether it was late, its decision clock (-1: none) and the clock the queue is free again.
    Clocks count from reset; the unit's clock counter (``now``) starts at ``start_now``."""
    q = max(push_clock + QUEUE_LATENCY, free)
    seen_max = (q + start_now - SEEN_LATENCY) * n + n - 1 + d_max
    if start <= seen_max:
        return q, True, np.int64(-1), q + 1
    x = (last_bin - d_min) // n - start_now + SEEN_LATENCY  # every click up to E shown
    decided = x + 3  # offsets at x + 1, accumulated at x + 2, the decision registered at x + 3
    return q, False, decided, x + 3  # the deciding clock takes the next attempt


@numba.njit(cache=True, inline="always")
def _at_least(times, p, lo):
    """np.searchsorted(times, lo, "left") from a guess ``p``: a walk, short when the queries
    rise with the attempts (exact whatever their order)."""
    while p < len(times) and times[p] < lo:
        p += 1
    while p > 0 and times[p - 1] >= lo:
        p -= 1
    return p


@numba.njit(cache=True, inline="always")
def _above(times, p, hi):
    """np.searchsorted(times, hi, "right") from a guess ``p``."""
    while p < len(times) and times[p] <= hi:
        p += 1
    while p > 0 and times[p - 1] > hi:
        p -= 1
    return p


@numba.njit(cache=True)
def _attempts(push, sync_time, offset, length, late_bins, rule, lowest, n, d_min, d_max, start_now,
              limited, n_clocks, det_t, det_c, veto_t, use_veto, w_attempt, w_decided, w_channel, w_outcome,
              w_time, counts):
    """Every attempt in one pass (rule on): its schedule, then for decided ones the clicks in
    its windows and the outcome. Heralds go to ``w_*`` in attempt order; returns their number.
    ``counts``: attempts seen, late, vetoed, then successes per outcome 1..4.
    ``limited``: only what the RTL has shown before clock ``n_clocks``."""
    two = rule == RULE_TWO
    free = np.int64(0)
    k = 0
    seen_n = late_n = veto_n = 0  # in locals: the loop is over every attempt
    pe_lo = pe_hi = pl_lo = pl_hi = pv_lo = pv_hi = 0
    last = len(det_c) - 1
    for i in range(len(push)):
        start = sync_time[i] + offset
        early_end = start + length - 1
        late_start = start + late_bins
        last_bin = late_start + length - 1 if two else early_end
        take, late, decided, free = _schedule(push[i], start, last_bin, free, n, d_min, d_max,
                                              start_now)
        if limited:
            if push[i] + 1 < n_clocks:  # the registered sync tag pulses ``attempt``
                seen_n += 1
            late = late and take + 1 < n_clocks  # the ``late`` pulse is registered a clock later
            if decided + 1 >= n_clocks:  # results show at decided + 1
                decided = -1
        else:
            seen_n += 1
        if late:
            late_n += 1
        if decided < 0:
            continue
        pe_lo = _at_least(det_t, pe_lo, start)
        pe_hi = _above(det_t, pe_hi, early_end)
        e_n = pe_hi - pe_lo
        if use_veto:
            pv_lo = _at_least(veto_t, pv_lo, start)
            pv_hi = _above(veto_t, pv_hi, last_bin)
            if pv_hi - pv_lo > 0:
                veto_n += 1
                continue
        if rule == RULE_SINGLE:
            if e_n != 1:
                continue
            ch = det_c[min(pe_lo, last)]
            outcome = OUTCOME_PSI_PLUS if ch == lowest else OUTCOME_PSI_MINUS
            idx = pe_lo
        elif two:
            pl_lo = _at_least(det_t, pl_lo, late_start)
            pl_hi = _above(det_t, pl_hi, last_bin)
            if e_n != 1 or pl_hi - pl_lo != 1:
                continue
            ch = det_c[min(pl_lo, last)]
            outcome = OUTCOME_TWO_SAME if det_c[min(pe_lo, last)] == ch else OUTCOME_TWO_DIFFERENT
            idx = pl_lo
        else:
            continue
        counts[2 + outcome] += 1
        w_attempt[k] = i
        w_decided[k] = decided
        w_channel[k] = ch
        w_outcome[k] = outcome
        w_time[k] = det_t[idx]
        k += 1
    counts[0] = seen_n
    counts[1] = late_n
    counts[2] = veto_n
    return k


def _clicks(entries, channels, mask):
    """Click times and channels on the mask's channels: each tag, and the first edge lost in
    its clock (time + gap), which the unit counts as a click too."""
    times, chans = [], []
    for ch in range(channels):
        if not (mask >> ch) & 1:
            continue
        sl = entries.channel(ch)
        t = entries.time[sl]
        extra = entries.count[sl] > 0
        tt = np.concatenate([t, t[extra] + entries.gap[sl][extra]])
        times.append(tt)
        chans.append(np.full(len(tt), ch, np.int64))
    if not times:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    t = np.concatenate(times)
    c = np.concatenate(chans)
    order = np.lexsort((c, t))
    return t[order], c[order]


def heralds(entries, settings: HeraldSettings, *, channels: int, oversampling: int,
            delay_bins, n_clocks: int | None = None, start_now: int = 0) -> HeraldResult:
    """The timestampers' entries (sim.twin.timestamp) -> the herald unit's records and counters.
    ``n_clocks``: keep what the RTL has delivered before that clock (None: everything);
    ``start_now``: the core's clock counter at reset (entries' clocks count from reset)."""
    s = settings
    n = oversampling
    watched = s.detector_mask | s.veto_mask
    delays = [int(delay_bins[c]) for c in range(channels) if (watched >> c) & 1]
    d_min = min(delays) if delays else DELAY_MAX
    d_max = max(delays) if delays else 0

    sl = entries.channel(s.sync_channel)
    if s.rule == RULE_OFF or s.length_bins == 0:
        # No attempt is ever decided (nor late): only the attempts are counted. The registers
        # at reset, and what the lab's attempts would otherwise cost on every run.
        push = entries.clock[sl]
        seen = len(push) if n_clocks is None else int(np.count_nonzero(push + 1 < n_clocks))
        none = np.zeros(0, np.int64)
        counters = {"herald_attempt_count": seen, "herald_late_count": 0, "herald_veto_count": 0,
                    "herald_success_count": [0, 0, 0, 0]}
        return HeraldResult(clock=none, channel=none.copy(), outcome=none.copy(), attempt=none.copy(),
                            attempt_index=none.copy(), time=none.copy(), done_sample=none.copy(),
                            counters=counters)
    push = entries.clock[sl]
    det_t, det_c = _clicks(entries, channels, s.detector_mask)
    veto_t = _clicks(entries, channels, s.veto_mask)[0] if s.veto_mask else np.zeros(0, np.int64)
    lowest = (s.detector_mask & -s.detector_mask).bit_length() - 1
    a = len(push)
    # at most one herald per attempt; numpy's empty arrays cost nothing until written
    w_attempt, w_decided, w_channel, w_outcome, w_time = (np.empty(a, np.int64) for _ in range(5))
    counts = np.zeros(7, np.int64)
    k = _attempts(push, entries.time[sl], s.offset_bins, s.length_bins, s.late_bins, s.rule, lowest,
                  n, d_min, d_max, start_now, n_clocks is not None, n_clocks or 0, det_t, det_c,
                  veto_t, bool(s.veto_mask), w_attempt, w_decided, w_channel, w_outcome, w_time,
                  counts)
    attempt = w_attempt[:k].copy()
    decided = w_decided[:k]
    counters = {
        "herald_attempt_count": int(counts[0]),
        "herald_late_count": int(counts[1]),
        "herald_veto_count": int(counts[2]),
        "herald_success_count": [int(c) for c in counts[3:7]],
    }
    return HeraldResult(
        clock=decided + 1, channel=w_channel[:k].copy(), outcome=w_outcome[:k].copy(),
        attempt=attempt & ((1 << ATTEMPT_BITS) - 1), attempt_index=attempt,
        time=w_time[:k].copy(), done_sample=decided + 1 - RECORD_LATENCY, counters=counters)


def herald_event_fields(res: HeraldResult):
    """(kind, channel, aux, time_bins) of the HERALD words for ``firmware.events.encode_events``:
    aux = outcome << 18 | attempt mod 2**18, time = the deciding click."""
    from qnode.firmware.events import Kind

    aux = (res.outcome.astype(np.int64) << ATTEMPT_BITS) | res.attempt
    return np.full(len(aux), int(Kind.HERALD)), res.channel, aux, res.time


def coincidence_event_fields(res: CoincidenceResult, emit: int):
    """(kind, channel, aux, time_bins) of the COINCIDENCE words of emitting patterns:
    channel = pattern, aux = mask of the channels that clicked, time = the click that opened it."""
    from qnode.firmware.events import Kind

    keep = ((np.int64(emit) >> res.pattern) & 1).astype(bool)
    return (np.full(int(keep.sum()), int(Kind.COINCIDENCE)), res.pattern[keep], res.mask[keep],
            res.opened[keep])
