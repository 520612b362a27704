"""TimeTaggerCore in the Amaranth simulator: channel FIFO overflow, the merger's order and rate,
the packer's epochs and output losses, the counters -- each also held word for word against the
twin (sim/twin.py)."""

import numpy as np
import pytest

from qnode.firmware.events import Kind, LossReason, decode_words, split_aux
from qnode.firmware.registers import REGISTER_MAP
from qnode.gateware.core import TimeTaggerCore
from qnode.gateware.params import merge_levels
from qnode.gateware.simulate import simulate_core
from qnode.sim.twin import Twin, TwinConfig, samples_from_pulses

COUNTERS = ("ts_tag_count", "ts_same_clock_lost", "ts_fifo_lost", "ts_output_lost")


def run_both(cfg: TwinConfig, samples, ready=None, read_counters=False):
    core = TimeTaggerCore(channels=cfg.channels, oversampling=cfg.oversampling,
                          sys_clk_hz=cfg.sys_clk_hz, fifo_depth=cfg.fifo_depth,
                          output_depth=cfg.output_depth, start_now=cfg.start_now)
    read = []
    if read_counters:
        read = [REGISTER_MAP.address(name, i) for name in COUNTERS for i in range(cfg.channels)]
    words, regs = simulate_core(
        core, samples, ready,
        settings=dict(ts_delay_bins=cfg.delay_bins, ts_dead_time_bins=cfg.dead_time_bins,
                      ts_edge=cfg.edge, ts_enable=cfg.enable),
        read=read)
    twin = Twin(cfg).run(samples=samples, ready=ready)
    return words, twin, regs


def pulses(rng, cfg, n_clocks, count, width=2, tail=60):
    t = np.sort(rng.integers(0, (n_clocks - tail) * cfg.oversampling, count)) + cfg.start_now * cfg.oversampling
    ch = rng.integers(0, cfg.channels, count)
    return samples_from_pulses(t, ch, width, n_clocks, cfg)


def conserved(words, cfg, recorded_edges):
    """Every recorded edge leaves as a tag or inside a loss count: nothing vanishes."""
    events, stats = decode_words(words)
    tags = np.count_nonzero(events["kind"] == Kind.TAG)
    return tags + stats.lost_events == recorded_edges


def test_full_channel_fifo_becomes_a_loss_record_in_time_order():
    # one channel firing every other clock with a delay of 50 clocks: its entries wait in its
    # 4-deep FIFO until the other channel's horizon passes them, so the FIFO fills
    cfg = TwinConfig(channels=2, oversampling=8, fifo_depth=4, output_depth=4, delay_bins=[400, 0])
    n = 260
    t = np.arange(0, 80) * 16 + 3
    samples = samples_from_pulses(t, np.zeros_like(t), 1, n, cfg)
    words, twin, regs = run_both(cfg, samples, read_counters=True)
    np.testing.assert_array_equal(words, twin.words)
    events, stats = decode_words(words)
    aux = split_aux(events)
    fifo_loss = (events["kind"] == Kind.LOSS) & (aux["loss_reason"] == LossReason.CHANNEL_FIFO)
    assert fifo_loss.any()
    assert np.all(np.diff(events["time_ps"][events["kind"] == Kind.TAG]) > 0)
    # a loss record's time is its first dropped edge: later than the tag before it
    first = np.flatnonzero(fifo_loss)[0]
    assert events["time_ps"][first] > events["time_ps"][first - 1]
    assert conserved(words, cfg, 80)
    fifo_lost = regs[REGISTER_MAP.address("ts_fifo_lost", 0)]
    assert fifo_lost == int(aux["loss_count"][fifo_loss].sum()) > 0


def test_merger_sustains_one_event_per_clock_across_channels():
    # all 8 channels fire in every 8th clock, each at another bin: 1 event/clock in aggregate
    cfg = TwinConfig(channels=8, oversampling=8, fifo_depth=16, output_depth=16)
    n = 200
    t = np.array([k * 64 + 8 * ch + (ch * 3) % 8 for k in range(20) for ch in range(8)])
    ch = np.array([ch for k in range(20) for ch in range(8)])
    samples = samples_from_pulses(t, ch, 1, n, cfg)
    core = TimeTaggerCore(channels=8, oversampling=8)
    delivered = []
    # record the clock each word is delivered in (ready always high)
    from amaranth.sim import Simulator

    from qnode.gateware.simulate import pack_pins

    async def bench(ctx):
        ctx.set(core.words.ready, 1)
        for c in range(n):
            ctx.set(core.pins.as_value(), pack_pins(samples[c], 8))
            if ctx.get(core.words.valid):
                delivered.append((c, ctx.get(core.words.payload)))
            await ctx.tick()

    sim = Simulator(core)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    clocks = np.array([c for c, w in delivered if w >> 60 == Kind.TAG])
    assert len(clocks) == 160
    assert np.all(np.diff(clocks) == 1), "a tag left in every clock, no gaps"
    words = np.array([w for _, w in delivered], np.uint64)
    np.testing.assert_array_equal(words, Twin(cfg).run(samples=samples).words)
    events, stats = decode_words(words)
    assert stats.lost_events == 0
    np.testing.assert_array_equal(np.sort(events["time_ps"]), events["time_ps"])


