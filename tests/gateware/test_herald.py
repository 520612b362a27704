"""HeraldUnit in the Amaranth simulator, behind the real input capture and timestampers (so
clocks are counted from the sample word on the pins): every rule, clicks exactly at the window
edges, two clicks in one clock, clicks exactly at the dead time, syncs early, late and missing,
49 attempts in flight, the fixed pin latency; and record for record against sim/twin_herald.py
on random stimulus."""

from dataclasses import replace

import numpy as np
import pytest
from amaranth import Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from qnode.gateware.capture import InputCapture
from qnode.gateware.herald import (
    ATTEMPT_QUEUE, LATE_BITS, LENGTH_BITS, OFFSET_BITS, PIN_CLOCKS_BITS, PIN_LATENCY, RECORD_LATENCY, RULE_OFF,
    RULE_SINGLE, RULE_TWO, HeraldRecord, HeraldUnit,
)
from qnode.gateware.params import TIME_BITS
from qnode.gateware.timestamper import Timestamper
from qnode.sim.twin import TwinConfig, edges_from_samples, samples_from_pulses, timestamp
from qnode.sim.twin_herald import HeraldSettings, heralds

N = 8
C = 5  # sync 0, spdc 1, 2, D+ 3, D- 4 (as the reference lab)
SETTING_WIDTHS = {"rule": 2, "sync_channel": 4, "detector_mask": 16, "veto_mask": 16,
                  "offset_bins": OFFSET_BITS, "length_bins": LENGTH_BITS, "late_bins": LATE_BITS,
                  "pin_clocks": PIN_CLOCKS_BITS}


class HeraldBench(wiring.Component):
    """Capture -> timestamper per channel -> HeraldUnit, wired as the core wires them; the
    timestamper settings are ports (also the top of the Verilator model below)."""

    def __init__(self, channels: int, oversampling: int):
        self.channels, self.oversampling = channels, oversampling
        ports = {
            "pins": In(data.ArrayLayout(oversampling, channels)),
            "enable": In(channels), "edge": In(channels),
            "delay_bins": In(data.ArrayLayout(16, channels)),
            "dead_time_bins": In(data.ArrayLayout(16, channels)),
            "pin": Out(1), "record_valid": Out(1), "record": Out(HeraldRecord),
            "attempt": Out(1), "lost": Out(1), "late": Out(1), "vetoed": Out(1),
            "success": Out(4),
        }
        ports.update({name: In(width) for name, width in SETTING_WIDTHS.items()})
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        c, n = self.channels, self.oversampling
        now = Signal(TIME_BITS)
        m.d.sync += now.eq(now + 1)
        m.submodules.capture = capture = InputCapture(c, n)
        m.d.comb += [capture.now.eq(now), capture.pins.eq(self.pins)]
        m.submodules.herald = herald = HeraldUnit(c, n)
        m.d.comb += herald.now.eq(now)
        for name in SETTING_WIDTHS:
            m.d.comb += getattr(herald, name).eq(getattr(self, name))
        for name in ("pin", "attempt", "lost", "late", "vetoed", "success"):
            m.d.comb += getattr(self, name).eq(getattr(herald, name))
        m.d.comb += [self.record_valid.eq(herald.record.valid),
                     self.record.eq(herald.record.payload)]
        for i in range(c):
            ts = Timestamper(n)
            m.submodules[f"ts{i}"] = ts
            m.d.comb += [
                ts.samples.eq(capture.samples[i]), ts.sample_now.eq(capture.sample_now),
                ts.enable.eq(self.enable[i]), ts.edge.eq(self.edge[i]),
                ts.delay_bins.eq(self.delay_bins[i]), ts.dead_time_bins.eq(self.dead_time_bins[i]),
                herald.tags[i].valid.eq(ts.entry.valid), herald.tags[i].payload.eq(ts.entry.payload),
                herald.lost_times[i].eq(ts.lost_time),
                herald.delays[i].eq(self.delay_bins[i]),
            ]
        return m


