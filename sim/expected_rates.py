"""What the simulated lab's physics predicts for the herald unit, from the config alone.

The single-click herald rate the time tagger should report when it runs the config's
``[fpga.herald]`` on the lab of ``[sim]``: per attempt (one per sync pulse), the probability of
exactly one click on the heralding detectors inside the window, from

- the attempts: the sequencer sends a sync only for laser pulses whose window at the station
  misses the reference bursts (``attempt_syncs``, sim/source.py): 900 of each 1 ms cycle's 1000;
- the emitters: each puts a photon at the station with p = alpha x transmission; one photon
  or two bunched ones (HOM) make one click on one detector, with the detector's efficiency and the share of the 1 ns emission tail that the
  window catches (its offset against flight time, cable delay and the registers' delay_ps);
- the background in the window: dark counts of both detectors, and reference light if the herald
  registers put the window inside a burst (``rate_hz`` detected in total: a window there holds
  0.01 photons, ten times an emitter's chance; none with the reference lab's settings).

Neglected (each well below the Poisson tolerance of a 10 s run): afterpulses, a second click
hidden in a detector's 20 ns recovery, the sync's 5 ps and the detectors' 50 ps jitter against
the window's edges, and bin rounding of the click times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qnode.host.config import LabConfig

from .source import attempt_syncs, detector_models


@dataclass(frozen=True)
class HeraldExpectation:
    attempts_hz: float  # sync pulses per second: every one is an attempt
    per_attempt: float  # heralds per attempt, over every attempt
    per_clean_attempt: float  # over the attempts whose window misses the bursts (nearly all of them)
    clean_fraction: float  # share of attempts that are clean
    burst_window_fraction: float  # share of attempts whose window falls in a reference burst
    rate_hz: float  # heralds per second

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _caught(start_ps: float, length_ps: float, tau_ps: float) -> float:
    """Share of an exponential emission (lifetime tau) starting ``start_ps`` after the window
    opens that falls inside the window."""
    lo, hi = -start_ps, length_ps - start_ps  # the emission delay that lands at the window's edges
    if hi <= 0:
        return 0.0
    if tau_ps <= 0:
        return 1.0 if lo <= 0 < hi else 0.0
    return math.exp(-max(lo, 0.0) / tau_ps) - math.exp(-hi / tau_ps)


def expected_heralds(config: LabConfig) -> HeraldExpectation:
    """The herald rate the config's [fpga.herald] gives on the config's simulated lab
    (single_click; ValueError for a config without [sim.sync] and [sim.heralding])."""
    lab, fpga = config.sim, config.fpga
    if lab is None or lab.sync is None or lab.heralding is None:
        raise ValueError("needs [sim.sync] and [sim.heralding] (the simulated lab's attempts)")
    herald = fpga.herald
    if herald.rule != "single_click":
        raise ValueError(f"computed for the single_click rule, not {herald.rule!r}")
    h, ref = lab.heralding, lab.reference
    channels = fpga.herald_channels()
    bin_ps = fpga.bin_ps
    offset_ps = round(herald.offset_ps / bin_ps) * bin_ps  # what the register holds
    length_ps = round(herald.length_ps / bin_ps) * bin_ps
    delay = {ch.index: round(ch.delay_ps / bin_ps) * bin_ps for ch in fpga.channels}
    sync = channels["sync_channel"]
    detectors = [c for c in channels["detectors"] if c in (h.channel_plus, h.channel_minus)]
    models = detector_models(lab, sorted(set(channels["detectors"]) | {sync}))
    cable = lab.cable_delay_ps

    def window_start(c):  # the window on detector c, in lab time after the sync pulse
        return cable.get(sync, 0) + delay.get(sync, 0) + offset_ps - delay.get(c, 0) - cable.get(c, 0)

    # per emitted photon, the chance of a click on each output (half the photons each way)
    click = {c: models[c].efficiency * _caught(h.arrival_delay_ps - window_start(c), length_ps,
                                               h.emitter_lifetime_ps) for c in detectors}
    p = h.emission_probability * h.transmission
    q_photon = sum(0.5 * (2 * p * (1 - p) * click[c] + p * p * (1 - (1 - click[c]) ** 2)) for c in detectors)
    dark = sum(models[c].dark_rate_hz for c in channels["detectors"]) * length_ps * 1e-12

    # one reference cycle of laser pulses (the sync period divides the 1 ms cycle in the reference
    # lab; otherwise 100 cycles average it out), of which the sequencer sends the attempts as syncs
    period_ps = 1e12 / lab.sync.rate_hz
    cycle_ps = ref.cycle_ps if ref is not None else period_ps
    n = int(round(cycle_ps / period_ps)) if (cycle_ps / period_ps).is_integer() else int(100 * cycle_ps / period_ps)
    t = np.arange(n) * period_ps
    t = attempt_syncs(lab, np.rint(t).astype(np.int64)).astype(float)
    lam_ref = np.zeros(len(t))
    if ref is not None:  # reference light in a window the herald registers put inside a burst
        for c in channels["detectors"]:
            lo = t + window_start(c)
            inside = np.clip(ref.burst_ps - lo % ref.cycle_ps, 0, length_ps)  # bursts open each cycle
            inside += np.clip(lo % ref.cycle_ps + length_ps - ref.cycle_ps, 0, length_ps)  # the next one
            if c in (h.channel_plus, h.channel_minus):  # (1 +- V cos phi) / 2 each: half on average
                lam_ref += ref.rate_hz * 0.5 * np.minimum(inside, length_ps) * 1e-12
    in_burst = lam_ref > 0
    lam = dark + lam_ref
    exactly_one = np.exp(-lam) * (q_photon + (1 - q_photon) * lam)
    clean = ~in_burst
    attempts_hz = lab.sync.rate_hz * len(t) / n
    return HeraldExpectation(
        attempts_hz=attempts_hz,
        per_attempt=float(exactly_one.mean()),
        per_clean_attempt=float(exactly_one[clean].mean()) if clean.any() else 0.0,
        clean_fraction=float(clean.mean()),
        burst_window_fraction=float(in_burst.mean()),
        rate_hz=float(exactly_one.mean() * attempts_hz),
    )
