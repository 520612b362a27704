"""The twin of the time tagger gateware: same sampled input -> same event words, word for word.

It models gateware/core.py (TimeTaggerCore) clock by clock where that matters and skips the
clocks where nothing can change, so it is exact (loss records included, whatever the output
stall pattern) and fast. Two stages:

1. ``timestamp`` (numba, per channel): edges -> at most one tag per clock with its same-clock
   losses, dead time from recorded tags, ``time_bins = edge + delay_bins``, and the clock the
   entry reaches its ChannelFifo (``WRITE_LATENCY`` after its sample word).
2. ``_backend`` (numba): channel FIFOs (SyncFIFOBuffered timing, loss records on overflow), the
   time-ordered merger with its horizon, the packer and its output FIFO, and the consumer's
   ``ready`` per clock. Idle stretches and waits for the horizon are jumped over.

Input is either dense sample words (``samples[clock, channel]``, bit b = level at bin
``(start_now + clock) * N + b``, exactly what the RTL's pins get), or edges in bins per channel
(``edges_from_pulses``) for long runs, which is what the simulated FPGA serves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np

from qnode.firmware.events import Kind, LossReason, header_word
from qnode.gateware.params import (
    HORIZON_CLOCKS, VISIBLE_LATENCY, WRITE_LATENCY, check_geometry, merge_levels,
)

from .twin_herald import ATTEMPT_BITS, RULE_OFF, HeraldSettings, heralds

VISIBLE = VISIBLE_LATENCY

COUNTER_NAMES = ("ts_tag_count", "ts_same_clock_lost", "ts_fifo_lost", "ts_output_lost")
UNIT_COUNTER_NAMES = ("coinc_count", "herald_attempt_count", "herald_success_count",
                      "herald_veto_count", "herald_late_count", "herald_lost_count")
PATTERNS = 8  # keep in step with gateware/coincidence.py


def herald_registers_at_reset() -> HeraldSettings:
    """The herald unit's settings as the registers hold them after power-up: rule off."""
    return HeraldSettings(rule=RULE_OFF, sync_channel=0, detector_mask=0, veto_mask=0,
                          offset_bins=0, length_bins=0, late_bins=0, pin_clocks=1)


@dataclass
class TwinConfig:
    """The build parameters and the per-channel registers the twin runs with."""

    channels: int = 8
    oversampling: int = 8
    sys_clk_hz: int = 125_000_000
    fifo_depth: int = 16
    output_depth: int = 16
    start_now: int = 0  # clock counter at reset
    enable: list[int] = field(default_factory=list)  # per channel, default all 1
    edge: list[int] = field(default_factory=list)  # 0 rising, 1 falling; default rising
    delay_bins: list[int] = field(default_factory=list)
    dead_time_bins: list[int] = field(default_factory=list)
    # the coincidence unit (between merger and packer) and the herald unit: built or not, and
    # their registers (coinc_* per pattern, coinc_emit; herald: None = the registers at reset)
    coincidence_unit: bool = True
    herald_unit: bool = True
    coinc_mask: list[int] = field(default_factory=list)
    coinc_window_bins: list[int] = field(default_factory=list)
    coinc_min_fold: list[int] = field(default_factory=list)
    coinc_emit: int = 0
    herald: HeraldSettings | None = None

    def __post_init__(self):
        check_geometry(self.channels, self.oversampling, self.fifo_depth, self.output_depth)
        for name in ("coinc_mask", "coinc_window_bins", "coinc_min_fold"):
            values = [int(v) for v in getattr(self, name)]
            if len(values) > PATTERNS:
                raise ValueError(f"{name}: {len(values)} values for {PATTERNS} patterns")
            setattr(self, name, values + [0] * (PATTERNS - len(values)))
        if not 0 <= self.coinc_emit < 1 << PATTERNS:
            raise ValueError(f"coinc_emit {self.coinc_emit}: one bit per pattern, {PATTERNS} patterns")
        if self.herald is None:
            self.herald = herald_registers_at_reset()
        for name, default in (("enable", 1), ("edge", 0), ("delay_bins", 0), ("dead_time_bins", 0)):
            values = list(getattr(self, name)) or [default] * self.channels
            if len(values) != self.channels:
                raise ValueError(f"{name}: {len(values)} values for {self.channels} channels")
            setattr(self, name, [int(v) for v in values])

    @property
    def bin_ps(self) -> int:
        return 10**12 // (self.sys_clk_hz * self.oversampling)

    @classmethod
    def from_lab(cls, fpga, **overrides) -> "TwinConfig":
        """From a LabConfig's ``fpga`` section (ps converted to whole bins)."""
        n = max(ch.index for ch in fpga.channels) + 1
        bin_ps = fpga.bin_ps
        cfg = dict(enable=[0] * n, edge=[0] * n, delay_bins=[0] * n, dead_time_bins=[0] * n)
        for ch in fpga.channels:
            cfg["enable"][ch.index] = int(ch.enabled)
            cfg["edge"][ch.index] = int(ch.edge == "falling")
            cfg["delay_bins"][ch.index] = round(ch.delay_ps / bin_ps)
            cfg["dead_time_bins"][ch.index] = round(ch.dead_time_ps / bin_ps)
        cfg.update(overrides)
        return cls(channels=n, oversampling=fpga.oversampling, sys_clk_hz=fpga.sys_clk_hz, **cfg)


# ---------------------------------------------------------------------------------------
# Input: edges per channel in absolute bins


def edges_from_samples(samples: np.ndarray, config: TwinConfig) -> list[np.ndarray]:
    """Dense sample words [clock, channel] -> the edges (bins) each channel's timestamper sees."""
    n = config.oversampling
    samples = np.asarray(samples)
    bits = ((samples[:, :, None].astype(np.uint16) >> np.arange(n, dtype=np.uint16)) & 1).astype(bool)
    edges = []
    for ch in range(config.channels):
        level = bits[:, ch, :].reshape(-1)
        before = np.empty_like(level)
        before[0] = False  # the previous-word register resets to 0
        before[1:] = level[:-1]
        if config.edge[ch]:
            level, before = ~level, ~before
        found = level & ~before if config.enable[ch] else np.zeros_like(level)
        edges.append(np.flatnonzero(found).astype(np.int64) + config.start_now * n)
    return edges


