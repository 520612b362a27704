"""Live measurements on decoded event batches: count rates, coincidences, correlation (g2)
histograms with CAR, herald rates; the same kernels on a recorded HDF5 file, in chunks.

Every measurement is a small object that is fed batch after batch (``add(events)`` with
EVENT_DTYPE batches, or ``add_tags(time_ps, channel)`` with tag arrays such as a recording's)
and carries its state across batches, so a result never depends on where a stream was cut:
a coincidence window or a correlation pair that straddles two batches is counted exactly once.
Only TAG events are detector clicks; the other kinds are skipped (HeraldRate reads HERALDs).

Inputs must be time-ordered in their tags (the gateware's merger guarantees it; equal
timestamps are allowed). docs/measurements.md states what each measurement computes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from numba import njit

from qnode.firmware.events import HERALD_ATTEMPT_BITS, MAX_CHANNELS, Kind

from .recorder import recorded_events

TAG = int(Kind.TAG)
HERALD = int(Kind.HERALD)
NO_TIME = np.iinfo(np.int64).min  # "no tag seen yet" in first_ps / last_ps
FILE_CHUNK_TAGS = 1 << 22  # 4 Mi tags (48 MiB of int64 + uint8) per read: a multiple of the HDF5 chunk

_NO_KIND = np.zeros(0, np.uint8)  # the kind array for tag-only input (kinds are not read)


def _columns(events: np.ndarray):
    return events["time_ps"], events["channel"], events["kind"]


# ---------------------------------------------------------------------------------------
# Count rates


@njit(cache=True, nogil=True)
def _count_tags(time_ps, channel, kind, all_tags, counts, span):
    """counts[ch] += tags of ch; span = [first tag's time, latest tag time] in ps."""
    first = span[0]
    last = span[1]
    for i in range(time_ps.shape[0]):
        if not all_tags and kind[i] != 1:
            continue
        counts[channel[i]] += 1
        t = time_ps[i]
        if first == NO_TIME:
            first = t
        # the latest, not the last: an out-of-order tag (a crashed file's -1 ps) must not
        # shorten the span
        last = t if t > last else last
    span[0] = first
    span[1] = last


class CountRates:
    """Detector clicks per channel and the time they span.

    ``counts[ch]`` is the number of TAG events on channel ``ch`` so far; ``rates_hz()`` divides
    by the span from the first to the last tag (or by a ``duration_ps`` the caller knows, such
    as the batch length or a file's acquisition duration).
    """

    def __init__(self, channels: int = MAX_CHANNELS):
        # one counter for every uint8 value, so a file's stray channel byte cannot write
        # outside the array; counts shows the first `channels`
        self._counts = np.zeros(256, np.int64)
        self.counts = self._counts[:channels]
        self._span = np.array([NO_TIME, NO_TIME], np.int64)

    def add(self, events: np.ndarray) -> np.ndarray:
        """Count one EVENT_DTYPE batch; returns this batch's counts per channel."""
        before = self.counts.copy()
        _count_tags(*_columns(events), False, self._counts, self._span)
        return self.counts - before

    def add_tags(self, time_ps: np.ndarray, channel: np.ndarray) -> None:
        _count_tags(time_ps, channel, _NO_KIND, True, self._counts, self._span)

    @property
    def duration_ps(self) -> int:
        """From the first tag to the last one seen (0 before two tags)."""
        return 0 if self._span[0] == NO_TIME else int(self._span[1] - self._span[0])

    def rates_hz(self, duration_ps: int | None = None) -> np.ndarray:
        duration_ps = self.duration_ps if duration_ps is None else duration_ps
        if duration_ps <= 0:
            return np.zeros(len(self.counts))
        return self.counts / (duration_ps * 1e-12)


# ---------------------------------------------------------------------------------------
# Coincidences


@dataclass(frozen=True)
class CoincidencePattern:
    """A set of channels that must click together.

    A coincidence window opens at a click on any of ``channels`` when no window is open for
    this pattern, and holds every click of the pattern's channels up to and including
    ``window_ps`` later; the next click after that opens the next window (as a gateware
    coincidence unit does: each click belongs to at most one window). A window counts once
    as a coincidence when at least ``min_fold`` distinct channels clicked in it (``None``:
    all of them), so 2-of-3 counts a window with 2 or 3 of the channels.
    """

    channels: tuple[int, ...]
    window_ps: int
    min_fold: int | None = None

    def __post_init__(self):
        channels = tuple(int(c) for c in self.channels)
        object.__setattr__(self, "channels", channels)
        if not channels or len(set(channels)) != len(channels):
            raise ValueError(f"pattern channels {channels}: need one or more distinct channels")
        if not all(0 <= c < MAX_CHANNELS for c in channels):
            raise ValueError(f"pattern channels {channels}: channels are 0..{MAX_CHANNELS - 1}")
        if self.window_ps < 0:
            raise ValueError(f"window_ps {self.window_ps} must be >= 0")
        if not 1 <= self.fold <= len(channels):
            raise ValueError(f"min_fold {self.min_fold} outside 1..{len(channels)}")

    @property
    def fold(self) -> int:
        return len(self.channels) if self.min_fold is None else int(self.min_fold)


@njit(cache=True, nogil=True)
def _coincidences(time_ps, channel, kind, all_tags, member, window_ps, min_fold,
                  open_ps, mask, fold, counts, order):
    """Pattern state: open_ps = the click that opened the window, mask = channels seen in it,
    fold = their number (0: no window open yet). A window counts when fold reaches min_fold,
    so once, whatever arrives later and whichever batch it arrives in.
    order = [last tag time, tags skipped for arriving out of time order].

    One pass per pattern with its state in registers: one pattern runs at ~500 M tags/s, where
    a single pass updating every pattern's state in memory ran at ~130 (measured on the
    bench/host.py input when this was written).
    """
    one = np.uint64(1)
    last_seen = order[0]
    late_seen = order[1]
    for p in range(window_ps.shape[0]):
        opened = open_ps[p]
        seen = mask[p]
        n_fold = fold[p]
        n = counts[p]
        window = window_ps[p]
        need = min_fold[p]
        last = order[0]
        late = order[1]
        for i in range(time_ps.shape[0]):
            if not all_tags and kind[i] != 1:
                continue
            t = time_ps[i]
            if t < last:
                late += 1
                continue
            last = t
            c = channel[i]
            if member[p, c] == 0:
                continue
            bit = one << np.uint64(c)
            if n_fold == 0 or t - opened > window:  # outside the open window: open one
                opened = t
                seen = bit
                n_fold = 1
                if need == 1:
                    n += 1
            elif (seen & bit) == 0:  # a new channel in the open window
                seen |= bit
                n_fold += 1
                if n_fold == need:
                    n += 1
        open_ps[p] = opened
        mask[p] = seen
        fold[p] = n_fold
        counts[p] = n
        last_seen = last
        late_seen = late
    order[0] = last_seen
    order[1] = late_seen


class CoincidenceCounter:
    """Counts coincidences for a list of patterns (``counts[i]`` for ``patterns[i]``).

    A pattern is a CoincidencePattern or a tuple ``(channels, window_ps[, min_fold])``; a
    channel pair is the pattern ``((a, b), window_ps)``.
    """

    def __init__(self, patterns: Iterable[CoincidencePattern | tuple]):
        self.patterns = [p if isinstance(p, CoincidencePattern) else CoincidencePattern(*p) for p in patterns]
        n = len(self.patterns)
        self.counts = np.zeros(n, np.int64)
        self._window_ps = np.array([p.window_ps for p in self.patterns], np.int64)
        self._min_fold = np.array([p.fold for p in self.patterns], np.int64)
        # member[p, channel] = 1 for the pattern's channels (256 columns: any uint8 channel)
        self._member = np.zeros((n, 256), np.uint8)
        for i, p in enumerate(self.patterns):
            self._member[i, list(p.channels)] = 1
        self._open_ps = np.zeros(n, np.int64)
        self._mask = np.zeros(n, np.uint64)
        self._fold = np.zeros(n, np.int64)
        self._order = np.array([NO_TIME, 0], np.int64)

    @property
    def out_of_order(self) -> int:
        """Tags skipped because they were earlier than a tag already seen (bad input)."""
        return int(self._order[1])

    def _run(self, time_ps, channel, kind, all_tags):
        _coincidences(time_ps, channel, kind, all_tags, self._member,
                      self._window_ps, self._min_fold, self._open_ps, self._mask, self._fold, self.counts,
                      self._order)

    def add(self, events: np.ndarray) -> None:
        self._run(*_columns(events), False)

    def add_tags(self, time_ps: np.ndarray, channel: np.ndarray) -> None:
        self._run(time_ps, channel, _NO_KIND, True)


# ---------------------------------------------------------------------------------------
# Correlation histograms


# state vector of _correlate (int64): latest time of any event, the span of the tags seen,
# tags skipped for arriving out of time order, clicks on a and on b
PREV, FIRST, LAST, LATE, N_A, N_B = range(6)
ROLE_A, ROLE_B = 1, 2  # role[channel]: bit 0 = counts as a, bit 1 = as b (both: auto)


@njit(cache=True, nogil=True)
def _count_pair(counts, role_earlier, role_later, dt, range_ps, bin_ps):
    """The pair (earlier click, later click dt >= 0 ps after it), in the histogram of
    delay = t_b - t_a over [-range_ps, range_ps)."""
    if (role_earlier & ROLE_A) and (role_later & ROLE_B) and dt < range_ps:
        counts[(range_ps + dt) // bin_ps] += 1  # a first: delay = +dt
    if (role_earlier & ROLE_B) and (role_later & ROLE_A):
        counts[(range_ps - dt) // bin_ps] += 1  # b first: delay = -dt, down to -range


@njit(cache=True, nogil=True)
def _correlate(time_ps, channel, kind, all_tags, start, role, range_ps, bin_ps, counts,
               carry_time, carry_role, state):
    """Histogram of delay = t_b - t_a over all pairs of distinct clicks (a on a channel with
    role A, b on one with role B) with -range_ps <= delay < range_ps, bin (delay + range) // bin.

    Each pair is counted when its later click (in stream order) arrives, by looking back over
    the events up to range_ps before it: in this batch, then in the carry (the a-or-b clicks of
    earlier batches within range_ps of their end). So it is counted exactly once however the
    stream is cut into batches.

    At real rates almost no event comes within range_ps of the latest one before it (``prev``,
    over events of every kind, so a late herald cannot hide a pair), and such an event cannot
    pair with anything earlier: it only counts. Only the few others are looked at closely
    (about 6 % in bench/host.py): this keeps the unpredictable branches (a or b? partner or
    not?) off the common path, where they cost more than everything else together.
    The look-back relies on time order, so the kernel stops at a tag earlier than the last one
    (bad input) and leaves it to the caller to drop such tags and call again from ``start``.
    Returns (index it stopped at: len(time_ps) when done, carry for the next batch).
    """
    prev, first, last = state[PREV], state[FIRST], state[LAST]
    n_a, n_b = state[N_A], state[N_B]
    n = time_ps.shape[0]
    stop = n
    if first == NO_TIME:
        for i in range(start, n):
            if all_tags or kind[i] == 1:
                first = time_ps[i]
                break
    for i in range(start, n):
        t = time_ps[i]
        if prev == NO_TIME or t - prev <= range_ps:  # close to the latest event, or late
            if all_tags or kind[i] == 1:
                if t < last:
                    stop = i
                    break
                last = t
                r = role[channel[i]]
                n_a += r & ROLE_A
                n_b += r >> 1
                if r != 0:
                    reached = False  # the look-back reached a tag more than range_ps earlier
                    for j in range(i - 1, -1, -1):
                        if not all_tags and kind[j] != 1:
                            continue
                        dt = t - time_ps[j]
                        if dt > range_ps:
                            reached = True
                            break
                        _count_pair(counts, role[channel[j]], r, dt, range_ps, bin_ps)
                    if not reached:
                        for j in range(carry_time.shape[0] - 1, -1, -1):
                            dt = t - carry_time[j]
                            if dt > range_ps:
                                break
                            _count_pair(counts, carry_role[j], r, dt, range_ps, bin_ps)
        elif all_tags or kind[i] == 1:
            r = role[channel[i]]
            n_a += r & ROLE_A
            n_b += r >> 1
            last = t
        prev = t if t > prev else prev
    state[PREV], state[FIRST], state[LAST] = prev, first, last
    state[N_A], state[N_B] = n_a, n_b
    if stop < n or last == NO_TIME:  # not done, or no tag yet: the carry stays
        return stop, carry_time, carry_role
    # The next batch's clicks come at or after `last`: they reach back to last - range_ps.
    oldest = last - range_ps
    keep_new = 0
    for i in range(n - 1, -1, -1):
        if not all_tags and kind[i] != 1:
            continue
        if time_ps[i] < oldest:
            break
        if role[channel[i]] != 0:
            keep_new += 1
    keep_old = 0
    for j in range(carry_time.shape[0] - 1, -1, -1):
        if carry_time[j] < oldest:
            break
        keep_old += 1
    new_time = np.empty(keep_old + keep_new, np.int64)
    new_role = np.empty(keep_old + keep_new, np.uint8)
    new_time[:keep_old] = carry_time[carry_time.shape[0] - keep_old:]
    new_role[:keep_old] = carry_role[carry_role.shape[0] - keep_old:]
    k = keep_old + keep_new
    for i in range(n - 1, -1, -1):
        if k == keep_old:
            break
        if not all_tags and kind[i] != 1:
            continue
        if role[channel[i]] != 0:
            k -= 1
            new_time[k] = time_ps[i]
            new_role[k] = role[channel[i]]
    return n, new_time, new_role


@dataclass(frozen=True)
class CarResult:
    """Coincidence-to-accidental ratio from a correlation histogram.

    ``coincidences``: counts in the peak window; ``accidentals``: the counts that window would
    hold off the peak (mean count per bin far from the peak, times the window's bins);
    ``car = (coincidences - accidentals) / accidentals``: true coincidences per accidental.
    """

    car: float
    coincidences: int
    accidentals: float
    peak_ps: float
    window_ps: int


class CorrelationHistogram:
    """Cross-correlation (or, for ``channel_a == channel_b``, auto-correlation) histogram.

    ``counts[k]`` is the number of click pairs (a on channel_a, b on channel_b) whose delay
    ``t_b - t_a`` lies in ``[delays_ps[k], delays_ps[k] + bin_ps)``; the bins cover
    ``-range_ps <= delay < range_ps``. ``range_ps`` must be a multiple of ``bin_ps``.
    """

    def __init__(self, channel_a: int, channel_b: int, bin_ps: int, range_ps: int):
        if bin_ps <= 0 or range_ps <= 0 or range_ps % bin_ps:
            raise ValueError(f"need bin_ps > 0 and range_ps > 0 a multiple of it, got {bin_ps}, {range_ps}")
        for ch in (channel_a, channel_b):
            if not 0 <= ch < MAX_CHANNELS:
                raise ValueError(f"channel {ch} outside 0..{MAX_CHANNELS - 1}")
        self.channel_a, self.channel_b = int(channel_a), int(channel_b)
        self.bin_ps, self.range_ps = int(bin_ps), int(range_ps)
        self.counts = np.zeros(2 * self.range_ps // self.bin_ps, np.int64)
        self._role = np.zeros(256, np.uint8)  # any uint8 channel
        self._role[self.channel_a] |= ROLE_A
        self._role[self.channel_b] |= ROLE_B
        self._carry_time = np.empty(0, np.int64)
        self._carry_role = np.empty(0, np.uint8)
        self._state = np.zeros(6, np.int64)
        self._state[[PREV, FIRST, LAST]] = NO_TIME

    @property
    def delays_ps(self) -> np.ndarray:
        """Left edge of each bin."""
        return -self.range_ps + self.bin_ps * np.arange(len(self.counts), dtype=np.int64)

    @property
    def centres_ps(self) -> np.ndarray:
        return self.delays_ps + self.bin_ps / 2

    @property
    def out_of_order(self) -> int:
        """Tags skipped because they were earlier than a tag already seen (bad input)."""
        return int(self._state[LATE])

    @property
    def clicks(self) -> tuple[int, int]:
        """Clicks seen on channel_a and channel_b."""
        return int(self._state[N_A]), int(self._state[N_B])

    @property
    def duration_ps(self) -> int:
        """From the first to the last tag seen on any channel."""
        first, last = self._state[FIRST], self._state[LAST]
        return 0 if first == NO_TIME else int(last - first)

    def _run(self, time_ps, channel, kind, all_tags):
        stop, self._carry_time, self._carry_role = self._kernel(time_ps, channel, kind, all_tags, 0)
        if stop < len(time_ps):
            # Out-of-order tags from `stop` on (bad input, rare): drop them, count them, go on.
            is_tag = np.ones(len(time_ps) - stop, bool) if all_tags else kind[stop:] == TAG
            tag_ps = np.where(is_tag, time_ps[stop:], NO_TIME)
            before = np.maximum.accumulate(np.concatenate([[self._state[LAST]], tag_ps]))[:-1]
            late = is_tag & (tag_ps < before)
            self._state[LATE] += np.count_nonzero(late)
            keep = np.concatenate([np.ones(stop, bool), ~late])
            time_ps, channel = time_ps[keep], channel[keep]
            kind = kind if all_tags else kind[keep]
            _, self._carry_time, self._carry_role = self._kernel(time_ps, channel, kind, all_tags, stop)

    def _kernel(self, time_ps, channel, kind, all_tags, start):
        return _correlate(time_ps, channel, kind, all_tags, start, self._role, self.range_ps, self.bin_ps,
                          self.counts, self._carry_time, self._carry_role, self._state)

    def add(self, events: np.ndarray) -> None:
        self._run(*_columns(events), False)

    def add_tags(self, time_ps: np.ndarray, channel: np.ndarray) -> None:
        self._run(time_ps, channel, _NO_KIND, True)

    def g2(self, duration_ps: int | None = None) -> np.ndarray:
        """Normalised correlation: counts / (R_a * R_b * bin * T), with R = clicks / T and T the
        measurement time (default: the span of the tags seen). 1 for uncorrelated clicks.
        The (T - |delay|) / T edge correction is left out: it is below range / T."""
        duration_ps = self.duration_ps if duration_ps is None else duration_ps
        n_a, n_b = self.clicks
        if n_a == 0 or n_b == 0 or duration_ps <= 0:
            return np.full(len(self.counts), np.nan)
        # counts * T / (N_a * N_b * bin), in float: N_a * N_b overflows int64 for long runs
        return self.counts * (float(duration_ps) / (float(n_a) * float(n_b) * self.bin_ps))

    def car(self, window_ps: int, peak_ps: float | None = None, offpeak_ps: int | None = None) -> CarResult:
        """CAR of the peak at ``peak_ps`` (default: the centre of the fullest bin).

        The peak window holds the bins whose centres lie within ``window_ps / 2`` of the peak;
        accidentals are estimated from the bins whose centres lie more than ``offpeak_ps``
        (default ``range_ps / 2``) from it.
        """
        centres = self.centres_ps
        if peak_ps is None:
            peak_ps = float(centres[np.argmax(self.counts)])
        offpeak_ps = self.range_ps // 2 if offpeak_ps is None else offpeak_ps
        distance = np.abs(centres - peak_ps)
        in_window = distance <= window_ps / 2
        off_peak = distance > offpeak_ps
        if not in_window.any() or not off_peak.any():
            raise ValueError(f"window_ps {window_ps} or offpeak_ps {offpeak_ps} leaves no bins "
                             f"(range +-{self.range_ps} ps, bin {self.bin_ps} ps)")
        coincidences = int(self.counts[in_window].sum())
        accidentals = float(self.counts[off_peak].mean() * np.count_nonzero(in_window))
        if accidentals > 0:
            car = (coincidences - accidentals) / accidentals
        else:  # no accidental in the whole off-peak region: unbounded, or undefined if empty
            car = float("inf") if coincidences else float("nan")
        return CarResult(car=car, coincidences=coincidences, accidentals=accidentals,
                         peak_ps=float(peak_ps), window_ps=int(window_ps))


# ---------------------------------------------------------------------------------------
# Heralds


class HeraldRate:
    """HERALD events (successful entanglement attempts) per outcome and their rate.

    ``counts[outcome]`` counts heralds by the outcome code in aux bits 21:18 (psi+ / psi-, as
    the herald unit sets them); ``rate_hz()`` divides the total by the span of all events seen.
    """

    def __init__(self):
        self.counts = np.zeros(16, np.int64)
        self.first_ps: int | None = None
        self.last_ps: int | None = None

    def add(self, events: np.ndarray) -> None:
        if len(events) == 0:
            return
        time_ps = events["time_ps"]
        # Heralds may leave a little after later tags: take the batch's extremes, not its ends.
        lo, hi = int(time_ps.min()), int(time_ps.max())
        self.first_ps = lo if self.first_ps is None else min(self.first_ps, lo)
        self.last_ps = hi if self.last_ps is None else max(self.last_ps, hi)
        heralds = events[events["kind"] == HERALD]
        if len(heralds):
            self.counts += np.bincount(heralds["aux"] >> HERALD_ATTEMPT_BITS, minlength=16)[:16]

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def duration_ps(self) -> int:
        return 0 if self.first_ps is None else self.last_ps - self.first_ps

    def rate_hz(self, duration_ps: int | None = None) -> float:
        duration_ps = self.duration_ps if duration_ps is None else duration_ps
        return self.total / (duration_ps * 1e-12) if duration_ps > 0 else 0.0


# ---------------------------------------------------------------------------------------
# Recorded files


Paths = str | Path | Iterable[str | Path]


def _paths(paths: Paths) -> list[Path]:
    """One file, or the files of a rotated recording in order (recorder.recording_files)."""
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def iter_file_tags(paths: Paths, chunk_tags: int = FILE_CHUNK_TAGS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(time_ps, channel) chunks of the recordings' /photon_data, in file order."""
    for path in _paths(paths):
        with h5py.File(path, "r") as f:
            timestamps, detectors = f["/photon_data/timestamps"], f["/photon_data/detectors"]
            for start in range(0, len(timestamps), chunk_tags):
                yield timestamps[start:start + chunk_tags], detectors[start:start + chunk_tags]


def file_duration_ps(path: str | Path) -> int | None:
    """The recording's /acquisition_duration in ps, if it has one."""
    with h5py.File(path, "r") as f:
        if "acquisition_duration" not in f:
            return None
        return int(round(float(f["acquisition_duration"][()]) * 1e12))


def measure_file(paths: Paths, measurements: Iterable, chunk_tags: int = FILE_CHUNK_TAGS) -> list:
    """Feed a recording to measurements (CountRates, CoincidenceCounter, CorrelationHistogram,
    HeraldRate) chunk by chunk, so files larger than memory work; returns them.

    ``paths``: one file, or the files of a rotated recording in order (then the measurements
    run on across the file boundaries as across batches). Tags come from /photon_data;
    HeraldRate reads the HERALDs in /qnode/heralds (with the other event tables, whose span
    is its duration).
    """
    measurements = list(measurements)
    tag_measurements = [m for m in measurements if not isinstance(m, HeraldRate)]
    heralds = [m for m in measurements if isinstance(m, HeraldRate)]
    for time_ps, channel in iter_file_tags(paths, chunk_tags):
        for m in tag_measurements:
            m.add_tags(time_ps, channel)
    for path in _paths(paths) if heralds else []:
        with h5py.File(path, "r") as f:
            events = recorded_events(f)  # /qnode/heralds and the other event tables
        for start in range(0, len(events), chunk_tags):
            batch = events[start:start + chunk_tags]
            for m in heralds:
                m.add(batch)
    return measurements


def correlate_file(paths: Paths, channel_a: int, channel_b: int, bin_ps: int, range_ps: int,
                   chunk_tags: int = FILE_CHUNK_TAGS) -> CorrelationHistogram:
    """The correlation histogram of two channels of a recording."""
    (hist,) = measure_file(paths, [CorrelationHistogram(channel_a, channel_b, bin_ps, range_ps)], chunk_tags)
    return hist


def coincidences_file(paths: Paths, patterns: Iterable, chunk_tags: int = FILE_CHUNK_TAGS) -> np.ndarray:
    """Coincidence counts of a recording, one per pattern."""
    (counter,) = measure_file(paths, [CoincidenceCounter(patterns)], chunk_tags)
    return counter.counts
