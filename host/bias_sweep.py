"""SNSPD bias sweep: find each detector's efficiency plateau and switching current, then bias it.

At each bias step the controller's counters give a count rate per detector. A detector's rate
rises along the efficiency sigmoid, flattens on the plateau (where only dark counts still grow,
exponentially), and drops to nothing when the bias passes the switching current and the wire
latches normal. The sweep:

- steps every detector together from ``start_ua`` to ``stop_ua`` (``step_ua``), one counter
  period per step (the first after the step is discarded on real hardware: it may straddle
  the change);
- marks a detector latched when its rate falls below ``latch_fraction`` of its best so far;
  its switching current is the last step before (the sweep goes on for the others, and stops
  when all have latched);
- plateau level: the rate on the flattest part of the curve (smallest relative slope);
  plateau start: the lowest bias whose rate is within ``plateau_tolerance`` of it;
- dark counts per step: with the light off (``light`` hook, when the lab has a shutter) or else
  estimated as the excess over the plateau level (the exponential rise under the latch);
- recovers every latched detector (bias to zero, then up) and sets each to
  ``bias_fraction`` x its switching current, raised to the plateau start if that is below it;
  checks it counts again (a detector still silent is reported, not hidden).

Drivers: :class:`EosCounts` adapts the Single Quantum Eos driver. ``advance(seconds)`` is how
time passes: on hardware nothing (the counter period is waited for), in the simulated lab the
SimClock's ``advance``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class BiasSweepSettings:
    detectors: list[int] = field(default_factory=lambda: [1, 2, 3, 4])  # controller channels (1-based)
    start_ua: float = 6.0
    stop_ua: float = 13.0
    step_ua: float = 0.25
    period_ms: float = 1000.0  # counter period per step (lab time)
    bias_fraction: float = 0.85  # final bias as a fraction of the switching current
    plateau_tolerance: float = 0.02  # within 2 % of the plateau level counts as on it
    latch_fraction: float = 0.05  # rate below 5 % of the best so far: latched
    min_rate_hz: float = 50.0  # a detector below this at its final bias is reported as not counting


@dataclass
class DetectorSweep:
    detector: int
    bias_ua: list[float]
    rate_hz: list[float]
    dark_rate_hz: list[float]
    dark_measured: bool  # False: estimated as the excess over the plateau
    latched: bool
    switching_ua: float | None
    plateau_rate_hz: float | None
    plateau_start_ua: float | None
    chosen_bias_ua: float | None
    bias_fraction: float | None
    final_rate_hz: float | None = None
    recovered: bool | None = None
    ok: bool = False
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class EosCounts:
    """Bias and counts through the Single Quantum Eos driver."""

    def __init__(self, driver, *, advance: Callable[[float], object] | None = None):
        self.driver = driver
        self.advance = advance
        self.period_s = driver.measurement_period_ms() / 1000.0

    def set_period_ms(self, period_ms: float) -> None:
        self.driver.set_measurement_period_ms(period_ms)
        self.period_s = period_ms / 1000.0
        if self.advance is not None:
            self.rates_hz()  # the period in flight had the old length

    def biases_ua(self) -> list[float]:
        return self.driver.bias_currents_ua()

    def set_biases_ua(self, biases_ua: list[float]) -> None:
        self.driver.set_bias_currents_ua(biases_ua)

    def rates_hz(self) -> list[float]:
        """Count rate per detector over one full counter period after this call."""
        if self.advance is not None:
            self.advance(self.period_s)
            _, counts = self.driver.next_counts()
        else:
            self.driver.latest_counts()  # may straddle the last change: discard
            _, counts = self.driver.next_counts()
        return [c / self.period_s for c in counts]


def _analyse(detector: int, bias: np.ndarray, rate: np.ndarray, latched_at: int | None,
             dark: np.ndarray | None, settings: BiasSweepSettings) -> DetectorSweep:
    good = slice(0, latched_at) if latched_at is not None else slice(None)
    b, r = bias[good], rate[good]
    out = DetectorSweep(detector, bias.tolist(), rate.tolist(), [], dark is not None, latched_at is not None,
                        None, None, None, None, None)
    if latched_at is not None:
        out.switching_ua = float(bias[latched_at - 1]) if latched_at > 0 else None
    if len(r) < 4 or r.max() <= 0:
        out.reason = "too few steps with counts below the latch; widen the sweep (start_ua, stop_ua)"
        return out
    # The flattest stretch: smallest |d ln(rate) / dI| over three consecutive steps.
    log_r = np.log(np.maximum(r, 1e-9))
    slope = np.abs(np.gradient(log_r, b))
    smooth = np.convolve(slope, np.ones(3) / 3, mode="same")
    smooth[0] = smooth[-1] = np.inf
    flat = int(np.argmin(smooth))
    plateau = float(np.median(r[max(flat - 1, 0) : flat + 2]))
    out.plateau_rate_hz = plateau
    # Plateau start from the rising edge, fitted as a logistic (logit of rate / plateau is a
    # line in the bias): robust to the counts' shot noise, unlike the first step past 98 %.
    tol = settings.plateau_tolerance
    frac = r[: flat + 1] / plateau
    edge = (frac > 0.05) & (frac < 0.95)
    if np.count_nonzero(edge) >= 3:
        slope_per_ua, intercept = np.polyfit(b[: flat + 1][edge], np.log(frac[edge] / (1 - frac[edge])), 1)
        if slope_per_ua > 0:
            out.plateau_start_ua = float((math.log((1 - tol) / tol) - intercept) / slope_per_ua)
    if out.plateau_start_ua is None:  # too few points on the edge: the first step on the plateau
        on = np.flatnonzero(r >= (1 - tol) * plateau)
        out.plateau_start_ua = float(b[on[0]]) if len(on) else None
    if dark is not None:
        out.dark_rate_hz = dark.tolist()
    else:  # the excess over the plateau, from its flattest point up
        out.dark_rate_hz = [float(max(x - plateau, 0.0)) if i >= flat else 0.0 for i, x in enumerate(rate)]
    if out.switching_ua is None:
        out.reason = (f"no latch up to {bias[-1]:.2f} uA: the switching current is above the sweep; "
                      "raise stop_ua (carefully) to find it")
        return out
    if out.plateau_start_ua is None or out.plateau_start_ua >= out.switching_ua:
        out.reason = "no plateau before the latch: the detector may be warm (check the cryostat)"
        return out
    chosen = settings.bias_fraction * out.switching_ua
    if chosen < out.plateau_start_ua:
        chosen = out.plateau_start_ua
        out.reason = f"bias_fraction {settings.bias_fraction} is below the plateau; biased at its start"
    out.chosen_bias_ua = round(chosen, 3)
    out.bias_fraction = out.chosen_bias_ua / out.switching_ua
    out.ok = True
    out.reason = out.reason or "ok"
    return out


def sweep_bias(counts: EosCounts, settings: BiasSweepSettings | None = None,
               light: Callable[[bool], object] | None = None, *, apply: bool = True) -> list[DetectorSweep]:
    """Run the sweep (see the module doc); returns one :class:`DetectorSweep` per detector."""
    s = settings or BiasSweepSettings()
    if counts.period_s * 1000 != s.period_ms:
        counts.set_period_ms(s.period_ms)
    index = [d - 1 for d in s.detectors]
    biases = counts.biases_ua()
    original = list(biases)
    steps = np.arange(s.start_ua, s.stop_ua + s.step_ua / 2, s.step_ua)
    rates, darks = [], []
    best = np.zeros(len(index))
    latched_at: list[int | None] = [None] * len(index)
    # start from below: a detector latched by an earlier state is reset by the zero
    counts.set_biases_ua([0.0 if i in index else v for i, v in enumerate(biases)])
    for k, step in enumerate(steps):
        for i in index:
            biases[i] = float(step)
        counts.set_biases_ua(biases)
        r = np.array(counts.rates_hz())[index]
        if light is not None:
            light(False)
            darks.append(np.array(counts.rates_hz())[index])
            light(True)
        rates.append(r)
        for j in range(len(index)):
            if latched_at[j] is None and best[j] > 0 and r[j] < s.latch_fraction * best[j]:
                latched_at[j] = k
            best[j] = max(best[j], r[j])
        if all(at is not None for at in latched_at):
            break
    rates_arr = np.array(rates)
    dark_arr = np.array(darks) if darks else None
    results = [_analyse(d, steps[: len(rates)], rates_arr[:, j], latched_at[j],
                        dark_arr[:, j] if dark_arr is not None else None, s)
               for j, d in enumerate(s.detectors)]
    # Recover: everything to zero (unlatches), then each to its chosen bias (or back where it was).
    final = list(biases)
    for j, res in enumerate(results):
        final[index[j]] = res.chosen_bias_ua if (apply and res.ok) else _fallback_ua(res, original[index[j]])
    counts.set_biases_ua([0.0 if i in index else v for i, v in enumerate(final)])
    counts.set_biases_ua(final)
    check = np.array(counts.rates_hz())[index]
    for j, res in enumerate(results):
        res.final_rate_hz = float(check[j])
        res.recovered = bool(check[j] >= s.min_rate_hz)
        if not res.recovered:
            res.ok = False
            res.reason = (f"detector {res.detector} still does not count at {final[index[j]]} uA "
                          f"({check[j]:.0f} /s): latched or no light; check the cryostat and the fibre")
    return results


def _fallback_ua(result: DetectorSweep, before_ua: float) -> float:
    """Where a detector goes when the sweep gives no answer: where it was, kept below a latch seen."""
    if result.switching_ua is not None:
        return min(before_ua, round(0.85 * result.switching_ua, 3))
    return before_ua
