"""Stimulus for the full core from the simulated lab (sim/source.py, lab_configs/sim.toml),
time-compressed so that attempt windows, reference bursts and coincidences all fall inside a
few thousand clocks of RTL simulation.

What changes against the reference lab (everything else is lab_configs/sim.toml):

| | reference lab | compressed |
|---|---|---|
| sync (attempt) rate | 1 MHz | 25 MHz (40 ns apart) |
| photon arrival after the sync | 49 us (49 attempts in flight) | 1.96 us (49 attempts in flight) |
| alpha x transmission per emitter | 0.05 x 0.01 | 0.3 x 0.3 (a herald every ~7 attempts) |
| SPDC pair rate | 1e6 /s | 1e8 /s |
| reference bursts | 100 us of each 1 ms, 1e6 /s | 2 us of each 20 us, 5e7 /s (100 photons a burst, as the lab) |
| dark counts | 100 /s | 1e5 /s |

Detector efficiency, jitter, dead time, afterpulsing, cable delays and the 10 ns window are the
lab's. Used by test_core_units.py (Amaranth) and cocotb_core.py (Verilator); importable on its
own (the cocotb side puts tests/gateware on the path).
"""

from __future__ import annotations

import numpy as np

from qnode.sim.twin import TwinConfig, samples_from_pulses
from qnode.sim.twin_herald import RULE_SINGLE, RULE_TWO, HeraldSettings

SYNC_RATE_HZ = 25e6
ARRIVAL_PS = 49 * 40_000  # 49 attempts in flight, as the reference lab's 49 us at 1 MHz
DETECTOR_CABLE_PS = 12_400  # D+ (D- 12 900): SCENARIO.md, until calibration writes delays
PULSE_WIDTH_BINS = 2


def compressed_lab(seed: int):
    """The reference lab's config with the changes in the table above."""
    from qnode.host.config import load_config

    config = load_config()
    sim = config.sim
    sim = sim.model_copy(update={
        "seed": seed,
        "sync": sim.sync.model_copy(update={"rate_hz": SYNC_RATE_HZ}),
        "pair_source": sim.pair_source.model_copy(update={"rate_hz": 1e8}),
        "heralding": sim.heralding.model_copy(update={
            "arrival_delay_ps": ARRIVAL_PS, "emission_probability": 0.3, "transmission": 0.3}),
        "reference": sim.reference.model_copy(update={
            "cycle_ps": 20_000_000, "burst_ps": 2_000_000, "rate_hz": 5e7}),
        "detector": sim.detector.model_copy(update={"dark_rate_hz": 1e5}),
    })
    return config.model_copy(update={"sim": sim})


def lab_case(seed: int, *, oversampling: int, sys_clk_hz: int, n_clocks: int, start_now: int = 0,
             fifo_depth: int = 8, output_depth: int = 8, drain_clocks: int = 300):
    """(TwinConfig with the herald and coincidence registers, sample words [n_clocks, 8]).

    Clicks of the compressed lab for the run minus ``drain_clocks``; the herald unit set up for
    the lab's single-click rule (even seeds) or the two-click rule (odd seeds; the late window 2
    windows after the early one), a veto on the spare channel 5 for every third seed; four
    coincidence patterns (SPDC arms, D+ and D-, 2-of-3 on the sync and arms, sync with D+/D-),
    three of them emitting COINCIDENCE words."""
    from qnode.sim.source import PhotonSource

    config = compressed_lab(seed)
    bin_ps = 10**12 // (sys_clk_hz * oversampling)
    span_ps = (n_clocks - drain_clocks) * oversampling * bin_ps
    clicks = PhotonSource(config).generate(span_ps)
    window_bins = round(config.sim.heralding.window_ps / bin_ps)
    herald = HeraldSettings(
        rule=RULE_SINGLE, sync_channel=0, detector_mask=0b11000,
        veto_mask=0b100000 if seed % 2 else 0,
        offset_bins=round((ARRIVAL_PS + DETECTOR_CABLE_PS) / bin_ps), length_bins=window_bins,
        late_bins=2 * window_bins, pin_clocks=1 + seed % 3)
    dead_time_bins = [round(8000 / bin_ps)] * 8  # the lab's fpga.channels dead_time_ps
    cfg = TwinConfig(
        channels=8, oversampling=oversampling, sys_clk_hz=sys_clk_hz, fifo_depth=fifo_depth,
        output_depth=output_depth, start_now=start_now, dead_time_bins=dead_time_bins,
        coinc_mask=[0b110, 0b11000, 0b111, 0b11001],
        coinc_window_bins=[window_bins, window_bins, 2 * window_bins, 3 * window_bins],
        coinc_min_fold=[2, 2, 2, 2], coinc_emit=0b1011, herald=herald)
    bins = clicks["time_ps"] // bin_ps + start_now * oversampling
    samples = samples_from_pulses(bins, clicks["channel"].astype(np.int64), PULSE_WIDTH_BINS,
                                  n_clocks, cfg)
    return cfg, samples


def register_settings(cfg: TwinConfig) -> dict[str, list[int]]:
    """Register name -> values (per channel or pattern) for the core, from a TwinConfig."""
    h = cfg.herald
    out = dict(ts_delay_bins=cfg.delay_bins, ts_dead_time_bins=cfg.dead_time_bins,
               ts_edge=cfg.edge, ts_enable=cfg.enable,
               coinc_mask=cfg.coinc_mask, coinc_window_bins=cfg.coinc_window_bins,
               coinc_min_fold=cfg.coinc_min_fold, coinc_emit=[cfg.coinc_emit])
    for name in ("rule", "sync_channel", "detector_mask", "veto_mask", "offset_bins",
                 "length_bins", "late_bins", "pin_clocks"):
        out[f"herald_{name}"] = [int(getattr(h, name))]
    return out


def completing_words(cfg: TwinConfig, samples, attempts) -> np.ndarray:
    """For attempt numbers (sync tags since reset): the sample clock, counted from reset, of
    the word holding the attempt's last window bin on the fastest watched channel, computed
    from the stimulus: the sync edge's time, the offset, the rule's windows and the delays."""
    from qnode.sim.twin import edges_from_samples, timestamp

    h = cfg.herald
    entries = timestamp(edges_from_samples(samples, cfg), cfg)
    sync_time = entries.time[entries.channel(h.sync_channel)][np.asarray(attempts, np.int64)]
    last = sync_time + h.offset_bins + (h.late_bins if h.rule == RULE_TWO else 0) + h.length_bins - 1
    watched = h.detector_mask | h.veto_mask
    d_min = min(cfg.delay_bins[c] for c in range(cfg.channels) if watched >> c & 1)
    return (last - d_min) // cfg.oversampling - cfg.start_now