def run_rtl(cfg: TwinConfig, settings: HeraldSettings, samples):
    """Drive the sample words one per clock; return the records (clock, channel, outcome,
    attempt, time), the clocks the pin is high, and the counter pulses summed."""
    h = HeraldBench(cfg.channels, cfg.oversampling)
    records, pin_high = [], []
    counts = dict(attempt=0, lost=0, late=0, vetoed=0, success=[0, 0, 0, 0])

    async def tb(ctx):
        for name in SETTING_WIDTHS:
            ctx.set(getattr(h, name), getattr(settings, name))
        ctx.set(h.enable, sum(e << i for i, e in enumerate(cfg.enable)))
        ctx.set(h.edge, sum(e << i for i, e in enumerate(cfg.edge)))
        ctx.set(h.delay_bins, cfg.delay_bins)
        ctx.set(h.dead_time_bins, cfg.dead_time_bins)
        for clock, words in enumerate(samples):
            ctx.set(h.pins, [int(w) for w in words])
            if ctx.get(h.record_valid):
                p = ctx.get(h.record)
                records.append((clock, p.channel, p.outcome, p.attempt, p.time))
            if ctx.get(h.pin):
                pin_high.append(clock)
            for name in ("attempt", "lost", "late", "vetoed"):
                counts[name] += ctx.get(getattr(h, name))
            s = ctx.get(h.success)
            for k in range(4):
                counts["success"][k] += (s >> k) & 1
            await ctx.tick()

    sim = Simulator(h)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return records, pin_high, counts


def run_twin(cfg, settings, samples):
    entries = timestamp(edges_from_samples(samples, cfg), cfg)
    return heralds(entries, settings, channels=cfg.channels, oversampling=cfg.oversampling,
                   delay_bins=cfg.delay_bins, n_clocks=len(samples))


def twin_records(res):
    return [(int(a), int(b), int(c), int(d), int(e)) for a, b, c, d, e in
            zip(res.clock, res.channel, res.outcome, res.attempt, res.time)]


def stimulus(cfg, pulses, n_clocks, width=2):
    t = np.array([p[0] for p in pulses], np.int64)
    ch = np.array([p[1] for p in pulses], np.int64)
    return samples_from_pulses(t, ch, width, n_clocks, cfg)


CFG = TwinConfig(channels=C, oversampling=N)
SINGLE = HeraldSettings(rule=RULE_SINGLE, detector_mask=0b11000, offset_bins=100, length_bins=10)


def single(pulses, settings=SINGLE, cfg=CFG, n_clocks=80):
    samples = stimulus(cfg, pulses, n_clocks)
    rtl = run_rtl(cfg, settings, samples)
    twin = run_twin(cfg, settings, samples)
    assert rtl[0] == twin_records(twin)  # every case also holds the twin to the RTL
    return rtl


