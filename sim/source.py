"""The simulated lab's light and detectors: detector clicks per channel, in batches.

What arrives (SCENARIO.md):

- a sync pulse train (one entanglement attempt per pulse): the sequencer picks the excitation
  pulses whose photons reach the station outside the reference bursts, so the herald unit makes
  no attempts during a burst (``attempt_syncs``);
- a photon-pair (SPDC) source, continuous (Poisson pairs) or pulsed (Poisson pairs per sync);
- two emitters feeding a beam splitter in front of the heralding detectors: each emits with
  probability alpha per attempt, photons arrive a fixed fibre delay after their sync with an
  exponential emission delay, and two photons bunch onto the same output (Hong-Ou-Mandel);
- reference light bursts for the phase lock, split (1 +- V cos phi)/2 onto the two heralding
  detectors, with phi(t) from an interferometer model (``phase_rad`` callable);
- dark counts on every channel.

Then each photon meets its detector: efficiency (a Bernoulli draw), cable delay, Gaussian
jitter, and the dead time and afterpulsing of :mod:`qnode.sim.detector`.

Output: time-ordered numpy structured arrays of (time_ps int64, channel uint8), ties in
channel order. Seeded: the same config and batch sizes give the same clicks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit

from qnode.host.config import DetectorModel, LabConfig, SimLab

from .detector import Detector

CLICK_DTYPE = np.dtype([("time_ps", "<i8"), ("channel", "u1")])

PhaseFn = Callable[[np.ndarray], np.ndarray]


def attempt_syncs(lab: SimLab, times: np.ndarray) -> np.ndarray:
    """The laser pulses among ``times`` (ps, increasing) that the sequencer makes attempts of, and
    so sends as sync pulses: those whose detection window at the station (``arrival_delay_ps``
    later, ``window_ps`` long) lies outside every reference burst. All of them without reference
    light or heralding (nothing to time-share)."""
    ref, h = lab.reference, lab.heralding
    if ref is None or h is None or len(times) == 0:
        return times
    return _outside_bursts(times, h.arrival_delay_ps, ref.cycle_ps, ref.burst_ps, h.window_ps)


@njit(cache=True, nogil=True)
def _outside_bursts(times, offset_ps, cycle_ps, burst_ps, window_ps):
    # The phase in the cycle follows the times by differences: one modulo for the batch, not
    # one a pulse (an integer division costs more than the rest of the loop).
    out = np.empty_like(times)
    phase = (times[0] + offset_ps) % cycle_ps
    prev = times[0]
    k = 0
    for i in range(times.shape[0]):
        phase += times[i] - prev
        prev = times[i]
        while phase >= cycle_ps:
            phase -= cycle_ps
        if phase >= burst_ps and phase + window_ps <= cycle_ps:
            out[k] = times[i]
            k += 1
    return out[:k]


def detector_models(lab: SimLab, channels: list[int]) -> dict[int, DetectorModel]:
    """Each channel's detector: sim.detector, updated by the keys set in sim.detectors.N."""
    models = {}
    for ch in channels:
        override = lab.detectors.get(ch)
        if override is None:
            models[ch] = lab.detector
        else:
            models[ch] = lab.detector.model_copy(
                update={k: getattr(override, k) for k in override.model_fields_set}
            )
    return models


@njit(cache=True, nogil=True)
def _merge_two_into(t1, c1, t2, c2, t, c):
    """Merge two time-sorted runs of (time, channel) into t, c; ties go to the lower channel.
    The runs hold different channels, so (time, channel) orders the clicks of both strictly.

    Two merges at once, one from each end: each step's loads wait on the step before, and two
    independent chains keep the core busy. No branch on the data (selects, not jumps): which
    run gives the next click is a coin toss when channels interleave."""
    n1, n2 = t1.shape[0], t2.shape[0]
    n = n1 + n2
    i, j, ib, jb, s = 0, 0, n1 - 1, n2 - 1, 0
    while s < n // 2 and i < n1 and j < n2 and ib >= 0 and jb >= 0:
        a, b, ca, cb = t1[i], t2[j], c1[i], c2[j]
        first = (a < b) | ((a == b) & (ca < cb))
        t[s] = a if first else b
        c[s] = ca if first else cb
        i += first
        j += 1 - first
        a, b, ca, cb = t1[ib], t2[jb], c1[ib], c2[jb]
        last = (a > b) | ((a == b) & (ca > cb))
        t[n - 1 - s] = a if last else b
        c[n - 1 - s] = ca if last else cb
        ib -= last
        jb -= 1 - last
        s += 1
    # What is left when a run ran out at either end: t1[i..ib] and t2[j..jb] into t[s..n-1-s].
    k = s
    while i <= ib and j <= jb:
        if t1[i] < t2[j] or (t1[i] == t2[j] and c1[i] < c2[j]):
            t[k] = t1[i]
            c[k] = c1[i]
            i += 1
        else:
            t[k] = t2[j]
            c[k] = c2[j]
            j += 1
        k += 1
    while i <= ib:
        t[k] = t1[i]
        c[k] = c1[i]
        i += 1
        k += 1
    while j <= jb:
        t[k] = t2[j]
        c[k] = c2[j]
        j += 1
        k += 1


