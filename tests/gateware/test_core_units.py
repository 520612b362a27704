"""TimeTaggerCore with its coincidence and herald units, in the Amaranth simulator, word for word
against the twin (sim/twin.py with sim/twin_herald.py): COINCIDENCE and HERALD words in the
stream, the herald pin, the COINCIDENCE and HERALD registers, back-pressure on the output."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from amaranth.sim import Simulator

from qnode.firmware.events import Kind, LossReason, decode_words, split_aux
from qnode.firmware.registers import REGISTER_MAP
from qnode.gateware.core import TimeTaggerCore
from qnode.gateware.herald import PIN_LATENCY
from qnode.gateware.packer import HERALD_QUEUE
from qnode.gateware.simulate import pack_pins
from qnode.sim import twin as twin_module
from qnode.sim.twin import UNIT_COUNTER_NAMES, Twin, TwinConfig, samples_from_pulses
from qnode.sim.twin_herald import RULE_SINGLE, HeraldSettings


def _lab_stimulus():
    path = Path(__file__).with_name("lab_stimulus.py")
    spec = importlib.util.spec_from_file_location("qnode_lab_stimulus", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ls = _lab_stimulus()


def run_core(cfg: TwinConfig, samples, ready):
    """Words delivered, the clocks the herald pin rose, and every unit counter register."""
    core = TimeTaggerCore(channels=cfg.channels, oversampling=cfg.oversampling,
                          sys_clk_hz=cfg.sys_clk_hz, fifo_depth=cfg.fifo_depth,
                          output_depth=cfg.output_depth, start_now=cfg.start_now)
    settings = ls.register_settings(cfg)
    words, rises, regs = [], [], {}
    pins = [pack_pins(row, cfg.oversampling) for row in samples]
    reads = [(name, i) for name in UNIT_COUNTER_NAMES + ("herald_latency_clocks",)
             for i in range(REGISTER_MAP[name].count)]

    async def bench(ctx):
        for name, values in settings.items():
            for i, value in enumerate(values):
                ctx.set(core.regs.rw[name][i], value)
        last = 0
        for c in range(len(samples)):
            ctx.set(core.pins.as_value(), pins[c])
            ctx.set(core.words.ready, int(ready[c]))
            if ready[c] and ctx.get(core.words.valid):
                words.append(ctx.get(core.words.payload))
            pin = ctx.get(core.herald_pin)
            if pin and not last:
                rises.append(c)
            last = pin
            await ctx.tick()
        ctx.set(core.words.ready, 0)
        for name, i in reads:
            ctx.set(core.addr, REGISTER_MAP.address(name, i))
            await ctx.tick()
            regs.setdefault(name, []).append(ctx.get(core.r_data))

    sim = Simulator(core)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return np.array(words, np.uint64), rises, regs


def stalls(rng, n_clocks, ready_fraction, drain=300):
    runs = rng.geometric(1 / 10, n_clocks)
    ready = np.repeat(rng.random(n_clocks) < ready_fraction, runs)[:n_clocks]
    ready[-drain:] = True
    return ready


@pytest.mark.parametrize("oversampling,sys_clk_hz,seed,ready_fraction", [
    (8, 125_000_000, 1, 1.0), (4, 200_000_000, 2, 0.6), (8, 125_000_000, 3, 0.45)],
    ids=["n8-ready", "n4-stalls", "n8-heavy-stalls"])
def test_core_with_heralds_and_coincidences_matches_twin(oversampling, sys_clk_hz, seed,
                                                         ready_fraction):
    n_clocks = 1400
    cfg, samples = ls.lab_case(seed, oversampling=oversampling, sys_clk_hz=sys_clk_hz,
                               n_clocks=n_clocks, start_now=(1 << 32) // oversampling - 700)
    ready = stalls(np.random.default_rng(seed), n_clocks, ready_fraction)
    words, rises, regs = run_core(cfg, samples, ready)
    twin = Twin(cfg).run(samples=samples, ready=ready)
    np.testing.assert_array_equal(words, twin.words)
    for name, values in twin.unit_counters.items():
        assert regs[name] == list(values), name
    assert regs["herald_latency_clocks"] == [PIN_LATENCY]

    events, stats = decode_words(words)
    kinds = events["kind"]
    assert np.count_nonzero(kinds == Kind.COINCIDENCE) > 0
    # every herald raised the pin PIN_LATENCY clocks after the sample word that completed it
    h = twin.heralds
    assert len(h.clock) >= 5
    assert rises == list(h.pin_clock)  # the pin rises a clock after the record
    done = ls.completing_words(cfg, samples, h.attempt_index)
    assert set(np.asarray(rises) - done) == {PIN_LATENCY}
    heralds = events[kinds == Kind.HERALD]
    sent = int(np.count_nonzero(kinds == Kind.HERALD))
    if ready_fraction == 1.0:
        assert sent == len(h.clock) and stats.lost_events == 0
        assert list(split_aux(heralds)["herald_attempt"]) == list(h.attempt)
    else:
        # heralds and coincidences dropped at a stalled output come back as OUTPUT losses
        reasons = split_aux(events)["loss_reason"][kinds == Kind.LOSS]
        assert LossReason.OUTPUT in reasons
    assert regs["herald_lost_count"] == [0]


def test_a_dropped_herald_or_coincidence_is_an_output_loss_of_its_channel():
    # one sync, one D+ click in its window, a coincidence of the two SPDC arms; the consumer
    # stalls while the HERALD and COINCIDENCE words are due, so both are dropped and counted
    cfg = TwinConfig(channels=5, oversampling=8, fifo_depth=4, output_depth=4,
                     coinc_mask=[0b110], coinc_window_bins=[10], coinc_min_fold=[2], coinc_emit=1,
                     herald=HeraldSettings(rule=RULE_SINGLE, detector_mask=0b11000,
                                           offset_bins=200, length_bins=10))
    n = 400
    fill = [100 + 8 * k for k in range(6)]  # channel 4 tags that fill the stalled output FIFO
    pulses_t = [40] + fill + [245, 600, 604]
    pulses_c = [0] + [4] * len(fill) + [3, 1, 2]
    samples = samples_from_pulses(pulses_t, pulses_c, 1, n, cfg)
    ready = np.ones(n, bool)
    ready[20:200] = False
    twin = Twin(cfg).run(samples=samples, ready=ready)
    words, rises, regs = run_core(cfg, samples, ready)
    np.testing.assert_array_equal(words, twin.words)
    assert rises == list(twin.heralds.pin_clock) and len(rises) == 1
    assert regs["coinc_count"][0] == 1
    assert regs["herald_success_count"][0] == 1
    for name, values in twin.unit_counters.items():
        assert regs[name] == list(values), name
    events, stats = decode_words(words)
    aux = split_aux(events)
    kinds = events["kind"]
    assert not np.isin(kinds, [Kind.HERALD, Kind.COINCIDENCE]).any()  # both dropped ...
    output = (kinds == Kind.LOSS) & (aux["loss_reason"] == LossReason.OUTPUT)
    # ... and counted: every tag, the herald and the coincidence is a word or in a loss count
    assert np.count_nonzero(kinds == Kind.TAG) + int(aux["loss_count"][output].sum()) \
        == len(pulses_t) + 2
    # the herald's loss is its detector's (3), the coincidence's the tag that completed it (2)
    lost_on = set(events["channel"][output])
    assert {2, 3} <= lost_on


def test_herald_queue_depth_is_the_twins():
    assert twin_module.HERALD_QUEUE == HERALD_QUEUE
