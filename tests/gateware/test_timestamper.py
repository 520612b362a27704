"""Timestamper in the Amaranth simulator: fine position, edges at the word ends, dead time,
same-clock losses, delay, enable; and against the twin's timestamper on random words."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from qnode.gateware.timestamper import Timestamper
from qnode.sim.twin import TwinConfig, edges_from_samples, timestamp


def run(words, n=8, *, dead=0, delay=0, edge=0, enable=1):
    """Drive one word per clock (coarse time = clock); return entries as
    (clock the entry is valid, time_bins, same-clock count, gap)."""
    dut = Timestamper(n)
    out = []

    async def bench(ctx):
        ctx.set(dut.enable, enable)
        ctx.set(dut.edge, edge)
        ctx.set(dut.delay_bins, delay)
        ctx.set(dut.dead_time_bins, dead)
        for c, word in enumerate(list(words) + [0] * 3):
            ctx.set(dut.samples, int(word))
            ctx.set(dut.sample_now, c)
            if ctx.get(dut.entry.valid):
                p = ctx.get(dut.entry.payload)
                out.append((c, p.time, p.count, p.gap))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out


@pytest.mark.parametrize("n", [4, 8])
def test_edges_at_bit_0_and_bit_n_minus_1(n):
    top = 1 << (n - 1)
    # word 1: edge at bit 0; word 3: edge at bit N-1 (bit 0 is the earliest sample)
    entries = run([0, 1, 0, top, 0], n, dead=0)
    assert [(t, cnt) for _, t, cnt, _ in entries] == [(1 * n + 0, 0), (3 * n + n - 1, 0)]
    # the entry for word k is valid two clocks later (stage A, stage B)
    assert [c for c, *_ in entries] == [3, 5]


def test_level_continuing_across_words_is_not_an_edge():
    # high from bit 7 of word 0 through word 1: one edge only, at bin 7
    assert [t for _, t, _, _ in run([0x80, 0xFF, 0x01, 0])] == [7]


def test_falling_edge():
    # high from bin 2 to bin 12 (falls at bin 13 = word 1 bit 5)
    words = [0b11111100, 0b00011111, 0]
    assert [t for _, t, _, _ in run(words, edge=1)] == [13]
    assert [t for _, t, _, _ in run(words, edge=0)] == [2]


def test_back_to_back_pulses_at_the_dead_time_limit():
    # pulses one bin wide: rising edges at bins 3, 3 + 10 (exactly dead time later), and
    # 3 + 10 + 9 (one bin short of the dead time): the last is ignored, not counted.
    bins = [3, 13, 22]
    level = np.zeros(5 * 8, int)
    level[bins] = 1
    words = [int(sum(level[k * 8 + b] << b for b in range(8))) for k in range(5)]
    entries = run(words, dead=10)
    assert [(t, cnt) for _, t, cnt, _ in entries] == [(3, 0), (13, 0)]


def test_second_edge_in_one_clock_is_counted_as_same_clock_loss():
    # edges at bins 1, 4 and 6 of one word; dead time 2: one tag at 1, two lost, the first at 4
    entries = run([0b01010010], dead=2)
    assert entries == [(2, 1, 2, 3)]
    # with a dead time of 4 the edge at 4 is inside it (ignored), the one at 6 is lost
    assert run([0b01010010], dead=4) == [(2, 1, 1, 5)]


def test_delay_at_its_maximum():
    entries = run([0, 0b100], delay=(1 << 16) - 1)
    assert [t for _, t, _, _ in entries] == [8 + 2 + 65535]


def test_disabled_channel_records_nothing():
    assert run([0b1, 0, 0b1000], enable=0) == []


@pytest.mark.parametrize("n,seed", [(4, 1), (8, 2)])
def test_matches_twin_on_random_words(n, seed):
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 1 << n, 300) * (rng.random(300) < 0.4)
    for dead in (0, 3, n + 1):
        cfg = TwinConfig(channels=1, oversampling=n, dead_time_bins=[dead], delay_bins=[5])
        entries = timestamp(edges_from_samples(words[:, None], cfg), cfg)
        one = entries.channel(0)
        clock, time, count, gap = (entries.clock[one], entries.time[one], entries.count[one],
                                   entries.gap[one])
        entries = run(words, n, dead=dead, delay=5)
        got = np.array([(t, cnt, g if cnt else 0) for _, t, cnt, g in entries]).reshape(-1, 3)
        assert len(got) > 50
        np.testing.assert_array_equal(got, np.stack([time, count, gap], axis=1))
        # the core adds one clock of capture before stage A: the twin's write clock is k + 3
        np.testing.assert_array_equal([c + 1 for c, *_ in entries], clock)
