"""The herald and coincidence twins (sim/twin_herald.py, event for event the RTL's) on the
reference lab's clicks (qnode.sim.source.PhotonSource, lab_configs/sim.toml) agree with the
analytic rates of the lab's physics, true plus accidental, within statistical tolerance."""

import math

import numpy as np
import pytest

from qnode.host.config import load_config
from qnode.sim.source import PhotonSource, attempt_syncs
from qnode.sim.twin import TwinConfig, timestamp
from qnode.sim.twin_herald import (
    OUTCOME_PSI_MINUS, OUTCOME_PSI_PLUS, HeraldSettings, coincidences, heralds,
)

DURATION_S = 4.0
CABLE_PS = {3: 12_400, 4: 12_900}  # SCENARIO.md: D+ and D- delays after the sync (uncalibrated)


@pytest.fixture(scope="module")
def lab():
    config = load_config()
    source = PhotonSource(config)
    clicks = np.concatenate([source.generate(500_000_000_000) for _ in range(int(DURATION_S * 2))])
    cfg = TwinConfig.from_lab(config.fpga)
    bins = clicks["time_ps"] // cfg.bin_ps
    edges = [bins[clicks["channel"] == c] for c in range(cfg.channels)]
    return config, source, cfg, clicks, timestamp(edges, cfg)


def within(observed, expected, sigmas=4.0):
    """Poisson counts: |observed - expected| within ``sigmas`` standard deviations."""
    sigma = math.sqrt(expected)
    assert abs(observed - expected) <= sigmas * sigma, (observed, expected, sigma)


def test_single_click_heralds_match_2_alpha_eta(lab):
    config, source, cfg, clicks, entries = lab
    h = config.sim.heralding
    offset_bins = 49_000 + 12  # 49 us flight, then the detectors' ~12.4 / 12.9 ns cables
    settings = HeraldSettings.from_lab(h, cfg.bin_ps, offset_bins=offset_bins)
    assert (settings.length_bins, settings.detector_mask) == (10, 0b11000)
    res = heralds(entries, settings, channels=cfg.channels, oversampling=cfg.oversampling,
                  delay_bins=cfg.delay_bins)
    # The attempts: the laser pulses the sequencer sends as syncs (their windows miss the bursts).
    period_ps = round(1e12 / config.sim.sync.rate_hz)
    laser_ps = np.arange(round(DURATION_S * config.sim.sync.rate_hz), dtype=np.int64) * period_ps
    sync_ps = attempt_syncs(config.sim, laser_ps)
    n_attempts = res.counters["herald_attempt_count"]
    assert n_attempts == len(sync_ps) == round(DURATION_S * 900_000)
    assert res.counters["herald_late_count"] == 0

    # Attempts whose window keeps clear of the reference bursts (100 us of each 1 ms) by two
    # window lengths, so no burst light reaches it whatever the cable delays: nearly all of them.
    ref = config.sim.reference
    start = (sync_ps + h.arrival_delay_ps) % ref.cycle_ps
    clean = (start >= ref.burst_ps + 2 * h.window_ps) & (start + 3 * h.window_ps <= ref.cycle_ps)
    assert clean.mean() > 0.99
    n_clean = int(clean.sum())
    got = clean[res.attempt_index]

    # Analytic probability per attempt of exactly one click in the window.
    p = h.emission_probability * h.transmission  # per emitter, a photon at the station
    eta = source.detectors[3].efficiency
    assert eta == source.detectors[4].efficiency == 0.85
    tau = h.emitter_lifetime_ps
    window_ps = settings.length_bins * cfg.bin_ps

    def caught(cable_ps):  # photon (exponential emission) inside the window; the sync bin is
        # k * 1000 or k * 1000 - 1 (5 ps sync jitter), equally often
        ends = [(offset_bins - 49_000 + shift) * cfg.bin_ps + window_ps - cable_ps for shift in (0, -1)]
        return np.mean([1 - math.exp(-e / tau) for e in ends])

    dark = [source.detectors[c].dark_rate_hz * window_ps * 1e-12 for c in (3, 4)]
    per_side = {}
    for ch in (3, 4):
        f = caught(CABLE_PS[ch])
        # one photon, or two that bunch onto this output (HOM): one click either way (dead time)
        photon = 0.5 * (2 * p * (1 - p) * eta * f + p * p * (1 - (1 - eta) ** 2) * f)
        per_side[ch] = photon
    photon_click = sum(per_side.values())
    p_dark_one = sum(dark)
    success = {ch: per_side[ch] * (1 - p_dark_one) + (1 - photon_click) * dark[ch - 3]
               for ch in (3, 4)}
    p_success = sum(success.values())
    # SCENARIO.md's rule of thumb: about 2 * alpha * eta_total
    assert p_success == pytest.approx(2 * h.emission_probability * h.transmission * eta, rel=0.01)

    plus = int(((res.outcome == OUTCOME_PSI_PLUS) & got).sum())
    minus = int(((res.outcome == OUTCOME_PSI_MINUS) & got).sum())
    print(f"\nclean attempts {n_clean}: psi+ {plus} (expected {success[3] * n_clean:.0f}), "
          f"psi- {minus} (expected {success[4] * n_clean:.0f}); per attempt "
          f"{(plus + minus) / n_clean:.4e} vs {p_success:.4e} (2 alpha eta = "
          f"{2 * h.emission_probability * h.transmission * eta:.4e})")
    within(plus, success[3] * n_clean)
    within(minus, success[4] * n_clean)
    within(plus + minus, p_success * n_clean)
    # every herald's deciding click is on the detector the outcome names
    assert np.all(np.where(res.outcome == OUTCOME_PSI_PLUS, 3, 4) == res.channel)


