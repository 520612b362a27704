"""The twin's shortcuts (idle jumps, entries handled in one step when the consumer is always
ready) give exactly the words of its clock-by-clock path, and its input forms agree."""

import numpy as np
import pytest

from qnode.firmware.events import decode_words
from qnode.sim.twin import Twin, TwinConfig, edges_from_pulses, edges_from_samples, samples_from_pulses


@pytest.mark.parametrize("spacing_bins,seed", [(200, 1), (12, 2), (3, 3)])
def test_fast_path_equals_clock_by_clock(spacing_bins, seed):
    cfg = TwinConfig(channels=8, oversampling=8, fifo_depth=8,
                     delay_bins=[0, 3, 50, 7, 0, 900, 2, 1],
                     dead_time_bins=[0, 2, 5, 8, 0, 0, 30, 1], start_now=(1 << 29) - 2000)
    rng = np.random.default_rng(seed)
    count = 20_000
    t = np.sort(rng.integers(0, count * spacing_bins, count)) + cfg.start_now * 8
    ch = rng.integers(0, 8, count)
    edges = edges_from_pulses(t, ch, 1, cfg)
    fast = Twin(cfg).run(edges=edges)  # always ready, until drained
    clocks = count * spacing_bins // 8 + 3000
    slow = Twin(cfg).run(edges=edges, n_clocks=clocks, ready=np.ones(clocks, bool))
    np.testing.assert_array_equal(fast.words, slow.words)
    events, stats = decode_words(fast.words)
    assert stats.invalid_words == 0 and len(events) > count // 4


def test_samples_and_edges_give_the_same_words():
    cfg = TwinConfig(channels=4, oversampling=4, edge=[0, 1, 0, 1])
    rng = np.random.default_rng(5)
    t = np.sort(rng.integers(0, 30_000, 3000))
    ch = rng.integers(0, 4, 3000)
    n = 30_000 // 4 + 100
    by_samples = Twin(cfg).run(samples=samples_from_pulses(t, ch, 3, n, cfg))
    by_edges = Twin(cfg).run(edges=edges_from_pulses(t, ch, 3, cfg), n_clocks=n)
    np.testing.assert_array_equal(by_samples.words, by_edges.words)


@pytest.mark.parametrize("seed", [4, 5])
def test_fast_path_equals_clock_by_clock_on_clustered_clicks(seed):
    # pairs and triples within a few bins, as from a photon-pair source: the burst shortcut
    cfg = TwinConfig(channels=8, oversampling=8, fifo_depth=8, delay_bins=[0, 3, 0, 40, 0, 0, 9, 0])
    rng = np.random.default_rng(seed)
    n = 5000
    base = np.sort(rng.integers(0, n * 300, n))
    size = rng.integers(1, 7, n)
    t = np.repeat(base, size) + rng.integers(0, 24, size.sum())
    ch = rng.integers(0, 8, size.sum())
    edges = edges_from_pulses(t, ch, 1, cfg)
    fast = Twin(cfg).run(edges=edges)
    clocks = int(t.max()) // 8 + 3000
    slow = Twin(cfg).run(edges=edges, n_clocks=clocks, ready=np.ones(clocks, bool))
    np.testing.assert_array_equal(fast.words, slow.words)


@pytest.mark.parametrize("channels", [3, 5])
def test_fast_path_equals_clock_by_clock_with_a_padded_merger_tree(channels):
    cfg = TwinConfig(channels=channels, oversampling=4, sys_clk_hz=250_000_000, fifo_depth=8,
                     delay_bins=[5 * ch for ch in range(channels)])
    rng = np.random.default_rng(channels)
    n = 4000
    base = np.sort(rng.integers(0, n * 100, n))
    size = rng.integers(1, 4, n)
    t = np.repeat(base, size) + rng.integers(0, 12, size.sum())
    ch = rng.integers(0, channels, size.sum())
    edges = edges_from_pulses(t, ch, 1, cfg)
    fast = Twin(cfg).run(edges=edges)
    clocks = int(t.max()) // 4 + 3000
    slow = Twin(cfg).run(edges=edges, n_clocks=clocks, ready=np.ones(clocks, bool))
    np.testing.assert_array_equal(fast.words, slow.words)


@pytest.mark.parametrize("emit", [0, 0b1011])
def test_fast_path_equals_clock_by_clock_with_heralds_and_coincidences(emit):
    # the time-compressed lab: heralds reach the packer between entries, coincidences counted
    # (emit 0: the one-step paths run) or emitted as words (clock by clock between idle jumps)
    import importlib.util
    from dataclasses import replace
    from pathlib import Path

    path = Path(__file__).with_name("lab_stimulus.py")
    spec = importlib.util.spec_from_file_location("qnode_lab_stimulus", path)
    ls = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ls)
    cfg, samples = ls.lab_case(7, oversampling=8, sys_clk_hz=125_000_000, n_clocks=40_000,
                               fifo_depth=16, output_depth=16)
    cfg = replace(cfg, coinc_emit=emit)
    edges = edges_from_samples(samples, cfg)
    fast = Twin(cfg).run(edges=edges)
    slow = Twin(cfg).run(edges=edges, n_clocks=len(samples), ready=np.ones(len(samples), bool))
    np.testing.assert_array_equal(fast.words, slow.words)
    for name, values in slow.unit_counters.items():
        assert list(fast.unit_counters[name]) == list(values), name
    assert len(slow.heralds.clock) > 300 and slow.unit_counters["coinc_count"][0] > 100
