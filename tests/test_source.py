"""The simulated photon source and detectors against the physics configured in sim.toml.

Tolerances are statistical: 5 standard deviations of the counts plus a stated allowance for
effects the formula leaves out (dead-time and afterpulse corrections of order R x 20 ns).
"""

import numpy as np
import pytest

from qnode.host.config import load_config
from qnode.sim.detector import Detector
from qnode.sim.source import PhotonSource, attempt_syncs

SECOND_PS = 10**12


def reference_lab(**changes):
    cfg = load_config()
    for dotted, value in changes.items():
        obj = cfg.sim
        *path, last = dotted.split(".")
        for part in path:
            obj = getattr(obj, part)
        setattr(obj, last, value)
    return cfg


def run(cfg, seconds, batch_s=0.05, phase_rad=None, seed=None):
    src = PhotonSource(cfg, phase_rad=phase_rad, seed=seed)
    batch_s = min(batch_s, seconds)
    n = round(seconds / batch_s)
    return np.concatenate([src.generate(int(batch_s * SECOND_PS)) for _ in range(n)])


def times(clicks, channel):
    return clicks["time_ps"][clicks["channel"] == channel]


def within(measured, expected, systematic=0.003):
    """measured agrees with expected counts within 5 sigma plus a relative allowance."""
    return abs(measured - expected) <= 5 * np.sqrt(expected) + systematic * expected


def cross_histogram(a, b, shift_ps, half_range_ps, bin_ps):
    """Histogram of b - a - shift over +-half_range (an independent, plain numpy count)."""
    lo = np.searchsorted(b, a + shift_ps - half_range_ps)
    hi = np.searchsorted(b, a + shift_ps + half_range_ps)
    n = hi - lo
    starts = np.repeat(lo, n)
    offsets = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    diffs = b[starts + offsets] - np.repeat(a, n) - shift_ps
    edges = np.arange(-half_range_ps, half_range_ps + 1, bin_ps)
    return np.histogram(diffs, edges)[0], edges


def test_singles_rates_follow_transmission_efficiency_and_dark_counts():
    cfg = reference_lab()
    seconds = 2.0
    clicks = run(cfg, seconds)
    lab = cfg.sim
    det = lab.detector
    for ch, transmission in ((1, lab.pair_source.transmission_a), (2, lab.pair_source.transmission_b)):
        incident = lab.pair_source.rate_hz * transmission * det.efficiency + det.dark_rate_hz
        incident *= 1 + det.afterpulse_probability
        expected_hz = incident / (1 + incident * det.dead_time_ps * 1e-12)  # non-paralysable
        measured = len(times(clicks, ch))
        assert within(measured, expected_hz * seconds), (ch, measured / seconds, expected_hz)
    for ch in (5, 6, 7):  # spare channels: dark counts only
        assert within(len(times(clicks, ch)), det.dark_rate_hz * seconds, systematic=0.05)
    # the sync: one pulse per attempt, 900 of each 1 ms cycle's 1000 laser pulses (the others'
    # photons would reach the station during a reference burst)
    assert len(times(clicks, 0)) == seconds * lab.sync.rate_hz * 0.9


def test_true_coincidences_and_accidentals_match_r1_r2_tau():
    # 10x the reference pair rate so accidentals are well measured in 0.2 s.
    cfg = reference_lab(**{"pair_source.rate_hz": 1e7})
    seconds = 0.2
    clicks = run(cfg, seconds)
    a, b = times(clicks, 1), times(clicks, 2)
    lab = cfg.sim
    shift = lab.cable_delay_ps[2] - lab.cable_delay_ps[1]
    counts, edges = cross_histogram(a, b, shift, half_range_ps=50_000, bin_ps=1000)
    centres = (edges[:-1] + edges[1:]) / 2

    r_a, r_b = len(a) / seconds, len(b) / seconds
    far = np.abs(centres) > 5_000
    accidental_per_bin = r_a * r_b * 1e-9 * seconds
    assert within(counts[far].sum(), accidental_per_bin * far.sum(), systematic=0.01)

    # The peak: +-2 ns holds all the jitter (sqrt(2) x 50 ps RMS); subtract accidentals.
    peak = np.abs(centres) < 2_000
    trues = counts[peak].sum() - accidental_per_bin * peak.sum()
    p_a = lab.pair_source.transmission_a * lab.detector.efficiency
    p_b = lab.pair_source.transmission_b * lab.detector.efficiency
    survive = (1 - r_a * 20e-9) * (1 - r_b * 20e-9)  # neither detector dead
    expected_trues = lab.pair_source.rate_hz * p_a * p_b * seconds * survive
    assert within(trues, expected_trues, systematic=0.01), (trues, expected_trues)

    # The peak sits at the cable delay difference with the jitter of two detectors.
    d = cross_histogram(a, b, shift, 400, 1)[0]  # +-5.6 sigma: little flat background
    width = np.sqrt(np.average((np.arange(-400, 400) + 0.5) ** 2, weights=d))
    assert 60 < width < 85  # sqrt(2) x 50 ps = 71 ps