def edges_from_pulses(time_bins: np.ndarray, channel: np.ndarray, width_bins: int,
                      config: TwinConfig) -> list[np.ndarray]:
    """Detector pulses (rising at ``time_bins``, high for ``width_bins``) -> edges per channel.

    Overlapping pulses on one channel merge into one (the input is a level). ``samples_from_edges``
    turns the same pulses into the dense words the RTL takes, so both see the same input.
    """
    time_bins = np.asarray(time_bins, dtype=np.int64)
    channel = np.asarray(channel)
    out = []
    for ch in range(config.channels):
        t = np.sort(time_bins[channel == ch])
        if len(t):
            # a pulse starts a new high level only if the previous pulse has ended
            ends = np.maximum.accumulate(t + width_bins)
            starts = np.ones(len(t), bool)
            starts[1:] = t[1:] > ends[:-1]
            t_rise = t[starts]
            t_fall = np.append(ends[np.flatnonzero(starts)[1:] - 1], ends[-1])
        else:
            t_rise = t_fall = t
        edge = t_fall if config.edge[ch] else t_rise
        out.append(edge if config.enable[ch] else edge[:0])
    return out


def samples_from_pulses(time_bins, channel, width_bins: int, n_clocks: int, config: TwinConfig) -> np.ndarray:
    """Dense sample words [n_clocks, channels] for pulses (what a testbench drives on the pins)."""
    n = config.oversampling
    level = np.zeros((config.channels, n_clocks * n + 1), np.int32)
    t = np.asarray(time_bins, np.int64) - config.start_now * n
    ch = np.asarray(channel)
    np.add.at(level, (ch, np.clip(t, 0, n_clocks * n)), 1)
    np.add.at(level, (ch, np.clip(t + width_bins, 0, n_clocks * n)), -1)
    high = (np.cumsum(level, axis=1)[:, :-1] > 0).reshape(config.channels, n_clocks, n)
    words = (high * (1 << np.arange(n))).sum(axis=2).T
    return words.astype(np.uint16 if n > 8 else np.uint8)


# ---------------------------------------------------------------------------------------
# Stage 1: timestamper


@numba.njit(cache=True)
def _timestamp(edges, edge_starts, n, dead_time, delay, start_now, t_clock, t_time, t_count, t_gap,
               run_end):
    """Edges of all channels (concatenated, per channel sorted) -> entries in place: channel
    ch's entries run from edge_starts[ch] to run_end[ch] (write clock, time with delay,
    same-clock lost count, gap to the first lost edge)."""
    channels = len(edge_starts) - 1
    shift = 0
    while (1 << shift) < n:  # n is 4 or 8: a shift instead of a division
        shift += 1
    for ch in range(channels):
        m = edge_starts[ch]
        dead_until = np.int64(-(1 << 62))
        k_rec = np.int64(-(1 << 62))
        for i in range(edge_starts[ch], edge_starts[ch + 1]):
            e = edges[i]
            if e < dead_until:
                continue  # inside the dead time: ignored by design, not counted
            k = e >> shift
            if k == k_rec:  # another edge past the dead time in the tag's clock: SAME_CLOCK loss
                if t_count[m - 1] == 0:
                    t_gap[m - 1] = e - (t_time[m - 1] - delay[ch])
                t_count[m - 1] += 1
                continue
            k_rec = k
            dead_until = e + dead_time[ch]
            t_clock[m] = k - start_now + WRITE_LATENCY
            t_time[m] = e + delay[ch]
            t_count[m] = 0
            t_gap[m] = 0
            m += 1
        run_end[ch] = m


def timestamp(edges: list[np.ndarray], config: TwinConfig) -> "Entries":
    """Edges per channel (bins) -> each channel's entries, in write-clock order."""
    edges = [np.asarray(e, np.int64) for e in edges]
    starts = np.cumsum([0] + [len(e) for e in edges]).astype(np.int64)
    # outputs from numpy, not numba: numpy asks for huge pages on large arrays, which saves
    # the page faults that cost as much as the loop itself
    total = int(starts[-1])
    clock = np.empty(total, np.int64)
    time = np.empty(total, np.int64)
    count = np.empty(total, np.int32)
    gap = np.empty(total, np.int32)
    ends = np.empty(len(edges), np.int64)
    dead_time = np.asarray(config.dead_time_bins, np.int64)
    delay = np.asarray(config.delay_bins, np.int64)
    for ch, e in enumerate(edges):  # a call per channel: no concatenated copy of the edges
        _timestamp(e, starts[ch:ch + 2] - starts[ch], config.oversampling, dead_time[ch:ch + 1],
                   delay[ch:ch + 1], config.start_now, clock[starts[ch]:], time[starts[ch]:],
                   count[starts[ch]:], gap[starts[ch]:], ends[ch:ch + 1])
    return Entries(clock, time, count, gap, starts[:-1].copy(), ends + starts[:-1])


@dataclass
class Entries:
    """What the timestampers hand to the channel FIFOs: channel ch's entries are
    ``[start[ch], end[ch])`` of the arrays, in the order they are written."""

    clock: np.ndarray  # clock of the FIFO write (WRITE_LATENCY after the sample word)
    time: np.ndarray  # time_bins, delay included
    count: np.ndarray  # edges lost in the same clock after the tag (SAME_CLOCK)
    gap: np.ndarray  # first lost edge minus the tag, bins
    start: np.ndarray
    end: np.ndarray

    def channel(self, ch: int) -> slice:
        return slice(self.start[ch], self.end[ch])

    def __len__(self) -> int:
        return int((self.end - self.start).sum())


# ---------------------------------------------------------------------------------------
# Stage 2: channel FIFOs, merger, packer, output FIFO

_TIME_LOW = (1 << 32) - 1
NONE_LEFT = np.int64(1) << 62
_COUNT_MAX = (1 << 18) - 1
_REC_TAG, _REC_FIFO_LOSS, _REC_OUTPUT_LOSS, _REC_COINC, _REC_HERALD = 0, 1, 2, 3, 4
HERALD_QUEUE = 4  # keep in step with gateware/packer.py


@numba.njit(cache=True, inline="always")
def _loss_word(channel, reason, count, time):
    return ((np.int64(Kind.LOSS) << 60) | (np.int64(channel) << 54)
            | (((np.int64(reason) << 18) | count) << 32) | (time & _TIME_LOW))