def test_spdc_coincidences_are_true_plus_accidental(lab):
    config, source, cfg, clicks, _ = lab
    ps = config.sim.pair_source
    a, b = ps.channel_a, ps.channel_b
    t = clicks["time_ps"] // cfg.bin_ps
    ch = clicks["channel"].astype(np.int64)
    order = np.lexsort((ch, t))
    t, ch = t[order], ch[order]
    duration = DURATION_S
    singles_a = np.count_nonzero(ch == a) / duration
    singles_b = np.count_nonzero(ch == b) / duration
    dead_s = 20e-9  # SCENARIO.md: detector recovery 20 ns
    eta = source.detectors[a].efficiency
    true_rate = ps.rate_hz * ps.transmission_a * eta * ps.transmission_b * eta \
        * (1 - singles_a * dead_s) * (1 - singles_b * dead_s)
    mask = (1 << a) | (1 << b)
    # 10 bins hold the pairs (b lags a by 4.7 ns); 3 bins cannot, so they count accidentals only
    res = coincidences(t, ch, [mask, mask], [10, 3], [2, 2])
    for window_bins, got, with_true in ((10, res.counts[0], True), (3, res.counts[1], False)):
        # uncorrelated clicks within +-window bins of each other: 2 * window + 1 bin values
        accidental = singles_a * singles_b * (2 * window_bins + 1) * cfg.bin_ps * 1e-12
        expected = (true_rate * with_true + accidental) * duration
        print(f"\nwindow {window_bins} bins: {got} coincidences, expected {expected:.0f} "
              f"(true {true_rate * with_true * duration:.0f} + accidental {accidental * duration:.0f})")
        within(int(got), expected)


def test_heralds_and_coincidences_decode_on_the_host(lab):
    from qnode.firmware.events import Kind, decode_words, encode_events, header_word, split_aux
    from qnode.sim.twin_herald import coincidence_event_fields, herald_event_fields

    config, source, cfg, clicks, entries = lab
    settings = HeraldSettings.from_lab(config.sim.heralding, cfg.bin_ps, offset_bins=49_012)
    res = heralds(entries, settings, channels=cfg.channels, oversampling=cfg.oversampling,
                  delay_bins=cfg.delay_bins)
    t = clicks["time_ps"] // cfg.bin_ps
    ch = clicks["channel"].astype(np.int64)
    coinc = coincidences(t, ch, [0b110], [10], [2])
    for fields, kind in ((herald_event_fields(res), Kind.HERALD),
                         (coincidence_event_fields(coinc, emit=1), Kind.COINCIDENCE)):
        words, _ = encode_events(*fields)
        events, stats = decode_words(np.concatenate([[header_word(cfg.bin_ps, cfg.channels)], words]))
        assert stats.invalid_words == 0 and len(events) == len(fields[0]) > 100
        assert np.all(events["kind"] == kind)
        np.testing.assert_array_equal(events["time_ps"], fields[3] * cfg.bin_ps)
        np.testing.assert_array_equal(events["channel"], fields[1])
        if kind == Kind.HERALD:
            aux = split_aux(events)
            np.testing.assert_array_equal(aux["herald_outcome"], res.outcome)
            np.testing.assert_array_equal(aux["herald_attempt"], res.attempt_index % (1 << 18))
        else:
            np.testing.assert_array_equal(events["aux"], 0b110)
