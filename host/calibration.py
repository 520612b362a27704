"""Delay calibration and coincidence-window optimisation from correlation histograms.

Delay calibration, for each chosen channel pair (a, b):

1. a correlation histogram of ``t_b - t_a`` around zero (``range_ps``, bins of the time
   tagger's bin);
2. the peak found (fullest bin) and fitted: a Gaussian (detector jitter) or, for photons from an
   emitter with a lifetime (``shape = "exp_tail"``), a Gaussian with an exponential tail; either
   is convolved with the time tagger's bin (tags are whole bins, so a difference of two tags is
   spread over a triangle two bins wide: the fit recovers the offset to a fraction of a bin);
3. the result: offset (``offset_ps``: where b's clicks sit after a's), width (``sigma_ps``, the
   pair's combined jitter), their fit uncertainties, the peak's significance over the flat
   background; the fit is refused (``ok = False`` with the reason) below ``min_significance``;
4. :func:`solve_delays` turns the offsets of all pairs into per-channel delays (in bins, never
   negative: the channel that arrives last gets 0) that put every peak at zero, written to the
   gateware's ``ts_delay_bins`` registers by :func:`apply_delays`.

Window optimisation: from the same histogram, the contiguous run of bins around the peak that
maximises ``C / sqrt(C + A)`` (C: true coincidences in the window, A: accidentals it holds), or
the widest that still meets a target CAR; with the window's CAR and g2(0) (= counts / accidentals).

Everything here works on arrays of tags (``time_ps`` int64, ``channel``): from the simulated FPGA
(:class:`SimTagSource`), from a daemon's event stream (:class:`DaemonTagSource`) or from a file.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from .measurements import CorrelationHistogram

SIGMA_MIN_BINS = 0.02  # the narrowest peak the fit considers (20 ps at 1 ns bins)

# --- tag sources -------------------------------------------------------------------------


def in_order(t: np.ndarray, ch: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Drop tags later than a tag after them (and count them): one such tag would make every
    following tag "late" for a histogram. Seen: the simulated FPGA's very first tag at 2^32 - 1
    bins when the first sync click's jitter is negative (a time of -1 bin)."""
    keep = t <= np.minimum.accumulate(t[::-1])[::-1]
    return t[keep], ch[keep], int(len(t) - np.count_nonzero(keep))


class SimTagSource:
    """Tags straight from a :class:`~qnode.sim.fpga.SimulatedFpga` device (no link, no server):
    the fastest way to calibrate the simulated lab in simulated time. Register writes go through
    the device's register file, exactly as link requests would."""

    STEP_PS = 10_000_000_000

    def __init__(self, config, *, lab=None, device=None):
        from qnode.sim.fpga import SimulatedFpga

        self.device = device or SimulatedFpga(config, lab=lab)
        self.bin_ps = self.device.bin_ps
        self.out_of_order = 0  # tags dropped because a later tag came before them

    def acquire(self, duration_s: float) -> tuple[np.ndarray, np.ndarray]:
        from qnode.firmware.events import Kind, StreamDecoder

        times, channels = [], []
        left = int(duration_s * 1e12)
        while left > 0:
            step = min(self.STEP_PS, left)
            words = self.device.produce(step)
            # each production step's words start from epoch 0 (see SimulatedFpga.produce)
            events = StreamDecoder(bin_ps=self.bin_ps, channels=self.device.channels).decode(words)
            tags = events[events["kind"] == Kind.TAG]
            times.append(tags["time_ps"].astype(np.int64))
            channels.append(tags["channel"].astype(np.uint8))
            left -= step
        t, ch, dropped = in_order(np.concatenate(times), np.concatenate(channels))
        self.out_of_order += dropped
        return t, ch

    def read_register(self, name: str, index: int = 0) -> int:
        return self.device._get(name, index)

    def write_register(self, name: str, value: int, index: int = 0) -> int:
        from qnode.firmware import link
        from qnode.firmware.registers import REGISTER_MAP

        frame = link.Frame(link.FrameType.REG_WRITE, 0,
                           link.struct.pack("<HI", REGISTER_MAP.address(name, index), int(value)))
        reply = next(iter(link.FrameParser().feed(self.device.handle(frame))))
        if reply.type != link.FrameType.REG_ACK:
            raise RuntimeError(f"simulated FPGA refused {name}[{index}] = {value}")
        return self.read_register(name, index)