def test_dead_time_is_never_violated_and_afterpulses_come_100ns_later():
    cfg = reference_lab(**{"pair_source.rate_hz": 1e7})
    clicks = run(cfg, 0.2)
    det = cfg.sim.detector
    for ch in (1, 2):
        t = times(clicks, ch)
        gaps = np.diff(t)
        assert gaps.min() >= det.dead_time_ps
        afterpulses = np.count_nonzero(np.isin(t + det.afterpulse_delay_ps, t))
        expected = len(t) * det.afterpulse_probability
        assert abs(afterpulses - expected) <= 5 * np.sqrt(expected) + 2


def test_heralding_station_clicks_per_attempt():
    cfg = reference_lab(**{"reference": None, "heralding.emission_probability": 0.5})
    seconds = 0.2
    clicks = run(cfg, seconds)
    h, det = cfg.sim.heralding, cfg.sim.detector
    attempts = seconds * cfg.sim.sync.rate_hz
    p = h.emission_probability * h.transmission
    # Photons per attempt: two emitters, each p; bunched photons give one click (dead time).
    p_click = (2 * p * (1 - p) * det.efficiency + p * p * (1 - (1 - det.efficiency) ** 2))
    station = len(times(clicks, 3)) + len(times(clicks, 4))
    dark = 2 * det.dark_rate_hz * seconds
    assert within(station - dark, attempts * p_click, systematic=0.01)
    # Clicks sit at the fibre delay after their sync, inside the detection window.
    t = times(clicks, 3)
    t = t[t > h.arrival_delay_ps + 20_000]
    # Jitter may put a click up to a few hundred ps before the window's nominal start.
    offset = (t - h.arrival_delay_ps - cfg.sim.cable_delay_ps[3] + 500) % 1_000_000 - 500
    inside = np.count_nonzero(offset < h.window_ps)
    dark = det.dark_rate_hz * seconds  # dark counts fall anywhere
    assert inside >= len(t) - dark - 5 * np.sqrt(dark)


@pytest.mark.parametrize("phase, plus_fraction", [(0.0, (1 + 0.95) / 2), (np.pi / 2, 0.5), (np.pi, (1 - 0.95) / 2)])
def test_reference_light_splits_by_interferometer_phase(phase, plus_fraction):
    cfg = reference_lab(**{"heralding.emission_probability": 0.0, "detector.dark_rate_hz": 0.0})
    clicks = run(cfg, 0.1, phase_rad=lambda t: np.full(len(t), phase))
    plus, minus = len(times(clicks, 3)), len(times(clicks, 4))
    total = plus + minus
    # 1e6 /s during the 10 % burst duty cycle, at nominal efficiency.
    assert within(total, 1e6 * 0.1 * 0.1 * (1 + 0.001), systematic=0.01)
    sigma = np.sqrt(total * plus_fraction * (1 - plus_fraction)) + 1
    assert abs(plus - total * plus_fraction) <= 5 * sigma
    # Only during bursts: the first 100 us of every 1 ms cycle (plus cable delay and jitter).
    t = np.concatenate([times(clicks, 3), times(clicks, 4)])
    assert np.all((t - 12_400) % 1_000_000_000 < 100_000_000 + 1_000)


def test_output_is_time_ordered_with_ties_in_channel_order_across_batches():
    clicks = run(reference_lab(), 0.05, batch_s=0.001)
    t, ch = clicks["time_ps"], clicks["channel"]
    assert np.all(np.diff(t) >= 0)
    ties = np.flatnonzero(np.diff(t) == 0)
    assert np.all(ch[ties] < ch[ties + 1])


def test_seeded_and_reproducible():
    cfg = reference_lab()
    one, two = run(cfg, 0.02), run(cfg, 0.02)
    np.testing.assert_array_equal(one, two)
    other = run(cfg, 0.02, seed=cfg.sim.seed + 1)
    assert not np.array_equal(one["time_ps"][1000:2000], other["time_ps"][1000:2000])


