"""Live measurements equal an independent reference exactly, however the stream is cut into
batches; the correlation of the simulated lab's pair source shows the delay and the CAR the
physics predicts; the same kernels run on a recorded file."""

import numpy as np
import pytest

from qnode.firmware.events import EVENT_DTYPE, HERALD_ATTEMPT_BITS, Kind
from qnode.host.config import load_config
from qnode.host.measurements import (
    CoincidenceCounter,
    CoincidencePattern,
    CorrelationHistogram,
    CountRates,
    HeraldRate,
    coincidences_file,
    correlate_file,
    measure_file,
)
from qnode.host.recorder import Recorder
from qnode.sim.source import PhotonSource

# ---------------------------------------------------------------------------------------
# References: plain numpy, written from the definitions in docs/measurements.md


def ref_correlation(time_ps, channel, a, b, bin_ps, range_ps):
    """Pairs of distinct clicks (a, b) by delay t_b - t_a in [-range, range), from searchsorted."""
    ta, tb = time_ps[channel == a], time_ps[channel == b]
    edges = np.arange(-range_ps, range_ps + 1, bin_ps)
    # number of b with t_b < t_a + edge, summed over a, for each edge
    below = np.array([np.searchsorted(tb, ta + e, side="left").sum() for e in edges])
    counts = np.diff(below)
    if a == b:
        counts[range_ps // bin_ps] -= len(ta)  # a click does not pair with itself
    return counts


def ref_coincidences(time_ps, channel, channels, window_ps, min_fold):
    """Windows opened by the first click not yet in a window, closed window_ps later."""
    sel = np.isin(channel, channels)
    t, c = time_ps[sel], channel[sel]
    count, i = 0, 0
    while i < len(t):
        j = np.searchsorted(t, t[i] + window_ps, side="right")
        count += len(np.unique(c[i:j])) >= min_fold
        i = j
    return count


def tags_of(events):
    tags = events[events["kind"] == Kind.TAG]
    return tags["time_ps"], tags["channel"]


def make_events(time_ps, channel, kind=Kind.TAG):
    events = np.zeros(len(time_ps), EVENT_DTYPE)
    events["time_ps"] = time_ps
    events["channel"] = channel
    events["kind"] = kind
    return events


def random_stream(seed, n=20_000, grid_ps=50, span_ps=20_000_000):
    """Tags on a 50-ps grid (so delays land exactly on 100-ps bin edges and on +-range),
    with ties, bursts, channels 0-5 (5 empty in some seeds), and SYNC/HERALD events mixed in."""
    rng = np.random.default_rng(seed)
    n_burst = n // 4
    base = rng.integers(0, span_ps // grid_ps, n - n_burst)
    burst = rng.choice(base, n_burst) + rng.integers(-20, 20, n_burst)  # clusters: many pairs
    time_ps = np.sort(np.clip(np.concatenate([base, burst]), 0, None)) * grid_ps
    channel = rng.integers(0, 5 if seed % 2 else 6, n).astype(np.uint8)
    events = make_events(time_ps, channel)
    others = rng.random(n) < 0.1
    events["kind"][others] = rng.choice([Kind.SYNC, Kind.HERALD], np.count_nonzero(others))
    return events


def cut(events, rng, n_batches):
    """Random cut points, including cuts between equal timestamps."""
    at = np.sort(rng.integers(0, len(events) + 1, n_batches - 1))
    return np.split(events, at)


# ---------------------------------------------------------------------------------------
# Correlation histograms


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("a", "b", "bin_ps", "range_ps"),
                         [(1, 2, 100, 1000), (2, 1, 100, 5000), (3, 3, 100, 2000), (0, 5, 250, 1500)])
def test_correlation_equals_reference_in_any_batches(seed, a, b, bin_ps, range_ps):
    events = random_stream(seed)
    expected = ref_correlation(*tags_of(events), a, b, bin_ps, range_ps)

    whole = CorrelationHistogram(a, b, bin_ps, range_ps)
    whole.add(events)
    batched = CorrelationHistogram(a, b, bin_ps, range_ps)
    for batch in cut(events, np.random.default_rng(seed), 1 + 7 * seed):
        batched.add(batch)

    np.testing.assert_array_equal(whole.counts, expected)
    np.testing.assert_array_equal(batched.counts, expected)
    assert batched.clicks == whole.clicks
    assert expected.sum() > 0 or a == 5 or b == 5


def test_delays_on_the_range_and_bin_edges():
    """delay = -range is in the first bin, delay = +range is outside, k * bin starts bin k."""
    hist = CorrelationHistogram(1, 2, 100, 1000)
    # b 1000 ps before a (delay -1000), b 1000 ps after a (delay +1000, out), b 100 after a
    hist.add(make_events([0, 1000, 10_000, 11_000, 20_000, 20_100],
                         [2, 1, 1, 2, 1, 2]))
    expected = np.zeros(20, np.int64)
    expected[0] = 1  # -1000
    expected[11] = 1  # +100: bin [100, 200)
    np.testing.assert_array_equal(hist.counts, expected)
    assert hist.delays_ps[0] == -1000 and hist.delays_ps[11] == 100


@pytest.mark.parametrize("order", [(1, 2), (2, 1)])
def test_equal_timestamps_count_once_at_zero_delay_even_across_batches(order):
    events = make_events([5000, 5000], order)
    hist = CorrelationHistogram(1, 2, 100, 1000)
    hist.add(events[:1])
    hist.add(events[1:])
    assert hist.counts.sum() == 1 and hist.counts[10] == 1  # bin [0, 100)


def test_autocorrelation_counts_each_pair_of_distinct_clicks_at_both_signs():
    hist = CorrelationHistogram(3, 3, 100, 1000)
    hist.add(make_events([0, 0, 300], [3, 3, 3]))
    expected = np.zeros(20, np.int64)
    expected[10] = 2  # the two clicks at 0: delays +0 and -0
    expected[13] += 2  # 0 -> 300, twice
    expected[7] += 2  # 300 -> 0, twice
    np.testing.assert_array_equal(hist.counts, expected)


def test_empty_channel_gives_zero_counts_and_undefined_g2():
    hist = CorrelationHistogram(1, 7, 100, 1000)
    hist.add(random_stream(1))
    assert hist.counts.sum() == 0 and hist.clicks[1] == 0
    assert np.isnan(hist.g2()).all()
    assert np.isnan(hist.car(window_ps=300).car)


def test_g2_of_independent_poisson_streams_is_one():
    rng = np.random.default_rng(3)
    span_ps = 10**12
    t = np.sort(rng.integers(0, span_ps, 400_000))
    hist = CorrelationHistogram(1, 2, 1000, 100_000)
    hist.add(make_events(t, rng.integers(1, 3, len(t))))
    g2 = hist.g2(duration_ps=span_ps)
    # 200 bins of ~40 counts each: the mean is 1 within a few percent, no bin far from it
    assert abs(g2.mean() - 1) < 0.03
    assert np.all(np.abs(g2 - 1) < 0.8)


def test_out_of_order_tags_are_counted_and_never_break_the_histogram():
    hist = CorrelationHistogram(1, 2, 100, 1000)
    hist.add(make_events([10_000, 10_500, 2_000, 10_600], [1, 2, 1, 2]))
    assert hist.out_of_order == 1
    assert hist.counts.sum() == 2  # (10000, 10500) and (10000, 10600)


def test_a_late_herald_between_two_clicks_hides_no_pair():
    """Heralds leave the gateware after later tags: their times may go back. They are no tags,
    so they are not out-of-order tags, and the pair around them still counts."""
    events = make_events([10_000, 0, 10_500], [1, 3, 2], [Kind.TAG, Kind.HERALD, Kind.TAG])
    hist = CorrelationHistogram(1, 2, 100, 1000)
    counter = CoincidenceCounter([((1, 2), 1000)])
    hist.add(events)
    counter.add(events)
    assert hist.counts[15] == 1 and hist.out_of_order == 0
    assert counter.counts.tolist() == [1] and counter.out_of_order == 0


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        CorrelationHistogram(1, 2, 300, 1000)  # range not a multiple of bin
    with pytest.raises(ValueError):
        CoincidencePattern((1, 1), 1000)
    with pytest.raises(ValueError):
        CoincidencePattern((1, 2, 3), 1000, min_fold=4)


# ---------------------------------------------------------------------------------------
# Coincidences


PATTERNS = [((1, 2), 1000, 2), ((1, 2, 3), 2000, 2), ((1, 2, 3), 2000, 3), ((0, 4), 50, 2),
            ((2,), 500, 1), ((4, 5), 10_000, 2), ((0, 1, 2, 3, 4), 3000, 4)]


@pytest.mark.parametrize("seed", range(6))
def test_coincidences_equal_reference_in_any_batches(seed):
    events = random_stream(seed)
    t, c = tags_of(events)
    expected = [ref_coincidences(t, c, ch, w, f) for ch, w, f in PATTERNS]

    whole = CoincidenceCounter(PATTERNS)
    whole.add(events)
    batched = CoincidenceCounter(PATTERNS)
    for batch in cut(events, np.random.default_rng(100 + seed), 2 + 5 * seed):
        batched.add(batch)

    assert whole.counts.tolist() == expected
    assert batched.counts.tolist() == expected
    assert sum(expected) > 0


def test_coincidence_window_includes_its_edge_and_straddles_batches_once():
    counter = CoincidenceCounter([CoincidencePattern((1, 2), window_ps=1000),
                                  CoincidencePattern((1, 2, 3), window_ps=1000, min_fold=2)])
    events = make_events([0, 1000, 1000, 5000, 6001, 9000, 9500, 9600], [1, 2, 3, 1, 2, 3, 1, 2])
    for batch in (events[:2], events[2:7], events[7:]):  # the 9000 window spans two batches
        counter.add(batch)
    # (1,2): {0, 1000} at the edge, {9500, 9600}; 5000 and 6001 are 1001 ps apart
    # 2-of-3: {0, 1000, 1000} once, {9000, 9500, 9600} once
    assert counter.counts.tolist() == [2, 2]


# ---------------------------------------------------------------------------------------
# Rates


def test_count_rates_and_herald_rate():
    events = make_events([0, 10, 20, 30, 1_000_000], [1, 1, 2, 3, 3],
                         [Kind.TAG, Kind.TAG, Kind.TAG, Kind.HERALD, Kind.TAG])
    events["aux"][3] = (1 << HERALD_ATTEMPT_BITS) | 17  # outcome 1, attempt 17
    rates, heralds = CountRates(), HeraldRate()
    rates.add(events[:2])
    rates.add(events[2:])
    heralds.add(events)
    assert rates.counts[:4].tolist() == [0, 2, 1, 1]
    assert rates.duration_ps == 1_000_000
    assert rates.rates_hz()[1] == pytest.approx(2e6)
    assert heralds.counts[1] == 1 and heralds.total == 1
    assert heralds.rate_hz() == pytest.approx(1e6)


def test_channel_bytes_beyond_the_event_format_are_harmless():
    """A file's detectors column is uint8: channels 64-255 are counted apart, never paired."""
    t = np.array([0, 100, 200, 300], np.int64)
    c = np.array([1, 200, 255, 2], np.uint8)
    rates, hist, counter = CountRates(8), CorrelationHistogram(1, 2, 100, 1000), CoincidenceCounter([((1, 2), 1000)])
    for m in (rates, hist, counter):
        m.add_tags(t, c)
    assert rates.counts.tolist() == [0, 1, 1, 0, 0, 0, 0, 0]
    rates.add_tags(np.array([-1]), np.array([255], np.uint8))  # what a crashed file leaves
    assert rates.duration_ps == 300 and rates.counts.sum() == 2
    assert hist.counts.sum() == 1 and hist.counts[13] == 1
    assert counter.counts.tolist() == [1]


# ---------------------------------------------------------------------------------------
# The simulated lab


@pytest.fixture(scope="module")
def lab_second():
    """One second of the reference lab (sim.toml): 1.3 M clicks."""
    cfg = load_config()
    clicks = PhotonSource(cfg).generate(10**12)
    return cfg, make_events(clicks["time_ps"], clicks["channel"])


def test_pair_source_g2_peak_sits_at_the_true_delay(lab_second):
    cfg, events = lab_second
    hist = CorrelationHistogram(1, 2, bin_ps=100, range_ps=100_000)
    for batch in np.array_split(events, 10):
        hist.add(batch)
    true_delay_ps = cfg.sim.cable_delay_ps[2] - cfg.sim.cable_delay_ps[1]  # 4700
    peak = hist.counts.argmax()
    near = slice(peak - 5, peak + 6)  # +-500 ps around the fullest bin: the jitter is 71 ps
    centroid_ps = np.average(hist.centres_ps[near], weights=hist.counts[near])
    assert abs(centroid_ps - true_delay_ps) < 100
    assert abs(hist.centres_ps[peak] - true_delay_ps) <= 100
    assert hist.g2()[peak] > 100  # far above 1: the pairs


def test_pair_source_car_matches_the_physics(lab_second):
    """CAR = true coincidences / accidentals in a window w: mu eta_a eta_b / (R_a R_b w)."""
    cfg, events = lab_second
    hist = CorrelationHistogram(1, 2, bin_ps=100, range_ps=100_000)
    rates = CountRates()
    hist.add(events)
    rates.add(events)
    window_ps = 1000
    result = hist.car(window_ps=window_ps)

    src, det = cfg.sim.pair_source, cfg.sim.detector
    eta_a, eta_b = src.transmission_a * det.efficiency, src.transmission_b * det.efficiency
    rate_a_hz, rate_b_hz = rates.rates_hz(10**12)[[1, 2]]
    predicted = src.rate_hz * eta_a * eta_b / (rate_a_hz * rate_b_hz * window_ps * 1e-12)
    # accidentals come from ~800 off-peak counts: 3.5 % statistical error; 15 % is 4 sigma
    assert predicted == pytest.approx(1000, rel=0.05)  # 1 / (pair rate x window), as expected
    assert result.car == pytest.approx(predicted, rel=0.15)
    assert result.coincidences == pytest.approx(src.rate_hz * eta_a * eta_b, rel=0.05)


# ---------------------------------------------------------------------------------------
# Recorded files


def write_recording(path, events):
    """A recording as the daemon makes it (docs/formats.md): tags in /photon_data, heralds and
    the other kinds in the /qnode tables."""
    with Recorder(path, channel_names={i: f"ch{i}" for i in range(8)}) as rec:
        rec.append(events)


def with_herald_outcomes(events, seed):
    """Heralds with outcome codes 0-3 in aux (psi+ / psi- and others), as the herald unit sets them."""
    events = events.copy()
    heralds = events["kind"] == Kind.HERALD
    rng = np.random.default_rng(seed)
    events["aux"][heralds] = (rng.integers(0, 4, np.count_nonzero(heralds)).astype(np.uint32) << HERALD_ATTEMPT_BITS
                              | rng.integers(0, 1 << HERALD_ATTEMPT_BITS, np.count_nonzero(heralds)).astype(np.uint32))
    return events


def test_file_measurements_equal_live_ones(tmp_path):
    events = with_herald_outcomes(random_stream(4), 4)
    t, c = tags_of(events)
    path = tmp_path / "run.h5"
    write_recording(path, events)

    live = [CorrelationHistogram(1, 2, 100, 1000), CoincidenceCounter(PATTERNS), CountRates(), HeraldRate()]
    for m in live:
        m.add(events)
    from_file = measure_file(path, [CorrelationHistogram(1, 2, 100, 1000), CoincidenceCounter(PATTERNS),
                                    CountRates(), HeraldRate()], chunk_tags=999)
    for a, b in zip(live, from_file):
        np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(correlate_file(path, 1, 2, 100, 1000, chunk_tags=1234).counts,
                                  ref_correlation(t, c, 1, 2, 100, 1000))
    np.testing.assert_array_equal(coincidences_file(path, PATTERNS[:2], chunk_tags=10_000),
                                  live[1].counts[:2])
    assert from_file[3].total == np.count_nonzero(events["kind"] == Kind.HERALD) > 0
    assert np.count_nonzero(from_file[3].counts) >= 2  # by outcome, as live (compared above)


def test_a_rotated_recording_measures_as_one_stream(tmp_path):
    events = with_herald_outcomes(random_stream(5), 5)
    cut_at = len(events) // 3
    paths = [tmp_path / "run.h5", tmp_path / "run_0001.h5"]
    write_recording(paths[0], events[:cut_at])
    write_recording(paths[1], events[cut_at:])
    hist, counter, heralds = measure_file(paths, [CorrelationHistogram(2, 3, 100, 5000),
                                                  CoincidenceCounter(PATTERNS), HeraldRate()])
    np.testing.assert_array_equal(hist.counts, ref_correlation(*tags_of(events), 2, 3, 100, 5000))
    assert counter.counts.tolist() == [ref_coincidences(*tags_of(events), ch, w, f) for ch, w, f in PATTERNS]
    assert heralds.total == np.count_nonzero(events["kind"] == Kind.HERALD)
    expected = np.bincount(events["aux"][events["kind"] == Kind.HERALD] >> HERALD_ATTEMPT_BITS, minlength=16)
    np.testing.assert_array_equal(heralds.counts, expected)