@numba.njit(cache=True, inline="always")
def _next_entry(next_clock, skip, skip_clock):
    """Channel whose next entry is written first (ties: lowest channel), -1 when none is left.
    ``next_clock[ch]``: write clock of channel ch's next entry (NONE_LEFT when done); ``skip``:
    a channel whose next entry counts as taken, so its following one (``skip_clock``) competes."""
    best = -1
    best_clock = NONE_LEFT
    for ch in range(len(next_clock)):
        clock = skip_clock if ch == skip else next_clock[ch]
        if clock < best_clock:
            best = ch
            best_clock = clock
    return best


@numba.njit(cache=True, inline="always")
def _ring(i, cap):
    """``i % cap`` for a ring index 0 <= i < 2 * cap (head < cap plus a fill <= cap), without
    the division that the clock-by-clock path would pay several times a clock."""
    return i - cap if i >= cap else i


BURST_MAX = 16


@numba.njit(cache=True, inline="always")
def _root_take(w, t, ch, c_n, levels, shift, start_now):
    """The clock the merger's root node takes an entry (written to its FIFO at ``w``, time
    ``t``, channel ``ch``) that meets an empty merger tree; the packer takes it one clock later.
    At level L it waits for the bound of its sibling subtree (if that holds any channel)."""
    e0 = (t >> shift) + HORIZON_CLOCKS - start_now + 1  # first clock t < (now - H) * N
    # Level L takes it at max(x_{L-1} + 1, e0 + L - 1) if its sibling subtree holds a channel,
    # else at x_{L-1} + 1 (x_0 + 1 = w + VISIBLE): with more than one channel every channel has
    # such a level (the top one, at least), and the waits add up to one max at the root.
    x = w + VISIBLE
    if c_n > 1:
        x = max(x, e0)
    return x + levels - 1


@numba.njit(cache=True)
def _coinc_take(t, ch, is_tag, masks, windows, folds, op_time, op_seen, op_open, c_counts):
    """The coincidence unit takes an entry: update every pattern, count, return the fire mask."""
    fire = 0
    if not is_tag:
        return fire
    bit = np.int64(1) << ch
    for p in range(len(masks)):
        if (masks[p] & bit) == 0:
            continue
        need = folds[p]
        if need == 0:
            for b in range(16):
                need += (masks[p] >> b) & 1
        outside = (not op_open[p]) or (t - op_time[p] > windows[p])
        before = 0
        for b in range(16):
            before += (op_seen[p] >> b) & 1
        new_seen = bit if outside else (op_seen[p] | bit)
        after = 0
        for b in range(16):
            after += (new_seen >> b) & 1
        if after == need and (outside or before != after):
            fire |= 1 << p
            c_counts[p] += 1
        op_seen[p] = new_seen
        if outside:
            op_time[p] = t
            op_open[p] = True
    return fire


@numba.njit(cache=True)
def _burst(ent_clock, ent_time, ent_count, ent_gap, ent_end, ptr, next_clock, first, depth, shift,
           start_now, c_n, levels, epoch_sent, out_words, n_out, g_ptr, g_clock, g_entry, g_ch,
           stage, h_next, masks, windows, folds, op_time, op_seen, op_open, c_counts, watched):
    """An idle pipeline, an always-ready consumer and a burst of entries that no channel FIFO
    can overflow on (at most depth - 2 of them): the merger then emits them in (time, channel)
    order, whatever their clocks, and the pipeline is idle again by ``bound`` (a safe upper
    bound: every entry could reach the packer by ``base`` on its own, then each takes at most
    4 packer clocks plus the tree's latency). Taken only if the next entry arrives after ``bound``
    and no herald comes before it (``h_next``). ``stage``: 1 with the coincidence unit (one more
    clock, and a skid buffer on either side one each; the caller makes sure it emits no records,
    and its state follows each entry).
    Returns (first idle clock, epoch, words, next channel) or (-1, ...) when it does not apply."""
    limit = min(depth - 2, BURST_MAX)
    for ch in range(c_n):
        g_ptr[ch] = ptr[ch]
        g_clock[ch] = next_clock[ch]
    n_g = 0
    base = np.int64(-(1 << 62))
    ch = first
    bound = base
    while True:
        if n_g == limit:
            return -1, epoch_sent, n_out, first
        i = g_ptr[ch]
        g_entry[n_g] = i
        g_ch[n_g] = ch
        n_g += 1
        ready_at = (_root_take(ent_clock[i], ent_time[i], ch, c_n, levels, shift, start_now)
                    + 1 + 3 * stage)
        base = max(base, ready_at)
        g_ptr[ch] = i + 1
        g_clock[ch] = ent_clock[i + 1] if i + 1 < ent_end[ch] else NONE_LEFT
        bound = base + 4 + 2 * levels + 8 * n_g + 6 * stage
        ch = _next_entry(g_clock, -1, NONE_LEFT)
        if ch < 0 or g_clock[ch] > bound:
            break
    if bound >= h_next:
        return -1, epoch_sent, n_out, first
    # (time, channel) order: insertion sort of a handful
    for a in range(1, n_g):
        e, c = g_entry[a], g_ch[a]
        b = a - 1
        while b >= 0 and (ent_time[g_entry[b]] > ent_time[e]
                          or (ent_time[g_entry[b]] == ent_time[e] and g_ch[b] > c)):
            g_entry[b + 1] = g_entry[b]
            g_ch[b + 1] = g_ch[b]
            b -= 1
        g_entry[b + 1] = e
        g_ch[b + 1] = c
    for a in range(n_g):
        e, c = g_entry[a], g_ch[a]
        t = ent_time[e]
        if stage and (watched >> c) & 1:  # a channel in no pattern leaves every pattern as it is
            _coinc_take(t, c, True, masks, windows, folds, op_time, op_seen, op_open, c_counts)
        if (t >> 32) != epoch_sent:
            epoch_sent = t >> 32
            out_words[n_out] = (np.int64(Kind.EPOCH) << 60) | epoch_sent
            n_out += 1
        out_words[n_out] = (np.int64(Kind.TAG) << 60) | (np.int64(c) << 54) | (t & _TIME_LOW)
        n_out += 1
        if ent_count[e] != 0:
            t2 = t + ent_gap[e]
            if (t2 >> 32) != epoch_sent:
                epoch_sent = t2 >> 32
                out_words[n_out] = (np.int64(Kind.EPOCH) << 60) | epoch_sent
                n_out += 1
            out_words[n_out] = _loss_word(c, LossReason.SAME_CLOCK, ent_count[e], t2)
            n_out += 1
    for c in range(c_n):
        ptr[c] = g_ptr[c]
        next_clock[c] = g_clock[c]
    return bound + 1, epoch_sent, n_out, ch