def test_single_click_psi_plus_and_psi_minus_with_the_fixed_latency():
    # sync at bin 40: window [140, 150); D+ (channel 3) at 143 -> psi+, D- at 147 -> psi-
    for ch, outcome in ((3, 1), (4, 2)):
        records, pin, counts = single([(40, 0), (143 + ch - 3 + 4 * (ch - 3), ch)])
        (clock, channel, got, attempt, time), = records
        assert (channel, got, attempt) == (ch, outcome, 0)
        # the sample word holding the window's last bin (149) is word 18: record at 18 + 7,
        # pin at 18 + 8
        assert clock == 149 // N + RECORD_LATENCY == 25
        assert pin == [149 // N + PIN_LATENCY] == [26]
        assert counts["success"][outcome - 1] == 1 and counts["attempt"] == 1


@pytest.mark.parametrize("t, heralded", [(139, False), (140, True), (149, True), (150, False)])
def test_clicks_exactly_at_the_window_edges(t, heralded):
    records, _, _ = single([(40, 0), (t, 3)])
    assert bool(records) == heralded
    if heralded:
        assert records[0][4] == t


def test_no_click_and_two_clicks_fail():
    assert single([(40, 0)])[0] == []
    assert single([(40, 0), (141, 3), (147, 4)])[0] == []
    assert single([(40, 0), (141, 3), (147, 3)])[0] == []


def test_two_clicks_in_one_clock_fail():
    # bins 144 and 146 are both in word 18: on two detectors, and on one (the second is a
    # same-clock loss, which still counts as a click)
    assert 144 // N == 146 // N
    assert single([(40, 0), (144, 3), (146, 4)])[0] == []
    assert single([(40, 0), (142, 3), (146, 3)])[0] == []


@pytest.mark.parametrize("second, heralded", [(146, False), (145, True)])
def test_clicks_exactly_at_the_dead_time(second, heralded):
    # dead time 6 bins on D+: a second pulse 6 bins after the first is recorded (two clicks:
    # no herald), one 5 bins after is inside the dead time and ignored (one click: herald)
    cfg = replace(CFG, dead_time_bins=[0, 0, 0, 6, 0])
    cfg.__post_init__()
    records, _, _ = single([(40, 0), (140, 3), (second, 3)], cfg=cfg)
    assert bool(records) == heralded


def test_veto_inside_the_window_cancels_the_herald():
    veto = replace(SINGLE, veto_mask=0b00010)
    records, _, counts = single([(40, 0), (143, 3), (148, 1)], settings=veto)
    assert records == [] and counts["vetoed"] == 1
    records, _, counts = single([(40, 0), (143, 3), (139, 1)], settings=veto)
    assert len(records) == 1 and counts["vetoed"] == 0


@pytest.mark.parametrize("sync, heralded", [(33, False), (34, True), (43, True), (44, False)])
def test_sync_early_and_late(sync, heralded):
    # the click stays at bin 143; the window [sync + 100, sync + 110) moves with the sync
    records, _, counts = single([(sync, 0), (143, 3)])
    assert bool(records) == heralded and counts["attempt"] == 1


def test_missing_sync_makes_no_attempt():
    records, pin, counts = single([(143, 3), (220, 3)])
    assert records == [] and pin == [] and counts["attempt"] == 0


def test_two_click_rule_same_and_different_detectors():
    two = replace(SINGLE, rule=RULE_TWO, late_bins=40)
    # early window [140, 150), late [180, 190)
    cases = [([(141, 3), (185, 3)], 3), ([(141, 3), (185, 4)], 4), ([(141, 4), (181, 3)], 4),
             ([(141, 3)], None), ([(185, 3)], None), ([(141, 3), (145, 4), (185, 3)], None),
             ([(141, 3), (182, 3), (188, 4)], None)]
    for clicks, outcome in cases:
        records, pin, _ = single([(40, 0)] + clicks, settings=two, n_clocks=90)
        if outcome is None:
            assert records == [] and pin == []
        else:
            (clock, channel, got, _, time), = records
            assert got == outcome and (channel, time) == (clicks[-1][1], clicks[-1][0])
            assert clock == 189 // N + RECORD_LATENCY


def test_pin_stays_high_for_pin_clocks():
    _, pin, _ = single([(40, 0), (143, 3)], settings=replace(SINGLE, pin_clocks=4))
    assert pin == [26, 27, 28, 29]


def test_latency_counts_from_the_fastest_watched_channel():
    # D- delayed by 20 bins: D+ (no delay) decides when its word with bin 149 is seen
    cfg = replace(CFG, delay_bins=[0, 0, 0, 0, 20])
    cfg.__post_init__()
    records, _, _ = single([(40, 0), (125, 4)], cfg=cfg)  # 125 + 20 = 145: inside
    (clock, channel, outcome, _, time), = records
    assert (channel, outcome, time) == (4, 2, 145) and clock == 149 // N + RECORD_LATENCY


def test_rule_off_counts_attempts_only():
    records, _, counts = single([(40, 0), (143, 3)], settings=replace(SINGLE, rule=RULE_OFF))
    assert records == [] and counts["attempt"] == 1
    # a zero-length window decides nothing either, and does not hold up the next attempt
    records, _, counts = single([(40, 0), (143, 3), (240, 0), (343, 3)],
                                settings=replace(SINGLE, length_bins=0), n_clocks=60)
    assert records == [] and counts["attempt"] == 2 and counts["late"] == 0


def test_49_attempts_in_flight_at_the_reference_offset():
    # the reference lab: sync every 1000 bins (1 MHz at 1 ns), window 49 000 bins later
    settings = replace(SINGLE, offset_bins=49_000, length_bins=10)
    pulses, want = [], []
    for a in range(60):
        pulses.append((20 + 1000 * a, 0))
        if a % 3 == 0:
            ch = 3 + (a // 3) % 2
            pulses.append((20 + 1000 * a + 49_000 + a % 10, ch))
            want.append((a, ch))
    n_clocks = (20 + 1000 * 59 + 49_000) // N + 20
    records, _, counts = single(pulses, settings=settings, n_clocks=n_clocks)
    assert [(r[3], r[1]) for r in records] == want
    assert counts["late"] == 0 and counts["lost"] == 0 and counts["attempt"] == 60


def test_a_full_attempt_queue_counts_lost_attempts():
    settings = replace(SINGLE, offset_bins=1 << 20)
    n = ATTEMPT_QUEUE + 10
    records, _, counts = single([(4 * N * a + 1, 0) for a in range(n)], settings=settings,
                                n_clocks=4 * n + 20)
    assert counts["attempt"] == n
    # one attempt is being evaluated, one waits in the next-attempt register and ATTEMPT_QUEUE
    # in the queue: the rest are lost (and counted)
    assert counts["lost"] == n - 2 - ATTEMPT_QUEUE


def test_an_attempt_whose_window_has_begun_is_late_and_skipped():
    # offset 4 bins: the click at 45 is seen before the unit can hold the window -> late
    records, _, counts = single([(40, 0), (45, 3)], settings=replace(SINGLE, offset_bins=4))
    assert records == [] and counts["late"] == 1


def random_case(seed, rule, n_clocks=3000, oversampling=N):
    """Syncs every ~120 bins (10 % missing), clicks around each window and its edges on the
    detectors and a veto channel, random delays and dead times."""
    rng = np.random.default_rng([seed, rule, oversampling])
    cfg = TwinConfig(channels=C, oversampling=oversampling, delay_bins=list(rng.integers(0, 30, C)),
                     dead_time_bins=list(rng.integers(0, 12, C)))
    settings = HeraldSettings(rule=rule, detector_mask=0b11000, veto_mask=int(rng.choice([0, 2])),
                              offset_bins=int(rng.integers(150, 400)),
                              length_bins=int(rng.integers(5, 30)), late_bins=40,
                              pin_clocks=int(rng.integers(1, 4)))
    period = 120  # bins between syncs
    syncs = np.arange(10, n_clocks * oversampling - 800, period) + rng.integers(0, 8, size=1)
    keep = rng.random(len(syncs)) > 0.1  # some syncs missing
    pulses = [(int(t), 0) for t in syncs[keep]]
    length = settings.length_bins
    for t in syncs:
        for start in (settings.offset_bins, settings.offset_bins + settings.late_bins):
            for _ in range(rng.poisson(0.9)):  # around each window, its edges included
                ch = int(rng.choice([1, 3, 4, 4, 3]))
                shift = cfg.delay_bins[0] - cfg.delay_bins[ch]  # aim in delayed time
                pulses.append((int(t + shift + start + rng.integers(-4, length + 4)), ch))
    return cfg, settings, stimulus(cfg, pulses, n_clocks)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("rule", [RULE_SINGLE, RULE_TWO])
def test_random_stimulus_against_the_twin(seed, rule):
    cfg, settings, samples = random_case(seed, rule)
    records, pin, counts = run_rtl(cfg, settings, samples)
    twin = run_twin(cfg, settings, samples)
    assert records == twin_records(twin)
    assert len(records) >= 5
    assert counts["attempt"] == twin.counters["herald_attempt_count"]
    assert counts["late"] == twin.counters["herald_late_count"]
    assert counts["vetoed"] == twin.counters["herald_veto_count"]
    assert counts["success"] == twin.counters["herald_success_count"]
    # the pin rises exactly PIN_LATENCY clocks after the sample word holding the window's end
    rises = [c for c in pin if c - 1 not in pin]
    assert rises == [int(c) for c in twin.done_sample + PIN_LATENCY]


# ---------------------------------------------------------------------------------------
# The same path as Verilog on Verilator (cocotb): latency measured on every herald

COCOTB_CONFIGS = {4: 200_000_000, 8: 125_000_000}  # N -> system clock (N = 4: the ULX3S)
COCOTB_SEEDS = (11, 12)
COCOTB_CLOCKS = 4000


def _cocotb_helpers():
    """test_cocotb.py's build-once helpers (tests run with --import-mode=importlib)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name("test_cocotb.py")
    spec = importlib.util.spec_from_file_location("qnode_test_cocotb", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("oversampling", list(COCOTB_CONFIGS))
def test_herald_latency_on_verilator(oversampling, tmp_path):
    import fcntl
    import hashlib
    import json
    import os
    from pathlib import Path

    from amaranth.back import verilog
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    helpers = _cocotb_helpers()
    helpers._verilator_env()
    text = verilog.convert(HeraldBench(C, oversampling), name="herald_bench")
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    build_dir = helpers.BUILD / f"herald_n{oversampling}_{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".lock", "w") as lock:  # built once, reused while the Verilog holds
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (build_dir / "herald_bench").exists():
            source = build_dir / "herald_bench.v"
            source.write_text(text)
            get_runner("verilator").build(
                sources=[source], hdl_toplevel="herald_bench", build_dir=build_dir,
                build_args=["-Wno-fatal", "-Wno-lint", "-Wno-style"], always=True,
                log_file=build_dir / "build.log")
    results = tmp_path / "heralds.jsonl"
    here = Path(__file__).parent
    xml = get_runner("verilator").test(
        test_module="cocotb_herald", hdl_toplevel="herald_bench", hdl_toplevel_lang="verilog",
        build_dir=build_dir, test_dir=here, results_xml=str(tmp_path / "results.xml"),
        extra_env={
            "QNODE_OVERSAMPLING": str(oversampling),
            "QNODE_SYS_CLK_HZ": str(COCOTB_CONFIGS[oversampling]),
            "QNODE_SEEDS": ",".join(map(str, COCOTB_SEEDS)), "QNODE_CLOCKS": str(COCOTB_CLOCKS),
            "QNODE_RESULTS": str(results),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(here), os.environ.get("PYTHONPATH")])),
        },
        log_file=tmp_path / "sim.log")
    total, failed = get_results(Path(xml))
    assert failed == 0 and total == 1, f"cocotb failed; see {tmp_path / 'sim.log'}"
    cases = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(cases) == 2 * len(COCOTB_SEEDS)
    latencies = [lat for case in cases for lat in case["latencies"]]
    clock_ns = 1e9 / COCOTB_CONFIGS[oversampling]
    print(f"\nVerilator N={oversampling}: {len(latencies)} heralds, latency clocks "
          f"{sorted(set(latencies))} = {PIN_LATENCY * clock_ns:g} ns")
    for case in cases:
        assert case["matches_twin"], case
        assert case["heralds"] == case["pin_rises"] >= 3, case
    # every herald, every rule: the same number of clocks, within the 100 ns target
    assert set(latencies) == {PIN_LATENCY}
    assert PIN_LATENCY * clock_ns <= 100