def test_same_time_on_two_channels_leaves_in_channel_order():
    cfg = TwinConfig(channels=4, oversampling=4, delay_bins=[5, 0, 2, 0])
    n = 60
    # ch0 at bin 10 (+5 = 15), ch1 at 15, ch2 at 13 (+2 = 15), ch3 at 15: all at 15
    samples = samples_from_pulses([10, 15, 13, 15], [0, 1, 2, 3], 1, n, cfg)
    words, twin, _ = run_both(cfg, samples)
    np.testing.assert_array_equal(words, twin.words)
    events, _ = decode_words(words)
    tags = events[events["kind"] == Kind.TAG]
    assert list(tags["channel"]) == [0, 1, 2, 3]
    assert set(tags["time_ps"]) == {15 * cfg.bin_ps}


@pytest.mark.parametrize("start_now", [(1 << 29) - 40, (1 << 21) - 40], ids=["epoch", "compare-wrap"])
def test_counter_rollover_epoch_words_and_modular_merge(start_now):
    # crosses 2**32 bins (EPOCH word, low time rolls over) or 2**24 bins (the merger's
    # modular compare wraps), with delays that reorder channels across the boundary
    cfg = TwinConfig(channels=8, oversampling=8, start_now=start_now,
                     delay_bins=[0, 40, 3, 0, 17, 0, 9, 1])
    rng = np.random.default_rng(7)
    samples = pulses(rng, cfg, 120, 90)
    words, twin, _ = run_both(cfg, samples)
    np.testing.assert_array_equal(words, twin.words)
    events, stats = decode_words(words)
    bins = events["time_ps"] // cfg.bin_ps
    assert bins.min() < start_now * 8 + 320 and bins.max() >= start_now * 8 + 320
    assert np.all(np.diff(bins[events["kind"] == Kind.TAG]) >= 0)
    if start_now == (1 << 29) - 40:
        assert stats.epochs == 1  # the header sets epoch 0; one EPOCH at the rollover
        assert np.any(bins >= 1 << 32)


@pytest.mark.parametrize("n,seed", [(4, 11), (8, 12)])
def test_output_back_pressure_becomes_output_loss_records(n, seed):
    cfg = TwinConfig(channels=8, oversampling=n, sys_clk_hz=250_000_000 if n == 4 else 125_000_000,
                     fifo_depth=8, output_depth=8, dead_time_bins=[1, 2, 3, 0, 5, 8, 0, 2])
    rng = np.random.default_rng(seed)
    samples = pulses(rng, cfg, 300, 150, width=1, tail=80)
    ready = np.repeat(rng.random(30) < 0.4, 10)  # stalls of 10 clocks, 60 % of the time
    ready[-80:] = True
    words, twin, regs = run_both(cfg, samples, ready, read_counters=True)
    np.testing.assert_array_equal(words, twin.words)
    events, stats = decode_words(words)
    reasons = split_aux(events)["loss_reason"][events["kind"] == Kind.LOSS]
    assert LossReason.OUTPUT in reasons
    for i, name in enumerate(COUNTERS):
        got = [regs[REGISTER_MAP.address(name, ch)] for ch in range(8)]
        assert got == list(twin.counters[name]), name


def delivered_clocks(core, samples):
    """(clock, word) for every word the core delivers with the consumer always ready."""
    from amaranth.sim import Simulator

    from qnode.gateware.simulate import pack_pins

    out = []

    async def bench(ctx):
        ctx.set(core.words.ready, 1)
        for c in range(len(samples)):
            ctx.set(core.pins.as_value(), pack_pins(samples[c], core.oversampling))
            if ctx.get(core.words.valid):
                out.append((c, ctx.get(core.words.payload)))
            await ctx.tick()

    sim = Simulator(core)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out


@pytest.mark.parametrize("coincidence,latency", [(True, 14), (False, 11)])
def test_isolated_tag_latency_is_fixed(coincidence, latency):
    # capture 1, timestamper 2, FIFO 2, merger tree 3 levels (8 channels), a skid buffer, the
    # coincidence unit and a skid buffer 3 (when built), packer 1, output 2
    cfg = TwinConfig(channels=8, oversampling=4, sys_clk_hz=200_000_000, coincidence_unit=coincidence)
    k = np.arange(10, 200, 19)  # sample clocks, far apart
    fine = np.arange(len(k)) % 4  # every fine position, bit 0 to bit N-1
    ch = np.arange(len(k)) % 8
    samples = samples_from_pulses(k * 4 + fine, ch, 1, 220, cfg)
    core = TimeTaggerCore(channels=8, oversampling=4, sys_clk_hz=200_000_000,
                          coincidence=coincidence, herald=coincidence)
    delivered = delivered_clocks(core, samples)
    got = [(c, w) for c, w in delivered if w >> 60 == Kind.TAG]
    assert [w & 0xFFFFFFFF for _, w in got] == list(k * 4 + fine)
    assert merge_levels(8) == 3
    assert [c for c, _ in got] == list(k + latency)
    words = np.array([w for _, w in delivered], np.uint64)
    np.testing.assert_array_equal(words, Twin(cfg).run(samples=samples).words)


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_merger_tree_with_padding_matches_twin(channels):
    # channel counts that leave the merger tree's last subtrees empty (or a single channel)
    cfg = TwinConfig(channels=channels, oversampling=4, sys_clk_hz=250_000_000, fifo_depth=4,
                     output_depth=8, delay_bins=[7 * ch % 13 for ch in range(channels)])
    rng = np.random.default_rng(channels)
    samples = pulses(rng, cfg, 260, 40 * channels, width=1, tail=80)
    ready = np.repeat(rng.random(26) < 0.6, 10)
    ready[-80:] = True
    words, twin, _ = run_both(cfg, samples, ready)
    np.testing.assert_array_equal(words, twin.words)
    assert conserved(words, cfg, twin.entries + int(twin.counters["ts_same_clock_lost"].sum()))