@numba.njit(cache=True)
def _backend(ent_clock, ent_time, ent_count, ent_gap, ent_start, ent_end, channels, n, depth,
             q_depth, start_now, n_clocks, ready, header, out_words, counters, direct,
             stage, masks, windows, folds, emit, c_counts, h_clock, h_ch, h_aux, h_time, h_lost):
    """Returns (words written to out_words, clocks simulated). ``n_clocks`` < 0: until drained.

    ``stage``: the coincidence unit, with a skid buffer on either side, sits between the merger
    and the packer (patterns ``masks``, ``windows``, ``folds``, ``emit``; counts into
    ``c_counts``). Heralds: HERALD records valid in clock ``h_clock`` (sorted) with their channel,
    aux and time, into the packer's herald queue (a full queue counts in ``h_lost[0]``).

    ``direct``: the consumer is always ready and the run goes until drained. The output FIFO
    then never holds more than one word in its inner queue, so it never refuses a word and never
    reorders: words are taken as written, and an entry that meets an idle pipeline and leaves it
    before the next one arrives is handled in one step."""
    c_n = channels
    cap = depth - 1  # SyncFIFOBuffered: an inner FIFO of depth - 1 and an output register
    inner_time = np.zeros((c_n, cap), np.int64)
    inner_loss = np.zeros((c_n, cap), np.int64)
    inner_count = np.zeros((c_n, cap), np.int64)
    inner_gap = np.zeros((c_n, cap), np.int64)
    inner_head = np.zeros(c_n, np.int64)
    inner_n = np.zeros(c_n, np.int64)
    head_valid = np.zeros(c_n, np.bool_)
    head_time = np.zeros(c_n, np.int64)
    head_loss = np.zeros(c_n, np.int64)
    head_count = np.zeros(c_n, np.int64)
    head_gap = np.zeros(c_n, np.int64)
    pend = np.zeros(c_n, np.int64)
    pend_time = np.zeros(c_n, np.int64)
    arr_valid = np.zeros(c_n, np.bool_)
    arr_time = np.zeros(c_n, np.int64)
    arr_count = np.zeros(c_n, np.int64)
    arr_gap = np.zeros(c_n, np.int64)

    # the merger's tree: level lv (1..levels) holds 2**(levels - lv) nodes, node j of level lv
    # is nd = off[lv] + j and merges children 2j and 2j + 1 of level lv - 1 (level 0: the
    # channel FIFO heads). Each node: two slots (0 is its head), v0/v1 say which hold an entry.
    levels = 1
    while (1 << levels) < c_n:
        levels += 1
    off = np.zeros(levels + 2, np.int64)
    for lv in range(1, levels + 1):
        off[lv + 1] = off[lv] + (1 << (levels - lv))
    n_nodes = off[levels + 1]
    nd_present = np.zeros(n_nodes, np.bool_)
    nd_v0 = np.zeros(n_nodes, np.bool_)
    nd_v1 = np.zeros(n_nodes, np.bool_)
    nd_time = np.zeros((n_nodes, 2), np.int64)
    nd_loss = np.zeros((n_nodes, 2), np.int64)
    nd_count = np.zeros((n_nodes, 2), np.int64)
    nd_gap = np.zeros((n_nodes, 2), np.int64)
    nd_ch = np.zeros((n_nodes, 2), np.int64)
    nd_take = np.full(n_nodes, -1, np.int64)  # child side taken in this clock (0, 1) or -1
    for lv in range(1, levels + 1):
        for j in range(1 << (levels - lv)):
            nd_present[off[lv] + j] = (j << lv) < c_n
    root = off[levels]
    n_full = 0  # nodes holding an entry
    heads_in = 0  # channel FIFO heads valid at the start of the clock
    mh_valid = False

    # the coincidence unit: the entry in hand, records owed, each pattern's open window
    p_n = len(masks)
    cb_busy = False
    cb_sent = False
    cb_owed = 0
    cb_time = np.int64(0)
    cb_loss = 0
    cb_count = np.int64(0)
    cb_gap = np.int64(0)
    cb_ch = 0
    op_time = np.zeros(p_n, np.int64)
    op_seen = np.zeros(p_n, np.int64)
    op_open = np.zeros(p_n, np.bool_)
    watched = np.int64(0)  # channels in some pattern
    for p in range(p_n):
        watched |= masks[p]
    # the skid buffer between the unit and the packer (gateware/skid.py): a two-entry FIFO,
    # each entry holding what the packer takes from it
    sk_n = 0
    sk_h = 0
    sk_kind = np.zeros(2, np.int64)
    sk_ch = np.zeros(2, np.int64)
    sk_wch = np.zeros(2, np.int64)
    sk_aux = np.zeros(2, np.int64)
    sk_time = np.zeros(2, np.int64)
    sk_count = np.zeros(2, np.int64)
    sk_gap = np.zeros(2, np.int64)
    # the skid buffer between the merger's root and the unit: a two-entry FIFO of merged entries
    ms_n = 0
    ms_h = 0
    ms_time = np.zeros(2, np.int64)
    ms_loss = np.zeros(2, np.int64)
    ms_count = np.zeros(2, np.int64)
    ms_gap = np.zeros(2, np.int64)
    ms_ch = np.zeros(2, np.int64)

    # the packer's herald queue (SyncFIFOBuffered, depth HERALD_QUEUE)
    hq_cap = HERALD_QUEUE - 1
    hq_ch = np.zeros(hq_cap, np.int64)
    hq_aux = np.zeros(hq_cap, np.int64)
    hq_time = np.zeros(hq_cap, np.int64)
    hq_h = 0
    hq_n = 0
    hq_valid = False
    hq_head_ch = 0
    hq_head_aux = np.int64(0)
    hq_head_time = np.int64(0)
    h_ptr = 0
    n_h = len(h_clock)
    fast = direct and emit == 0  # the one-step paths: no coincidence records in the stream

    header_sent = False
    epoch_sent = np.int64(0)
    busy = False
    second = False
    kind = 0
    p_ch = 0
    p_wch = 0
    p_aux = np.int64(0)
    p_time = np.int64(0)
    p_count = np.int64(0)
    p_gap = np.int64(0)
    out_pend = np.zeros(c_n, np.int64)
    out_pend_time = np.zeros(c_n, np.int64)
    n_out_pend = 0  # channels with out_pend != 0

    q_cap = q_depth - 1
    q_buf = np.zeros(q_cap, np.int64)
    q_head = 0
    q_n = 0
    q_valid = False
    q_word = np.int64(0)
    n_out = 0

    ptr = ent_start.copy()
    g_ptr = np.empty(c_n, np.int64)  # scratch for _burst
    g_clock = np.empty(c_n, np.int64)
    g_entry = np.empty(BURST_MAX, np.int64)
    g_ch = np.empty(BURST_MAX, np.int64)
    next_clock = np.empty(c_n, np.int64)
    for ch in range(c_n):
        next_clock[ch] = ent_clock[ptr[ch]] if ptr[ch] < ent_end[ch] else NONE_LEFT
    shift = 0
    while (1 << shift) < n:
        shift += 1
    n_ready = len(ready)
    c = np.int64(0)
    limit = n_clocks if n_clocks >= 0 else np.int64(1) << 62
    while c < limit:
        now = start_now + c
        # ---- arrivals at the FIFO write ports in this clock
        for ch in range(c_n):
            arr_valid[ch] = next_clock[ch] == c
            if arr_valid[ch]:
                i = ptr[ch]
                arr_time[ch] = ent_time[i]
                arr_count[ch] = ent_count[i]
                arr_gap[ch] = ent_gap[i]
                ptr[ch] = i + 1
                next_clock[ch] = ent_clock[i + 1] if i + 1 < ent_end[ch] else NONE_LEFT

        # ---- merger tree: every node's decision from this clock's registers
        moving = n_full > 0 or heads_in > 0
        if moving:
            for lv in range(1, levels + 1):
                bound = (now - HORIZON_CLOCKS - (lv - 1)) * n
                for j in range(1 << (levels - lv)):
                    nd = off[lv] + j
                    nd_take[nd] = -1
                    if not nd_present[nd] or nd_v1[nd]:
                        continue
                    ka = 2 * j
                    kb = ka + 1
                    pb = (kb << (lv - 1)) < c_n
                    if lv == 1:
                        va = head_valid[ka]
                        vb = pb and head_valid[kb]
                        ta = head_time[ka]
                        tb = head_time[kb] if pb else np.int64(0)
                    else:
                        ca = off[lv - 1] + ka
                        va = nd_v0[ca]
                        ta = nd_time[ca, 0]
                        vb = False
                        tb = np.int64(0)
                        if pb:
                            cb = off[lv - 1] + kb
                            vb = nd_v0[cb]
                            tb = nd_time[cb, 0]
                    if va and ((not pb) or (ta <= tb if vb else ta < bound)):
                        nd_take[nd] = 0
                    elif vb and (ta > tb if va else tb < bound):
                        nd_take[nd] = 1
        mh_valid = nd_v0[root]

        # ---- coincidence unit: what it shows the skid buffer, which shows the packer its head
        mk_rec = False
        mk_pat = 0
        if stage:
            mk_valid = sk_n > 0
            mk_rec = cb_busy and cb_sent
            if mk_rec:
                while not (cb_owed >> mk_pat) & 1:
                    mk_pat += 1
        else:
            mk_valid = mh_valid

        # ---- packer
        room = q_n != q_cap
        level = q_n + (1 if q_valid else 0)
        w_en = False
        w_word = np.int64(0)
        advance = False
        drop = False
        write_epoch = False
        rec_time = p_time + p_gap if second else p_time
        if not header_sent:
            w_en = True
            w_word = header
        elif busy:
            if not room:
                drop = True
                advance = True
            elif (rec_time >> 32) != epoch_sent:
                w_en = True
                write_epoch = True
                w_word = (np.int64(Kind.EPOCH) << 60) | (rec_time >> 32)
            else:
                w_en = True
                advance = True
                if second:
                    w_word = _loss_word(p_ch, LossReason.SAME_CLOCK, p_count, rec_time)
                elif kind == _REC_TAG:
                    w_word = (np.int64(Kind.TAG) << 60) | (np.int64(p_ch) << 54) | (rec_time & _TIME_LOW)
                elif kind == _REC_FIFO_LOSS:
                    w_word = _loss_word(p_ch, LossReason.CHANNEL_FIFO, p_count, rec_time)
                elif kind == _REC_OUTPUT_LOSS:
                    w_word = _loss_word(p_ch, LossReason.OUTPUT, p_count, rec_time)
                else:
                    w_word = ((np.int64(Kind.COINCIDENCE if kind == _REC_COINC else Kind.HERALD) << 60)
                              | (np.int64(p_wch) << 54) | (p_aux << 32) | (rec_time & _TIME_LOW))
        has_second = kind == _REC_TAG and p_count != 0
        finishing = advance and not ((not second) and has_second)
        take = header_sent and ((not busy) or finishing)
        f_ch = -1
        if n_out_pend:
            for ch in range(c_n):
                if out_pend[ch] != 0:
                    f_ch = ch
                    break
        take_herald = take and hq_valid
        flush = take and not hq_valid and f_ch >= 0 and level <= q_depth - 4
        pop = mk_valid and take and not hq_valid and not flush  # the packer takes a marked record
        rd = q_valid and (c >= n_ready or ready[c])
        drop_count = p_count if (second or kind == _REC_FIFO_LOSS or kind == _REC_OUTPUT_LOSS) \
            else np.int64(1)
        if stage:
            moved = cb_busy and sk_n < 2  # the skid buffer's ready: a register
            left_after = (cb_owed & (cb_owed - 1)) if cb_sent else cb_owed
            cb_finishing = moved and left_after == 0 and (cb_sent or cb_owed == 0)
            cb_take = (not cb_busy) or cb_finishing
            unit_pop = cb_take and ms_n > 0  # the unit takes the front skid buffer's head
            root_pop = mh_valid and ms_n < 2  # the front one's ready: a register
        else:
            unit_pop = False
            root_pop = pop

        # ---- output FIFO
        if direct:
            if w_en:
                out_words[n_out] = w_word
                n_out += 1
            do_w = False
            rd = False
        if rd:
            out_words[n_out] = q_word
            n_out += 1
        w_idx = _ring(q_head + q_n, q_cap)
        if not direct:
            do_w = w_en and room
        if q_n > 0 and ((not q_valid) or rd):
            q_word = q_buf[q_head]
            q_head = _ring(q_head + 1, q_cap)
            q_n -= 1
            q_valid = True
        elif rd:
            q_valid = False
        if do_w:
            q_buf[w_idx] = w_word
            q_n += 1

        # ---- packer state
        if drop:
            counters[3, p_ch] += drop_count
        chunk = np.int64(0)
        if flush:
            chunk = min(out_pend[f_ch], _COUNT_MAX)
            out_pend[f_ch] -= chunk
            if out_pend[f_ch] == 0:
                n_out_pend -= 1
        if drop:
            left = out_pend[p_ch]
            if left == 0:
                out_pend_time[p_ch] = rec_time
                n_out_pend += 1
            out_pend[p_ch] = left + drop_count
        if not header_sent:
            header_sent = True  # the output FIFO is empty at reset
        if write_epoch:
            epoch_sent = rec_time >> 32
        if advance:
            second = (not second) and has_second
            if finishing:
                busy = False
        if take_herald:
            busy = True
            second = False
            kind = _REC_HERALD
            p_ch = hq_head_ch
            p_wch = hq_head_ch
            p_aux = hq_head_aux
            p_time = hq_head_time
            p_count = 0
            p_gap = 0
        elif flush:
            busy = True
            second = False
            kind = _REC_OUTPUT_LOSS
            p_ch = f_ch
            p_wch = f_ch
            p_time = out_pend_time[f_ch]
            p_count = chunk
            p_gap = 0
        elif pop and stage:
            busy = True
            second = False
            kind = sk_kind[sk_h]
            p_ch = sk_ch[sk_h]
            p_wch = sk_wch[sk_h]
            p_aux = sk_aux[sk_h]
            p_time = sk_time[sk_h]
            p_count = sk_count[sk_h]
            p_gap = sk_gap[sk_h]
        elif pop:
            busy = True
            second = False
            kind = _REC_FIFO_LOSS if nd_loss[root, 0] else _REC_TAG
            p_ch = nd_ch[root, 0]
            p_wch = p_ch
            p_time = nd_time[root, 0]
            p_count = nd_count[root, 0]
            p_gap = nd_gap[root, 0]

        # ---- the herald queue: this clock's record written, the head refilled
        h_arr = h_ptr < n_h and h_clock[h_ptr] == c
        hq_w_rdy = hq_n != hq_cap
        hq_w = _ring(hq_h + hq_n, hq_cap)
        if hq_n > 0 and ((not hq_valid) or take_herald):
            hq_head_ch = hq_ch[hq_h]
            hq_head_aux = hq_aux[hq_h]
            hq_head_time = hq_time[hq_h]
            hq_valid = True
            hq_h = _ring(hq_h + 1, hq_cap)
            hq_n -= 1
        elif take_herald:
            hq_valid = False
        if h_arr:
            if hq_w_rdy:
                hq_ch[hq_w] = h_ch[h_ptr]
                hq_aux[hq_w] = h_aux[h_ptr]
                hq_time[hq_w] = h_time[h_ptr]
                hq_n += 1
            else:
                h_lost[0] += 1
            h_ptr += 1

        # ---- the skid buffer: the head taken, what the unit shows written
        if stage:
            if pop:
                sk_h ^= 1
                sk_n -= 1
            if moved:
                k = sk_h ^ sk_n
                sk_ch[k] = cb_ch
                if mk_rec:
                    sk_kind[k] = _REC_COINC
                    sk_wch[k] = mk_pat
                    sk_aux[k] = op_seen[mk_pat]
                    sk_time[k] = op_time[mk_pat]
                    sk_count[k] = 0
                    sk_gap[k] = 0
                else:
                    sk_kind[k] = _REC_FIFO_LOSS if cb_loss else _REC_TAG
                    sk_wch[k] = cb_ch
                    sk_time[k] = cb_time
                    sk_count[k] = cb_count
                    sk_gap[k] = cb_gap
                sk_n += 1

        # ---- the coincidence unit's state (it reads the root's head before the tree moves)
        if stage:
            if moved:
                if cb_sent:
                    cb_owed &= cb_owed - 1
                cb_sent = True
            if cb_finishing:
                cb_busy = False
            if unit_pop:
                cb_time = ms_time[ms_h]
                cb_loss = ms_loss[ms_h]
                cb_count = ms_count[ms_h]
                cb_gap = ms_gap[ms_h]
                cb_ch = ms_ch[ms_h]
                ms_h ^= 1
                ms_n -= 1
                fire = _coinc_take(cb_time, cb_ch, cb_loss == 0, masks, windows, folds,
                                   op_time, op_seen, op_open, c_counts)
                cb_busy = True
                cb_sent = False
                cb_owed = fire & emit
            if root_pop:
                k = ms_h ^ ms_n
                ms_time[k] = nd_time[root, 0]
                ms_loss[k] = nd_loss[root, 0]
                ms_count[k] = nd_count[root, 0]
                ms_gap[k] = nd_gap[root, 0]
                ms_ch[k] = nd_ch[root, 0]
                ms_n += 1

        # ---- merger tree nodes, the root first (a node reads its children before they change)
        if moving:
            for lv in range(levels, 0, -1):
                for j in range(1 << (levels - lv)):
                    nd = off[lv] + j
                    if not nd_present[nd]:
                        continue
                    if lv == levels:
                        nd_pop = root_pop
                    else:
                        nd_pop = nd_take[off[lv + 1] + (j >> 1)] == (j & 1)
                    side = nd_take[nd]
                    push = side >= 0
                    if not (push or nd_pop):
                        continue
                    dst = 0
                    if nd_v1[nd]:
                        if nd_pop:
                            nd_time[nd, 0] = nd_time[nd, 1]
                            nd_loss[nd, 0] = nd_loss[nd, 1]
                            nd_count[nd, 0] = nd_count[nd, 1]
                            nd_gap[nd, 0] = nd_gap[nd, 1]
                            nd_ch[nd, 0] = nd_ch[nd, 1]
                            nd_v1[nd] = False
                        continue
                    if nd_v0[nd]:
                        if push and not nd_pop:
                            dst = 1
                            nd_v1[nd] = True
                        elif not push:
                            nd_v0[nd] = False
                            n_full -= 1
                            continue
                    else:
                        nd_v0[nd] = True
                        n_full += 1
                    k = 2 * j + side
                    if lv == 1:
                        nd_time[nd, dst] = head_time[k]
                        nd_loss[nd, dst] = head_loss[k]
                        nd_count[nd, dst] = head_count[k]
                        nd_gap[nd, dst] = head_gap[k]
                        nd_ch[nd, dst] = k
                    else:
                        ck = off[lv - 1] + k
                        nd_time[nd, dst] = nd_time[ck, 0]
                        nd_loss[nd, dst] = nd_loss[ck, 0]
                        nd_count[nd, dst] = nd_count[ck, 0]
                        nd_gap[nd, dst] = nd_gap[ck, 0]
                        nd_ch[nd, dst] = nd_ch[ck, 0]

        # ---- channel FIFOs
        fifo_busy = False
        heads = 0
        for ch in range(c_n):
            r_en = moving and nd_take[off[1] + (ch >> 1)] == (ch & 1)
            if not (arr_valid[ch] or r_en or pend[ch] != 0 or inner_n[ch] != 0):
                if head_valid[ch]:
                    heads += 1
                continue  # nothing moves in this channel
            w_rdy = inner_n[ch] != cap
            arriving = (1 + arr_count[ch]) if arr_valid[ch] else 0
            write = False
            wt = np.int64(0)
            wl = 0
            wc = np.int64(0)
            wg = np.int64(0)
            if pend[ch] != 0:
                if w_rdy:
                    write = True
                    take_n = min(pend[ch], _COUNT_MAX)
                    wt = pend_time[ch]
                    wl = 1
                    wc = take_n
                    rest = pend[ch] - take_n
                    if rest == 0 and arr_valid[ch]:
                        pend_time[ch] = arr_time[ch]
                    pend[ch] = rest + arriving
                else:
                    pend[ch] += arriving
                counters[2, ch] += arriving
            elif arr_valid[ch]:
                if w_rdy:
                    write = True
                    wt = arr_time[ch]
                    wc = arr_count[ch]
                    wg = arr_gap[ch]
                else:
                    pend[ch] = arriving
                    pend_time[ch] = arr_time[ch]
                    counters[2, ch] += arriving
            w_idx = _ring(inner_head[ch] + inner_n[ch], cap)
            if inner_n[ch] > 0 and ((not head_valid[ch]) or r_en):
                h = inner_head[ch]
                head_time[ch] = inner_time[ch, h]
                head_loss[ch] = inner_loss[ch, h]
                head_count[ch] = inner_count[ch, h]
                head_gap[ch] = inner_gap[ch, h]
                head_valid[ch] = True
                inner_head[ch] = _ring(h + 1, cap)
                inner_n[ch] -= 1
            elif r_en:
                head_valid[ch] = False
            if write:
                inner_time[ch, w_idx] = wt
                inner_loss[ch, w_idx] = wl
                inner_count[ch, w_idx] = wc
                inner_gap[ch, w_idx] = wg
                inner_n[ch] += 1
            if inner_n[ch] != 0 or pend[ch] != 0:
                fifo_busy = True
            if head_valid[ch]:
                heads += 1

        # ---- next clock; skip clocks in which nothing can change
        c_next = c + 1
        heads_in = heads
        quiet = (header_sent and not busy and q_n == 0 and not q_valid and n_full == 0
                 and not fifo_busy and n_out_pend == 0 and not cb_busy and sk_n == 0 and ms_n == 0
                 and not hq_valid
                 and hq_n == 0)
        nxt = -1
        next_arrival = limit
        h_next = h_clock[h_ptr] if h_ptr < n_h else NONE_LEFT
        if quiet:
            nxt = _next_entry(next_clock, -1, NONE_LEFT)
            next_arrival = next_clock[nxt] if nxt >= 0 else limit
            next_arrival = min(next_arrival, h_next)
        if quiet and fast and heads == 0:
            # Entries that find the pipeline idle and leave it before the next one arrives.
            while nxt >= 0:
                e = ptr[nxt]
                w = ent_clock[e]
                t = ent_time[e]
                take_at = _root_take(w, t, nxt, c_n, levels, shift, start_now) + 1 + 3 * stage  # packer
                k = 1
                if (t >> 32) != epoch_sent:
                    k += 1
                if ent_count[e] != 0:
                    k += 1
                    if ((t + ent_gap[e]) >> 32) != (t >> 32):
                        k += 1
                done = take_at + k  # then k words
                if done >= h_next:
                    break  # a herald reaches the packer meanwhile: clock by clock
                following = ent_clock[e + 1] if e + 1 < ent_end[nxt] else NONE_LEFT
                after = _next_entry(next_clock, nxt, following)
                if after >= 0 and (following if after == nxt else next_clock[after]) <= done:
                    # A small burst: handled at once if it clears before the next arrival.
                    res = _burst(ent_clock, ent_time, ent_count, ent_gap, ent_end, ptr, next_clock,
                                 nxt, depth, shift, start_now, c_n, levels, epoch_sent, out_words, n_out,
                                 g_ptr, g_clock, g_entry, g_ch, stage, h_next, masks, windows, folds,
                                 op_time, op_seen, op_open, c_counts, watched)
                    if res[0] < 0:
                        break
                    c_next, epoch_sent, n_out, nxt = res
                    continue
                ch = nxt
                if stage and (watched >> ch) & 1:
                    _coinc_take(t, ch, True, masks, windows, folds, op_time, op_seen, op_open,
                                c_counts)
                if (t >> 32) != epoch_sent:
                    epoch_sent = t >> 32
                    out_words[n_out] = (np.int64(Kind.EPOCH) << 60) | epoch_sent
                    n_out += 1
                out_words[n_out] = (np.int64(Kind.TAG) << 60) | (np.int64(ch) << 54) | (t & _TIME_LOW)
                n_out += 1
                if ent_count[e] != 0:
                    t2 = t + ent_gap[e]
                    if (t2 >> 32) != epoch_sent:
                        epoch_sent = t2 >> 32
                        out_words[n_out] = (np.int64(Kind.EPOCH) << 60) | epoch_sent
                        n_out += 1
                    out_words[n_out] = _loss_word(ch, LossReason.SAME_CLOCK, ent_count[e], t2)
                    n_out += 1
                ptr[nxt] += 1
                next_clock[nxt] = following
                nxt = after
                c_next = done + 1
            next_arrival = min(next_clock[nxt] if nxt >= 0 else limit, h_next)
        if quiet and next_arrival > c_next:
            if heads == 0:
                if nxt < 0 and n_clocks < 0 and h_ptr >= n_h:
                    c = c_next
                    break
                c_next = next_arrival
            else:
                # heads wait at the leaf nodes for their sibling's horizon: the first clock
                # one of them can move (now, if a leaf has both heads or no sibling)
                eligible = NONE_LEFT
                for ch in range(c_n):
                    if head_valid[ch]:
                        sib = ch ^ 1
                        if sib >= c_n or head_valid[sib]:
                            eligible = c_next
                            break
                        eligible = min(eligible,
                                       (head_time[ch] >> shift) + HORIZON_CLOCKS - start_now + 1)
                c_next = max(c_next, min(eligible, next_arrival))
        c = c_next
    return n_out, c