def test_detector_changes_apply_from_the_next_batch():
    src = PhotonSource(reference_lab())
    before = src.generate(SECOND_PS // 20)
    src.set_detector(1, efficiency=0.0, dark_rate_hz=0.0)
    after = src.generate(SECOND_PS // 20)
    assert len(times(before, 1)) > 1000
    # Arrivals held back at the batch edge (a ns) may still click; nothing after that.
    assert len(times(after, 1)) <= 2
    with pytest.raises(AttributeError, match="no parameter"):
        src.set_detector(1, bias_ua=9.0)


def test_detector_gives_the_same_clicks_however_the_batches_are_cut():
    rng = np.random.default_rng(5)
    arrivals = np.sort(rng.integers(0, 10**9, 200_000))
    params = dict(channel=1, efficiency=1, dark_rate_hz=0, jitter_ps=0, dead_time_ps=20_000,
                  afterpulse_probability=0.05, afterpulse_delay_ps=100_000, seed=9)
    whole, _ = Detector(**params).click(arrivals, 10**9)
    det, pieces, rest = Detector(**params), [], arrivals
    for cut in np.linspace(0, 10**9, 37)[1:]:
        clicks, rest = det.click(rest, int(cut))
        pieces.append(clicks)
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
    assert np.diff(whole).min() >= 20_000


def test_config_without_sim_table_is_refused():
    cfg = load_config()
    cfg.sim = None
    with pytest.raises(ValueError, match=r"no \[sim\] table"):
        PhotonSource(cfg)


def test_no_attempt_sends_its_photons_into_a_reference_burst():
    """The sequencer makes an attempt (a sync pulse) of a laser pulse only when the photons'
    detection window at the station misses the bursts: so the herald unit, which makes an attempt
    of every sync, never looks for a herald in reference light."""
    cfg = reference_lab()
    h, ref = cfg.sim.heralding, cfg.sim.reference
    sync = times(run(cfg, 0.01), 0) - cfg.sim.cable_delay_ps.get(0, 0)
    start = (sync + h.arrival_delay_ps) % ref.cycle_ps  # each attempt's window at the station
    assert np.all(start >= ref.burst_ps - 1000) and np.all(start + h.window_ps <= ref.cycle_ps + 1000)
    laser = np.arange(0, 10**10, 10**6)  # the 1 MHz laser's pulses
    picked = attempt_syncs(cfg.sim, laser)
    assert len(picked) == 9000 and np.isin(picked, laser).all()  # 900 in each 1 ms cycle
    start = (picked + h.arrival_delay_ps) % ref.cycle_ps
    assert np.all(start >= ref.burst_ps) and np.all(start + h.window_ps <= ref.cycle_ps)
    assert np.array_equal(attempt_syncs(reference_lab(reference=None).sim, laser), laser)  # nothing to share


def test_no_click_before_the_lab_clock_starts():
    """The sync pulse at t = 0 has jitter too: half the seeds would put it a few ps before 0, and a
    negative time has no event word (the FPGA's twin turned one into garbage words)."""
    cfg = reference_lab(reference=None)  # with the bursts the first attempt is at 51 us
    for seed in range(40):
        first = PhotonSource(cfg, seed=seed).generate(2_000_000)  # two sync periods
        assert first["time_ps"].min() >= 0, seed
        assert np.count_nonzero(first["channel"] == 0) == 2  # the sync pulse is kept, not dropped


def test_channel_merge_orders_by_time_then_channel():
    """The two-ended merge against a plain lexsort: ties across channels, runs of odd and even
    length, empty runs, one dense run among sparse ones."""
    from qnode.sim.source import merge_channels

    rng = np.random.default_rng(11)
    for trial in range(200):
        sizes = rng.integers(0, 40, rng.integers(1, 9))
        if trial % 3 == 0:
            sizes[0] = 500  # a dense channel, as the sync pulses are
        runs = [(np.unique(rng.integers(0, 60 + 5 * n, n)), ch) for ch, n in enumerate(sizes)]
        merged = merge_channels([(t, np.full(len(t), ch, np.uint8)) for t, ch in runs])
        times = np.concatenate([t for t, _ in runs])
        channels = np.concatenate([np.full(len(t), ch) for t, ch in runs])
        order = np.lexsort((channels, times))
        np.testing.assert_array_equal(merged["time_ps"], times[order])
        np.testing.assert_array_equal(merged["channel"], channels[order])


def test_poisson_times_are_the_cumulated_exponential_gaps():
    """The compiled cumulation gives the times numpy's cumsum gives, chunk boundaries included."""
    from qnode.sim.source import _poisson_times

    for rate_hz, t0, t1 in ((1e6, 0, 10**9), (3e4, 5 * 10**11, 5 * 10**11 + 10**10), (1e9, 7, 7 + 10**6)):
        times = _poisson_times(np.random.default_rng(4), rate_hz, t0, t1)
        rng, gaps = np.random.default_rng(4), []
        mean_gap, expected = 1e12 / rate_hz, (t1 - t0) * rate_hz / 1e12
        total = 0.0
        while total < t1 - t0:
            chunk = np.cumsum(rng.exponential(mean_gap, int(expected + 6 * np.sqrt(expected) + 16))) + total
            total = chunk[-1]
            gaps.append(chunk)
        want = np.concatenate(gaps)
        want = want[want < t1 - t0].astype(np.int64) + t0
        np.testing.assert_array_equal(times, want)
        assert times.min() >= t0 and times.max() < t1


@pytest.mark.parametrize("jitter_ps", [5.0, 50.0, 900.0, 2e4, 1e12])
def test_jitter_table_holds_the_rounded_gaussian_in_a_type_wide_enough(jitter_ps):
    from qnode.sim.source import GAUSSIAN

    table = PhotonSource(reference_lab())._jitter_table(jitter_ps)
    np.testing.assert_array_equal(table.astype(np.int64), np.rint(GAUSSIAN * jitter_ps).astype(np.int64))
    assert table.dtype.itemsize < 8 or jitter_ps > 1e9