@njit(cache=True, nogil=True)
def _arrivals(pending, fresh, table, draws, delay_ps, floor_ps):
    """pending followed by fresh + table[draws] + delay_ps (at least floor_ps), in a new array:
    the copy, the jitter, the cable delay and the clock's start in one pass."""
    n_p, n = pending.shape[0], fresh.shape[0]
    out = np.empty(n_p + n, np.int64)
    out[:n_p] = pending
    for i in range(n):
        v = fresh[i] + table[draws[i]] + delay_ps
        out[n_p + i] = v if v > floor_ps else floor_ps
    return out


@njit(cache=True, nogil=True)
def _is_sorted(times):
    """No early exit, so it vectorises: a sorted array costs a fifth of timsort's check."""
    disorder = 0
    for i in range(1, times.shape[0]):
        disorder += times[i] < times[i - 1]
    return disorder == 0


def merge_channels(runs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Merge per-channel sorted (times, channels) runs into CLICK_DTYPE, smallest first (Huffman
    order), so the dense sync channel is copied once and sparse channels a few times."""
    runs = sorted(runs, key=lambda r: len(r[0]))
    while len(runs) > 2:
        (t1, c1), (t2, c2) = runs.pop(0), runs.pop(0)
        t, c = np.empty(len(t1) + len(t2), np.int64), np.empty(len(t1) + len(t2), np.uint8)
        _merge_two_into(t1, c1, t2, c2, t, c)
        at = next((i for i, r in enumerate(runs) if len(r[0]) > len(t)), len(runs))
        runs.insert(at, (t, c))
    if len(runs) < 2:
        runs.append((np.empty(0, np.int64), np.empty(0, np.uint8)))
    (t1, c1), (t2, c2) = runs
    out = np.empty(len(t1) + len(t2), CLICK_DTYPE)
    _merge_two_into(t1, c1, t2, c2, out["time_ps"], out["channel"])  # the last merge writes the output
    return out


def _gaussian_table(size: int = 1 << 16) -> np.ndarray:
    """Standard normal quantiles at (i + 0.5) / size: a random index draws a Gaussian (to
    +-4.3 sigma) for the cost of an integer draw, ~5x cheaper than Box-Muller or ziggurat."""
    from statistics import NormalDist

    quantile = NormalDist().inv_cdf
    return np.array([quantile((i + 0.5) / size) for i in range(size)])


GAUSSIAN = _gaussian_table()
_NO_JITTER = np.zeros(1, np.int64)
_NONE = np.empty(0, np.int64)
_NO_FLOOR = np.iinfo(np.int64).min


@njit(cache=True, nogil=True)
def _cumulated(gaps, reached, span, t0_ps):
    """Times reached + cumsum(gaps) (the float sums numpy's cumsum makes) before span, as int64
    ps from t0_ps, and where the cumulation got to (>= span once a time passed it)."""
    out = np.empty(gaps.shape[0], np.int64)
    total = 0.0
    for i in range(gaps.shape[0]):
        total += gaps[i]
        v = total + reached
        if v >= span:
            return out[:i], v
        out[i] = np.int64(v) + t0_ps
    return out, total + reached


def _poisson_times(rng: np.random.Generator, rate_hz: float, t0_ps: int, t1_ps: int) -> np.ndarray:
    """Event times of a Poisson process on [t0, t1), sorted, int64 ps (cumulated gaps)."""
    span = t1_ps - t0_ps
    if rate_hz <= 0 or span <= 0:
        return np.empty(0, np.int64)
    mean_gap_ps = 1e12 / rate_hz
    expected = span / mean_gap_ps
    chunks, reached = [], 0.0
    while reached < span:
        gaps = rng.exponential(mean_gap_ps, int(expected + 6 * np.sqrt(expected) + 16))
        times, reached = _cumulated(gaps, reached, float(span), np.int64(t0_ps))
        chunks.append(times)
    return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]


def _bernoulli_indices(rng: np.random.Generator, p: float, n: int) -> np.ndarray:
    """Indices in [0, n) that succeed with probability p each, drawn as geometric gaps."""
    if p <= 0 or n == 0:
        return np.empty(0, np.int64)
    if p >= 1:
        return np.arange(n)
    expected = n * p
    gaps = rng.geometric(p, int(expected + 6 * np.sqrt(expected) + 16))
    idx = np.cumsum(gaps) - 1
    while idx[-1] < n:
        more = np.cumsum(rng.geometric(p, len(gaps))) + idx[-1]
        idx = np.concatenate([idx, more])
    return idx[: np.searchsorted(idx, n)]


@njit(cache=True, nogil=True)
def _merge_sorted_pair(a, b):
    """Merge two sorted int64 arrays."""
    out = np.empty(a.shape[0] + b.shape[0], np.int64)
    i = j = 0
    for k in range(out.shape[0]):
        if j >= b.shape[0] or (i < a.shape[0] and a[i] <= b[j]):
            out[k] = a[i]
            i += 1
        else:
            out[k] = b[j]
            j += 1
    return out


def _merge_sorted(*runs: np.ndarray) -> np.ndarray:
    """Merge sorted int64 arrays."""
    runs = [r for r in runs if len(r)]
    if not runs:
        return np.empty(0, np.int64)
    out = runs[0]
    for r in runs[1:]:
        out = _merge_sorted_pair(out, r)
    return out


@njit(cache=True, nogil=True)
def _attempts(hits_a, hits_b, sync_times, delay_ps):
    """The attempts (sync pulse indices, each run increasing) in which one emitter or both sent a
    photon: their photons' arrival base time (sync + delay_ps) and count (1 or 2), in order."""
    base = np.empty(hits_a.shape[0] + hits_b.shape[0], np.int64)
    photons = np.empty(base.shape[0], np.int64)
    i = j = k = 0
    while i < hits_a.shape[0] or j < hits_b.shape[0]:
        a = hits_a[i] if i < hits_a.shape[0] else np.iinfo(np.int64).max
        b = hits_b[j] if j < hits_b.shape[0] else np.iinfo(np.int64).max
        which = a if a < b else b
        count = (a == which) + (b == which)
        i += a == which
        j += b == which
        base[k] = sync_times[which] + delay_ps
        photons[k] = count
        k += 1
    return base[:k], photons[:k]


@njit(cache=True, nogil=True)
def _beam_split(base, photons, u):
    """Each attempt's photons all onto the + output where u < 0.5, else onto the - output."""
    n_plus = n_minus = 0
    for i in range(base.shape[0]):
        if u[i] < 0.5:
            n_plus += photons[i]
        else:
            n_minus += photons[i]
    plus, minus = np.empty(n_plus, np.int64), np.empty(n_minus, np.int64)
    p = m = 0
    for i in range(base.shape[0]):
        for _ in range(photons[i]):
            if u[i] < 0.5:
                plus[p] = base[i]
                p += 1
            else:
                minus[m] = base[i]
                m += 1
    return plus, minus


@njit(cache=True, nogil=True)
def _unfold(x, starts, ends, lengths):
    """Times x on the bursts laid end to end (sorted), mapped back onto the bursts: burst b
    covers [ends[b] - lengths[b], ends[b]) of x and starts at starts[b]."""
    out = np.empty(x.shape[0], np.int64)
    b = 0
    for i in range(x.shape[0]):
        while ends[b] <= x[i]:
            b += 1
        out[i] = starts[b] + x[i] - (ends[b] - lengths[b])
    return out


@njit(cache=True, nogil=True)
def _split(times, u, p_first):
    """times where u < p_first, and the others (u drawn uniform in [0, 1) per time)."""
    first = np.empty(times.shape[0], np.int64)
    second = np.empty(times.shape[0], np.int64)
    n1 = n2 = 0
    for i in range(times.shape[0]):
        if u[i] < p_first[i]:
            first[n1] = times[i]
            n1 += 1
        else:
            second[n2] = times[i]
            n2 += 1
    return first[:n1], second[:n2]


def _zero_phase(t_ps: np.ndarray) -> np.ndarray:
    return np.zeros(len(t_ps))


class PhotonSource:
    """Detector clicks of the simulated lab, generated batch after batch.

    ``generate(duration_ps)`` returns the clicks of the next ``duration_ps`` of lab time.
    Detector parameters may change between batches (``set_detector``), which is how the
    lab model applies bias and temperature.
    """

    def __init__(self, config: LabConfig, phase_rad: PhaseFn | None = None, seed: int | None = None):
        if config.sim is None:
            raise ValueError("this config has no [sim] table: nothing to simulate")
        self.lab = config.sim
        self.channels = sorted(ch.index for ch in config.fpga.channels)
        self.seed = self.lab.seed if seed is None else seed
        self.rng = np.random.default_rng(self.seed)
        self.phase_rad: PhaseFn = phase_rad or _zero_phase
        models = detector_models(self.lab, self.channels)
        self.detectors = {
            ch: Detector(
                channel=ch,
                cable_delay_ps=self.lab.cable_delay_ps.get(ch, 0),
                seed=(self.seed * 1_000_003 + ch) & 0xFFFF_FFFF_FFFF_FFFF,
                **models[ch].model_dump(),
            )
            for ch in self.channels
        }
        self._nominal_efficiency = {ch: models[ch].efficiency for ch in self.channels}
        max_jitter = max((d.jitter_ps for d in self.detectors.values()), default=0.0)
        # Arrivals within this guard of a batch's end wait for the next batch, where emissions
        # with negative jitter could still land before them.
        self._guard_ps = int(10 * max_jitter) + 1000
        self._pending = {ch: np.empty(0, np.int64) for ch in self.channels}
        self._jitter_tables: dict[float, np.ndarray] = {}
        self.now_ps = 0
        self._next_sync = 0  # index of the next sync pulse

    # -- lab model hooks ---------------------------------------------------------------

    def set_detector(self, channel: int, **params) -> None:
        """Change a detector's physics (efficiency, dark_rate_hz, ...) from the next batch on."""
        det = self.detectors[channel]
        for key, value in params.items():
            if not hasattr(det, key) or key.startswith("_") or key == "channel":
                raise AttributeError(f"detector has no parameter {key!r}")
            setattr(det, key, value)

    def _jitter_table(self, jitter_ps: float) -> np.ndarray:
        """Gaussian jitter in whole ps for a random uint16 index, in the smallest integer type
        that holds it: the random lookups stay in cache (5 ps fits int8, 50 ps int16)."""
        table = self._jitter_tables.get(jitter_ps)
        if table is None:
            values = np.rint(GAUSSIAN * jitter_ps).astype(np.int64)
            widest = int(np.abs(values).max())
            dtype = next(t for t in (np.int8, np.int16, np.int32, np.int64) if widest <= np.iinfo(t).max)
            table = self._jitter_tables[jitter_ps] = values.astype(dtype)
        return table

    # -- generation --------------------------------------------------------------------

    def generate(self, duration_ps: int) -> np.ndarray:
        """Clicks with time in [now, now + duration), time-ordered."""
        t0, t1 = self.now_ps, self.now_ps + int(duration_ps)
        arrivals: dict[int, list[np.ndarray]] = {ch: [] for ch in self.channels}
        for ch, times in self._emit(t0, t1):
            arrivals[ch].append(times)
        for ch in self.channels:
            det = self.detectors[ch]
            arrivals[ch].append(_poisson_times(self.rng, det.dark_rate_hz, t0, t1))

        cut = t1 - self._guard_ps
        runs = []
        for ch in self.channels:
            det = self.detectors[ch]
            parts = [a for a in arrivals[ch] if len(a)]
            fresh = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else _NONE
            # The lab's clock starts at 0: a click that jitter would put before it (the sync
            # pulse at t = 0, an early dark count) is recorded at 0, never at a negative time.
            floor_ps = 0 if t0 < self._guard_ps else _NO_FLOOR
            if det.jitter_ps > 0 and len(fresh):
                table = self._jitter_table(det.jitter_ps)
                draws = self.rng.integers(0, len(table), len(fresh), dtype=np.uint16)
            else:
                table, draws = _NO_JITTER, np.zeros(len(fresh), np.uint8)
            merged = _arrivals(self._pending[ch], fresh, table, draws, det.cable_delay_ps, floor_ps)
            if not _is_sorted(merged):
                # Sorted runs with jitter-sized disorder: timsort merges them in near-linear time.
                merged.sort(kind="stable")
            clicks, self._pending[ch] = det.click(merged, cut)
            runs.append((clicks, np.full(len(clicks), ch, np.uint8)))
        self.now_ps = t1

        return merge_channels(runs)

    def _detected(self, channel: int, times: np.ndarray, probability: float = 1.0) -> np.ndarray:
        """Photons that the detector registers: transmission x efficiency, one draw each."""
        p = probability * self.detectors[channel].efficiency
        if p >= 1.0:
            return times
        return times[self.rng.random(len(times)) < p]

    def _sync_times(self, t0: int, t1: int) -> np.ndarray:
        """Sync pulse times in [t0, t1) (pulse k at k x period, rounded to the ps)."""
        sync = self.lab.sync
        if sync is None:
            return np.empty(0, np.int64)
        period_ps = 1e12 / sync.rate_hz
        first = self._next_sync
        if period_ps.is_integer():  # one pass of integer arithmetic (1 MHz: 1_000_000 ps)
            times = np.arange(first * int(period_ps), t1, int(period_ps), dtype=np.int64)
        else:
            last = int(np.ceil(t1 / period_ps))
            times = np.rint(np.arange(first, last, dtype=np.int64) * period_ps).astype(np.int64)
            times = times[times < t1]
        self._next_sync = first + len(times)
        return times

    def _emit(self, t0: int, t1: int):
        """(channel, photon arrival times before the detector) for emissions in [t0, t1)."""
        lab = self.lab
        sync_times = self._sync_times(t0, t1)  # the laser's pulses (a pulsed pair source's pump too)
        attempts = attempt_syncs(lab, sync_times)
        if lab.sync is not None:
            yield lab.sync.channel, self._detected(lab.sync.channel, attempts)

        if lab.pair_source is not None:
            ps = lab.pair_source
            # Thinning: A-only, B-only and both-detected pairs are independent Poisson
            # processes, so only detected photons are ever drawn.
            p_a = ps.transmission_a * self.detectors[ps.channel_a].efficiency
            p_b = ps.transmission_b * self.detectors[ps.channel_b].efficiency
            rates = (ps.rate_hz * p_a * (1 - p_b), ps.rate_hz * (1 - p_a) * p_b, ps.rate_hz * p_a * p_b)
            if ps.pulsed:
                if lab.sync is None:
                    raise ValueError("sim.pair_source.pulsed needs sim.sync")
                a_only, b_only, both = (
                    np.repeat(sync_times, self.rng.poisson(r / lab.sync.rate_hz, len(sync_times)))
                    for r in rates
                )
            else:
                a_only, b_only, both = (_poisson_times(self.rng, r, t0, t1) for r in rates)
            yield ps.channel_a, _merge_sorted(a_only, both)
            yield ps.channel_b, _merge_sorted(b_only, both)

        if lab.heralding is not None and len(attempts):
            yield from self._emit_heralding(attempts)

        if lab.reference is not None and lab.heralding is not None:
            yield from self._emit_reference(t0, t1)

    def _emit_heralding(self, sync_times: np.ndarray):
        h = self.lab.heralding
        n = len(sync_times)
        # Each emitter's photon reaches the station (alpha x transmission) in attempts picked
        # by geometric skips, so the ~1000x more empty attempts cost no random draws.
        p = h.emission_probability * h.transmission
        hits = [_bernoulli_indices(self.rng, p, n) for _ in range(2)]
        base, photons = _attempts(*hits, sync_times, h.arrival_delay_ps)
        # Two photons are indistinguishable and bunch onto one output (HOM).
        sides = _beam_split(base, photons, self.rng.random(len(base)))
        for ch, t in zip((h.channel_plus, h.channel_minus), sides):
            if h.emitter_lifetime_ps > 0:
                t = t + np.rint(self.rng.exponential(h.emitter_lifetime_ps, len(t))).astype(np.int64)
            t.sort()
            yield ch, self._detected(ch, t)

    def _emit_reference(self, t0: int, t1: int):
        ref, h = self.lab.reference, self.lab.heralding
        # Rate is what the detectors see at nominal efficiency; scale by their current one.
        # One Poisson draw over the bursts laid end to end, then mapped back onto the cycles.
        cycles = np.arange(t0 // ref.cycle_ps, (t1 - 1) // ref.cycle_ps + 1)
        starts = np.maximum(cycles * ref.cycle_ps, t0)
        stops = np.maximum(np.minimum(cycles * ref.cycle_ps + ref.burst_ps, t1), starts)
        lengths = stops - starts
        ends = np.cumsum(lengths)
        x = _poisson_times(self.rng, ref.rate_hz, 0, int(ends[-1]) if len(ends) else 0)
        times = _unfold(x, starts, ends, lengths)
        if self.phase_rad is _zero_phase:
            p_plus = np.full(len(times), 0.5 * (1.0 + ref.visibility * np.cos(0.0)))
        else:
            phi = np.asarray(self.phase_rad(times), dtype=float)
            p_plus = 0.5 * (1.0 + ref.visibility * np.cos(phi))
        split = _split(times, self.rng.random(len(times)), p_plus)
        for ch, t in zip((h.channel_plus, h.channel_minus), split):
            scale = self.detectors[ch].efficiency / max(self._nominal_efficiency[ch], 1e-12)
            yield ch, t[self.rng.random(len(t)) < min(scale, 1.0)]