@dataclass
class TwinResult:
    words: np.ndarray  # uint64, in the order the stream delivers them
    clocks: int  # clocks simulated
    counters: dict[str, np.ndarray]  # per channel, as the registers would read
    entries: int  # tags the timestampers produced
    unit_counters: dict[str, np.ndarray] = field(default_factory=dict)  # coinc_*, herald_*
    heralds: object = None  # sim.twin_herald.HeraldResult: every herald's pin clock, attempt, ...


class Twin:
    """The gateware's twin. ``run`` takes sample words or edges and returns the word stream."""

    def __init__(self, config: TwinConfig | None = None):
        self.config = config or TwinConfig()

    def run(self, *, samples: np.ndarray | None = None, edges: list[np.ndarray] | None = None,
            n_clocks: int | None = None, ready: np.ndarray | None = None) -> TwinResult:
        """Simulate ``n_clocks`` clocks from reset (default: the sample count, or until drained
        for edges). ``ready[c]``: the consumer takes a word in clock c (missing: always ready)."""
        cfg = self.config
        if (samples is None) == (edges is None):
            raise ValueError("give either samples or edges")
        if samples is not None:
            edges = edges_from_samples(samples, cfg)
            if n_clocks is None:
                n_clocks = len(samples)
        entries = timestamp(edges, cfg)
        counters = np.zeros((4, cfg.channels), np.int64)
        end = entries.end.copy()
        if n_clocks is not None:  # entries written after the last clock never happen
            for ch in range(cfg.channels):
                sl = entries.channel(ch)
                end[ch] = entries.start[ch] + np.searchsorted(entries.clock[sl], n_clocks)
        for ch in range(cfg.channels):
            counters[0, ch] = end[ch] - entries.start[ch]
            counters[1, ch] = int(entries.count[entries.start[ch]:end[ch]].sum())
        total = int((end - entries.start).sum())
        ready_arr = np.ones(0, np.bool_) if ready is None else np.ascontiguousarray(ready, np.bool_)
        if cfg.herald_unit:
            res = heralds(entries, cfg.herald, channels=cfg.channels, oversampling=cfg.oversampling,
                          delay_bins=cfg.delay_bins, n_clocks=n_clocks, start_now=cfg.start_now)
            h_clock = res.clock.astype(np.int64)
            h_ch = res.channel.astype(np.int64)
            h_aux = (res.outcome.astype(np.int64) << ATTEMPT_BITS) | res.attempt.astype(np.int64)
            h_time = res.time.astype(np.int64)
        else:
            res = None
            h_clock = h_ch = h_aux = h_time = np.zeros(0, np.int64)
        stage = bool(cfg.coincidence_unit)
        emit = cfg.coinc_emit if stage else 0
        records_per_entry = 2 * bin(emit).count("1")
        out = np.empty((8 + records_per_entry) * total + 2 * len(h_clock) + 64, np.int64)
        header = np.array([header_word(cfg.bin_ps, cfg.channels)], np.uint64).view(np.int64)[0]
        c_counts = np.zeros(PATTERNS, np.int64)
        h_lost = np.zeros(1, np.int64)
        n_out, clocks = _backend(entries.clock, entries.time, entries.count, entries.gap,
                                 entries.start, end, cfg.channels, cfg.oversampling,
                                 cfg.fifo_depth, cfg.output_depth, cfg.start_now,
                                 -1 if n_clocks is None else n_clocks, ready_arr, header, out,
                                 counters, n_clocks is None and ready is None,
                                 stage, np.asarray(cfg.coinc_mask, np.int64),
                                 np.asarray(cfg.coinc_window_bins, np.int64),
                                 np.asarray(cfg.coinc_min_fold, np.int64), emit, c_counts,
                                 h_clock, h_ch, h_aux, h_time, h_lost)
        unit = {}
        if stage:
            unit["coinc_count"] = c_counts
        if res is not None:
            hc = res.counters
            unit.update({
                "herald_attempt_count": np.array([hc["herald_attempt_count"]], np.int64),
                "herald_success_count": np.array(hc["herald_success_count"], np.int64),
                "herald_veto_count": np.array([hc["herald_veto_count"]], np.int64),
                "herald_late_count": np.array([hc["herald_late_count"]], np.int64),
                "herald_lost_count": h_lost,
            })
        return TwinResult(
            words=out[:n_out].view(np.uint64),
            clocks=int(clocks),
            counters={name: counters[i] for i, name in enumerate(COUNTER_NAMES)},
            entries=total,
            unit_counters=unit,
            heralds=res,
        )