class DaemonTagSource:
    """Tags from a running daemon's ``events`` stream; registers through its control API."""

    def __init__(self, client, stream_url: str):
        self.client = client
        self.stream_url = stream_url
        self.bin_ps = int(client.call("registers.read", name="bin_ps")["value"])

    def acquire(self, duration_s: float, timeout_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Events until their timestamps span ``duration_s`` of lab time."""
        from qnode.firmware.events import Kind

        from .client import Subscriber

        timeout_s = timeout_s if timeout_s is not None else 10 * duration_s + 10
        times, channels, first, last = [], [], None, None
        deadline = time.monotonic() + timeout_s
        with Subscriber(self.stream_url, topics=["events"]) as sub:
            while time.monotonic() < deadline:
                message = sub.receive(timeout_s=1.0)
                if message is None:
                    continue
                _, _, arrays = message
                events = arrays["events"]
                tags = events[events["kind"] == Kind.TAG]
                if len(tags) == 0:
                    continue
                times.append(tags["time_ps"].astype(np.int64))
                channels.append(tags["channel"].astype(np.uint8))
                first = int(times[0][0]) if first is None else first
                last = int(times[-1][-1])
                if (last - first) * 1e-12 >= duration_s:
                    t, ch, _ = in_order(np.concatenate(times), np.concatenate(channels))
                    return t, ch
        raise TimeoutError(f"daemon at {self.stream_url}: no {duration_s} s of events within {timeout_s} s; "
                           "is the time tagger streaming (qnode status)?")

    def read_register(self, name: str, index: int = 0) -> int:
        return int(self.client.call("registers.read", name=name, index=index)["value"])

    def write_register(self, name: str, value: int, index: int = 0) -> int:
        return int(self.client.call("registers.write", name=name, value=int(value), index=index)["value"])


# --- histograms and the peak model ----------------------------------------------------------


def correlation(time_ps: np.ndarray, channel: np.ndarray, a: int, b: int, bin_ps: int,
                range_ps: int) -> CorrelationHistogram:
    hist = CorrelationHistogram(a, b, bin_ps, range_ps)
    hist.add_tags(np.ascontiguousarray(time_ps, np.int64), np.ascontiguousarray(channel, np.uint8))
    return hist


def bin_model(k: np.ndarray, mu: float, sigma: float, tail: float, quantized: bool) -> np.ndarray:
    """Fraction of the peak in histogram bin ``k`` (units of one tagger bin = one histogram bin).

    The delay's density: a Gaussian (``mu``, ``sigma``), convolved with an exponential tail
    (``tail``) when > 0. ``quantized``: both tags are whole bins, so bin k holds differences of
    exactly k bins: the density integrated against a triangle of half-width one bin around k.
    Otherwise bin k holds the delays in [k, k + 1)."""
    step = 0.01
    sigma = max(sigma, 0.02)
    lo = min(float(k.min()), mu) - 2 - 6 * sigma
    hi = max(float(k.max()), mu) + 2
    grid = lo + step * np.arange(int((hi - lo) / step) + 2)
    dens = np.exp(-0.5 * ((grid - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    if tail > 0.005:
        kernel = np.exp(-step * np.arange(len(grid)) / tail) * (step / tail)
        size = 1 << int(2 * len(grid) - 1).bit_length()
        dens = np.fft.irfft(np.fft.rfft(dens, size) * np.fft.rfft(kernel, size), size)[: len(grid)]
    cdf = np.cumsum(dens) * step
    if not quantized:
        return np.interp(k + 1, grid, cdf) - np.interp(k, grid, cdf)
    ramp = np.cumsum(cdf) * step  # integral of the density against (a - x)+
    return np.interp(k + 1, grid, ramp) - 2 * np.interp(k, grid, ramp) + np.interp(k - 1, grid, ramp)


@dataclass
class PeakFit:
    channel_a: int
    channel_b: int
    ok: bool
    reason: str
    offset_ps: float = math.nan  # where b's clicks sit relative to a's (peak position)
    offset_err_ps: float = math.nan
    sigma_ps: float = math.nan  # the pair's combined timing jitter (Gaussian RMS)
    sigma_err_ps: float = math.nan  # half the 68 % interval of the width's profile
    sigma_upper_ps: float = math.nan  # 95 % upper bound on the width
    sigma_resolved: bool = False  # False: the width is only bounded (jitter << bin), sigma_ps is not a measurement
    tail_ps: float = 0.0  # exponential tail (emitter lifetime), 0 for a Gaussian peak
    peak_counts: float = 0.0  # pairs in the peak (fit amplitude)
    background_per_bin: float = 0.0
    significance: float = 0.0  # peak counts / sqrt(background under a 3-bin window)
    bin_ps: int = 0
    delays_ps: list = field(default_factory=list, repr=False)  # histogram, for reports
    counts: list = field(default_factory=list, repr=False)
    model: list = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return asdict(self)


def _least_squares(residuals, p: np.ndarray, free: np.ndarray, iterations: int = 100):
    """Levenberg-Marquardt on the ``free`` parameters; returns (p, residuals, cost, jacobian)."""
    lam = 1e-2
    r = residuals(p)
    cost = float(r @ r)
    jac = np.zeros((len(r), len(p)))
    for _ in range(iterations):
        jac = np.zeros((len(r), len(p)))
        for j in np.flatnonzero(free):
            h = 1e-4 * max(abs(p[j]), 1.0)
            q = p.copy()
            q[j] += h
            jac[:, j] = (residuals(q) - r) / h
        jf = jac[:, free]
        a = jf.T @ jf
        g = jf.T @ r
        improved = converged = False
        for _ in range(10):
            try:
                step = np.linalg.solve(a + lam * np.diag(np.diag(a) + 1e-12), -g)
            except np.linalg.LinAlgError:
                lam *= 10
                continue
            q = p.copy()
            q[free] += step
            q[2] = min(max(q[2], math.log(SIGMA_MIN_BINS)), math.log(20.0))  # sigma between 0.02 and 20 bins
            q[3] = min(max(q[3], math.log(0.01)), math.log(50.0))
            rq = residuals(q)
            cq = float(rq @ rq)
            if cq < cost:
                p, r, improved = q, rq, True
                lam = max(lam / 3, 1e-9)
                converged = cost - cq < 1e-8 * cost + 1e-10
                cost = cq
                break
            lam *= 10
        if not improved or converged:
            break
    return p, r, cost, jac


def _width_profile(residuals, p: np.ndarray, free: np.ndarray, cost: float,
                   scale: float = 1.0) -> tuple[float, float, float, bool]:
    """The width's profile: the cost refitted with sigma held at points of a grid (the other
    free parameters follow), walking outwards from the best fit until the cost has risen past
    the 95 % level. Returns the 68 % interval (cost within 1 of the best), the 95 % upper bound
    (within 3.84) and whether the narrowest width the model allows is excluded at 95 %: when it
    is not, the data only bound the width from above (a jitter far below the tagger's bin hides
    inside the bins' triangle). ``scale``: the reduced chi-square when above 1 (the same
    inflation as the other parameters' errors)."""
    fixed = free.copy()
    fixed[2] = False
    best = float(np.exp(p[2]))
    limit68, limit95 = scale, 3.84 * scale
    ratio = 1.25  # grid step in sigma
    lowest, highest = SIGMA_MIN_BINS, 20.0

    def walk(side: int) -> tuple[list[float], list[float]]:
        sigmas, excess, q, sigma = [best], [0.0], p.copy(), best
        while excess[-1] <= limit95:
            sigma = sigma * ratio if side > 0 else sigma / ratio
            if not lowest * 0.999 <= sigma <= highest:
                if sigmas[-1] in (lowest, highest):
                    break
                sigma = lowest if side < 0 else highest  # the model's end of the range
            q = q.copy()
            q[2] = math.log(sigma)
            q, _, c, _ = _least_squares(residuals, q, fixed, iterations=30)  # warm start from the last point
            sigmas.append(sigma)
            excess.append(max(c - cost, 0.0))
        return sigmas, excess

    def bound(sigmas: list[float], excess: list[float], limit: float) -> float:
        for i in range(1, len(sigmas)):
            if excess[i] > limit:
                # the excess is quadratic near its minimum: interpolate its square root
                x0, x1 = math.log(sigmas[i - 1]), math.log(sigmas[i])
                y0, y1 = math.sqrt(excess[i - 1]), math.sqrt(excess[i])
                return float(math.exp(x0 + (math.sqrt(limit) - y0) / (y1 - y0) * (x1 - x0)))
        return float(sigmas[-1])  # never past the limit: the end of the model's range

    down, up = walk(-1), walk(+1)
    resolved = bool(down[1][-1] > limit95)
    return bound(*down, limit68), bound(*up, limit68), bound(*up, limit95), resolved


def fit_peak(hist: CorrelationHistogram, *, shape: str = "gaussian", tail_ps: float | None = None,
             quantized: bool = True, min_significance: float = 8.0, min_counts: int = 50) -> PeakFit:
    """Fit the histogram's peak (see the module doc). Never raises on bad data: a peak that is
    not there gives ``ok = False`` and says why. ``tail_ps`` fixes the exponential tail of an
    ``exp_tail`` peak (the emitter's lifetime, when known) instead of fitting it: with a few
    hundred pairs a free tail trades off against the jitter and the offset."""
    counts = hist.counts.astype(float)
    bin_ps = hist.bin_ps
    delays = hist.delays_ps
    base = PeakFit(hist.channel_a, hist.channel_b, ok=False, reason="", bin_ps=bin_ps,
                   delays_ps=delays.tolist(), counts=hist.counts.tolist())
    if counts.sum() == 0:
        base.reason = (f"no pairs between channels {hist.channel_a} and {hist.channel_b}: is light on both, "
                       "and are they enabled?")
        return base
    k = np.arange(len(counts), dtype=float)  # bin index: bin k starts at delays[0] + k bins
    background = float(np.median(counts))
    peak = int(np.argmax(counts))
    excess = counts - background
    near = np.abs(k - peak) <= 3
    amplitude0 = max(float(excess[near].sum()), 1.0)
    mu0 = float((k[near] * np.maximum(excess[near], 0)).sum() / max(np.maximum(excess[near], 0).sum(), 1e-9))
    tail = shape == "exp_tail"
    # parameters: amplitude, mu (bins), log sigma (bins), log tail (bins), background
    tail0 = (tail_ps / bin_ps) if tail_ps else 1.0
    p = np.array([amplitude0, mu0 - (min(tail0, 1.0) if tail else 0.0), math.log(0.3), math.log(tail0), background])
    free = np.array([True, True, True, tail and not tail_ps, True])

    def model(q):
        return q[0] * bin_model(k, q[1], math.exp(q[2]), math.exp(q[3]) if tail else 0.0, quantized) + q[4]

    def residuals(q):
        m = model(q)
        return (counts - m) / np.sqrt(np.maximum(m, 1.0))

    p, r, cost, jac = _least_squares(residuals, p, free)
    jf = jac[:, free]
    dof = max(len(counts) - int(free.sum()), 1)
    cov = np.linalg.pinv(jf.T @ jf) * max(cost / dof, 1.0)
    errors = np.full(len(p), np.nan)
    errors[free] = np.sqrt(np.maximum(np.diag(cov), 0.0))

    amplitude, background = float(p[0]), float(p[4])
    significance = amplitude / math.sqrt(max(3 * background, 1.0) + max(amplitude, 0.0))
    sigma_bins = math.exp(p[2])
    base.offset_ps = float(delays[0] + p[1] * bin_ps)
    base.offset_err_ps = float(errors[1] * bin_ps)
    base.sigma_ps = sigma_bins * bin_ps
    base.tail_ps = math.exp(p[3]) * bin_ps if tail else 0.0
    base.peak_counts, base.background_per_bin, base.significance = amplitude, background, significance
    base.model = model(p).tolist()
    if amplitude < min_counts or significance < min_significance:
        base.reason = (f"peak not significant: {amplitude:.0f} pairs over {background:.1f} per bin "
                       f"(significance {significance:.1f} < {min_significance}); measure longer or check the light")
        return base
    if not abs(p[1] - peak) <= 3:
        base.reason = "fit did not converge near the fullest bin; measure longer"
        return base
    # the width's uncertainty from its profile, not the curvature: near the narrowest width the
    # cost is flat, and the curvature's error says nothing there
    low, high, upper95, resolved = _width_profile(residuals, p, free, cost, scale=max(cost / dof, 1.0))
    base.sigma_err_ps = 0.5 * (high - low) * bin_ps
    base.sigma_upper_ps = upper95 * bin_ps
    base.sigma_resolved = resolved
    base.ok, base.reason = True, "ok"
    return base


# --- delays ------------------------------------------------------------------------------


@dataclass
class Pair:
    channel_a: int
    channel_b: int
    shape: str = "gaussian"  # or "exp_tail" (photons from an emitter with a lifetime)
    range_ps: int = 20_000
    tail_ps: float | None = None  # exp_tail: the emitter's lifetime if known (else fitted)


def solve_delays(fits: Iterable[PeakFit], current_bins: dict[int, int], bin_ps: int) -> dict[int, int]:
    """Per-channel delays (bins, >= 0) that put every fitted peak at zero.

    Offsets were measured with ``current_bins`` applied; the raw arrival of each channel (relative
    to the first channel of its group of connected pairs) is recovered, and every channel gets the
    delay that brings it to the latest one of its group. Channels in no good fit keep their delay.
    """
    fits = [f for f in fits if f.ok]
    arrival: dict[int, float] = {}  # raw (undelayed) arrival relative to the group's anchor
    group: dict[int, int] = {}
    pending = list(fits)
    while pending:
        progressed = False
        for f in list(pending):
            a, b = f.channel_a, f.channel_b
            # measured offset = (raw_b + d_b) - (raw_a + d_a)
            raw = f.offset_ps - (current_bins.get(b, 0) - current_bins.get(a, 0)) * bin_ps
            if a not in arrival and b not in arrival:
                if progressed or pending[0] is not f:
                    continue
                arrival[a], group[a] = 0.0, a
            if a in arrival and b not in arrival:
                arrival[b], group[b] = arrival[a] + raw, group[a]
            elif b in arrival and a not in arrival:
                arrival[a], group[a] = arrival[b] - raw, group[b]
            pending.remove(f)  # both known: a redundant pair (could be used as a check)
            progressed = True
        if not progressed and pending:
            f = pending[0]
            arrival[f.channel_a], group[f.channel_a] = 0.0, f.channel_a
    out = dict(current_bins)
    for anchor in set(group.values()):
        members = [c for c in group if group[c] == anchor]
        latest = max(arrival[c] for c in members)
        for c in members:
            out[c] = int(round((latest - arrival[c]) / bin_ps))
    return out


def apply_delays(source, delays_bins: dict[int, int]) -> dict[int, int]:
    """Write ``ts_delay_bins`` for each channel; returns what the registers read back."""
    from qnode.firmware.registers import DELAY_BITS

    for ch, value in delays_bins.items():
        if not 0 <= value < 1 << DELAY_BITS:
            raise ValueError(f"delay {value} bins for channel {ch} does not fit ts_delay_bins ({DELAY_BITS} bits)")
    return {ch: source.write_register("ts_delay_bins", value, ch) for ch, value in delays_bins.items()}


@dataclass
class DelayCalibration:
    fits: list[PeakFit]
    before_bins: dict[int, int]
    after_bins: dict[int, int]
    applied: bool
    residual_ps: dict[str, float]  # peak offsets re-measured after applying (pair -> ps)
    reason: str = ""

    def to_dict(self) -> dict:
        return {"fits": [f.to_dict() for f in self.fits], "before_bins": self.before_bins,
                "after_bins": self.after_bins, "applied": self.applied, "residual_ps": self.residual_ps,
                "reason": self.reason}


def pair_key(a: int, b: int) -> str:
    return f"{a}-{b}"


def calibrate_delays(source, pairs: list[Pair], *, duration_s: float = 2.0, apply: bool = True,
                     verify_s: float = 1.0, min_significance: float = 8.0) -> DelayCalibration:
    """Measure, fit, and (if every pair's peak is significant) write the delays, then verify.

    Refuses to apply (``applied = False``, ``reason``) when any pair's peak is not significant:
    a half-right set of delays is worse than the old one."""
    channels = sorted({c for p in pairs for c in (p.channel_a, p.channel_b)})
    before = {c: source.read_register("ts_delay_bins", c) for c in channels}
    t, ch = source.acquire(duration_s)
    fits = [fit_peak(correlation(t, ch, p.channel_a, p.channel_b, source.bin_ps, p.range_ps), shape=p.shape,
                     tail_ps=p.tail_ps, min_significance=min_significance) for p in pairs]
    bad = [f for f in fits if not f.ok]
    if bad:
        reason = "; ".join(f"{pair_key(f.channel_a, f.channel_b)}: {f.reason}" for f in bad)
        return DelayCalibration(fits, before, before, False, {}, f"not applied: {reason}")
    after = solve_delays(fits, before, source.bin_ps)
    residual: dict[str, float] = {}
    if apply:
        apply_delays(source, after)
        if verify_s > 0:
            t, ch = source.acquire(verify_s)
            for p in pairs:
                f = fit_peak(correlation(t, ch, p.channel_a, p.channel_b, source.bin_ps, p.range_ps), shape=p.shape,
                             tail_ps=p.tail_ps, min_significance=0)
                residual[pair_key(p.channel_a, p.channel_b)] = f.offset_ps
    return DelayCalibration(fits, before, after, apply, residual, "ok")


# --- the coincidence window --------------------------------------------------------------


@dataclass
class WindowChoice:
    channel_a: int
    channel_b: int
    window_ps: int  # width (whole bins)
    start_ps: int  # first delay in the window (bin start)
    stop_ps: int  # end of the window (exclusive)
    coincidences: float  # true pairs in the window (counts - accidentals)
    accidentals: float
    car: float
    g2_zero: float  # counts in the window / accidentals it holds
    figure_of_merit: float  # C / sqrt(C + A)
    criterion: str
    duration_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def optimise_window(hist: CorrelationHistogram, *, target_car: float | None = None, max_bins: int = 20,
                    background_per_bin: float | None = None, duration_s: float | None = None) -> WindowChoice:
    """The contiguous window around the peak that maximises C / sqrt(C + A) or, with
    ``target_car``, the widest one whose CAR still meets it (most pairs at that purity)."""
    counts = hist.counts.astype(float)
    n = len(counts)
    if background_per_bin is None:
        far = np.abs(np.arange(n) - np.argmax(counts)) > n // 4
        background_per_bin = float(counts[far].mean()) if far.any() else float(np.median(counts))
    bg = max(background_per_bin, 1e-9)
    peak = int(np.argmax(counts))
    csum = np.concatenate(([0.0], np.cumsum(counts)))
    best = None
    for lo in range(max(0, peak - max_bins + 1), peak + 1):
        for hi in range(peak + 1, min(n, lo + max_bins) + 1):
            total = csum[hi] - csum[lo]
            acc = bg * (hi - lo)
            true = total - acc
            car = true / acc
            fom = true / math.sqrt(max(total, 1e-9))
            if target_car is not None:
                if car < target_car:
                    continue
                key = (true, fom)
            else:
                key = (fom, -(hi - lo))
            if best is None or key > best[0]:
                best = (key, lo, hi, true, acc, car, fom, total)
    duration_s = duration_s if duration_s is not None else hist.duration_ps * 1e-12
    if best is None:
        raise ValueError(f"no window around the peak reaches CAR {target_car}; lower the target or measure longer")
    _, lo, hi, true, acc, car, fom, total = best
    delays = hist.delays_ps
    return WindowChoice(hist.channel_a, hist.channel_b, window_ps=int((hi - lo) * hist.bin_ps),
                        start_ps=int(delays[lo]), stop_ps=int(delays[lo] + (hi - lo) * hist.bin_ps),
                        coincidences=float(true), accidentals=float(acc), car=float(car),
                        g2_zero=float(total / acc), figure_of_merit=float(fom),
                        criterion="target_car" if target_car is not None else "max C/sqrt(C+A)",
                        duration_s=float(duration_s))


def analytic_window(pair_rate_hz: float, singles_a_hz: float, singles_b_hz: float, sigma_ps: float,
                    offset_ps: float, bin_ps: int, duration_s: float, max_bins: int = 20,
                    target_car: float | None = None) -> tuple[int, int]:
    """The optimum window (start_ps, stop_ps) from the model alone: a Gaussian peak of
    ``pair_rate_hz`` at ``offset_ps`` with jitter ``sigma_ps``, flat accidentals
    ``singles_a * singles_b * bin``, tags quantized to ``bin_ps``. For checking
    :func:`optimise_window` against the simulation's true values."""
    span = max_bins + 3
    k = np.arange(-span, span + 1, dtype=float)
    frac = bin_model(k, offset_ps / bin_ps, sigma_ps / bin_ps, 0.0, True)
    expected = pair_rate_hz * duration_s * frac + singles_a_hz * singles_b_hz * bin_ps * 1e-12 * duration_s
    # the expectation, shaped like a histogram (bins -span .. span - 1)
    fake = type("H", (), {})()
    fake.counts = expected[:-1]
    fake.bin_ps = bin_ps
    fake.delays_ps = (k[:-1] * bin_ps).astype(np.int64)
    fake.duration_ps = int(duration_s * 1e12)
    fake.channel_a, fake.channel_b = 0, 1
    bg = singles_a_hz * singles_b_hz * bin_ps * 1e-12 * duration_s
    choice = optimise_window(fake, target_car=target_car, max_bins=max_bins, background_per_bin=bg)
    return choice.start_ps, choice.stop_ps
