"""cocotb testbench: TimeTaggerCore (Verilog from Amaranth) on Verilator against the twin.

Driven by tests/gateware/test_cocotb.py through cocotb_tools.runner; the configuration comes in
environment variables (QNODE_*). One simulation runs every seed and stimulus kind: for each it
holds the core in reset, sets the channel registers through the register port, plays sample
words and a stalling ``ready`` pattern clock by clock, and compares every word delivered with
the twin's word stream for the same input and stall pattern (the scoreboard), and the counter
registers with the twin's. Stimulus kinds: random (Poisson, bursts, all channels at once, each
with random coincidence patterns that emit COINCIDENCE words), and ``lab``: the simulated lab
(sim/source.py, time-compressed: lab_stimulus.py) with the herald unit on the lab's single-click
rule and four coincidence patterns; there the herald pin is watched and every herald's latency
measured, in clocks, from the sample word that completed its condition (computed from the
stimulus) to the pin's rising edge. Results go to the JSON-lines file QNODE_RESULTS for the
pytest side to check and report.
"""

import json
import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge

from qnode.firmware.events import Kind, decode_words, split_aux
from qnode.firmware.registers import REGISTER_MAP
from qnode.sim.twin import UNIT_COUNTER_NAMES, Twin, TwinConfig, samples_from_pulses

import lab_stimulus

CHANNELS = int(os.environ["QNODE_CHANNELS"])
N = int(os.environ["QNODE_OVERSAMPLING"])
SYS_CLK_HZ = int(os.environ["QNODE_SYS_CLK_HZ"])
FIFO_DEPTH = int(os.environ["QNODE_FIFO_DEPTH"])
OUTPUT_DEPTH = int(os.environ["QNODE_OUTPUT_DEPTH"])
SEEDS = [int(s) for s in os.environ["QNODE_SEEDS"].split(",")]
CLOCKS = int(os.environ.get("QNODE_CLOCKS", "3000"))
RESULTS = os.environ["QNODE_RESULTS"]
START_NOW = int(os.environ["QNODE_START_NOW"])  # the core's clock counter at reset (a build parameter)
KINDS = ("poisson", "bursts", "all_at_once", "lab")
DRAIN = 300  # clocks at the end with no input and the consumer ready


def make_case(seed: int, kind: int):
    """Registers, sample words and the ready pattern for one seed and stimulus kind."""
    rng = np.random.default_rng([seed, kind, CHANNELS, N])
    if KINDS[kind] == "lab":
        cfg, samples = lab_stimulus.lab_case(
            seed, oversampling=N, sys_clk_hz=SYS_CLK_HZ, n_clocks=CLOCKS, start_now=START_NOW,
            fifo_depth=FIFO_DEPTH, output_depth=OUTPUT_DEPTH, drain_clocks=DRAIN)
        # stalls, but fewer: most heralds and coincidences reach the scoreboard as words
        ready = np.repeat(rng.random(CLOCKS) < 0.85, rng.geometric(1 / 8, CLOCKS))[:CLOCKS]
        ready[-DRAIN:] = True
        return cfg, samples, ready
    patterns = int(rng.integers(1, 4))
    cfg = TwinConfig(
        channels=CHANNELS, oversampling=N, sys_clk_hz=SYS_CLK_HZ, fifo_depth=FIFO_DEPTH,
        output_depth=OUTPUT_DEPTH, start_now=START_NOW,
        delay_bins=list(rng.integers(0, 60, CHANNELS) * (rng.random(CHANNELS) < 0.5)),
        dead_time_bins=list(rng.integers(0, 3 * N, CHANNELS)),
        edge=list((rng.random(CHANNELS) < 0.2).astype(int)),
        enable=list((rng.random(CHANNELS) < 0.95).astype(int)),
        coinc_mask=[int(m) for m in rng.integers(1, 1 << CHANNELS, patterns)],
        coinc_window_bins=[int(w) for w in rng.integers(0, 8 * N, patterns)],
        coinc_min_fold=[int(f) for f in rng.integers(0, 4, patterns)],
        coinc_emit=int(rng.integers(0, 1 << patterns)),
    )
    span = (CLOCKS - DRAIN) * N
    base = START_NOW * N
    if KINDS[kind] == "poisson":
        rate = rng.uniform(0.01, 0.25, CHANNELS) / N  # pulses per bin, per channel
        counts = rng.poisson(rate * span)
        ch = np.repeat(np.arange(CHANNELS), counts)
        t = rng.integers(0, span, len(ch))
    elif KINDS[kind] == "bursts":
        starts = rng.integers(0, span - 80 * N, 6)
        t = np.concatenate([s + rng.integers(0, 80 * N, 60 * CHANNELS) for s in starts])
        ch = rng.integers(0, CHANNELS, len(t))
    else:  # every channel at once, often in the very same bin; sometimes twice in one clock
        at = np.sort(rng.choice(span // (2 * N), 150, replace=False)) * 2 * N
        jitter = rng.integers(0, N, (len(at), CHANNELS)) * (rng.random((len(at), 1)) < 0.5)
        t = (at[:, None] + jitter).reshape(-1)
        ch = np.tile(np.arange(CHANNELS), len(at))
        again = rng.random(len(t)) < 0.1
        t = np.concatenate([t, t[again] + 3])
        ch = np.concatenate([ch, ch[again]])
    width = int(rng.integers(1, 3))
    samples = samples_from_pulses(t + base, ch, width, CLOCKS, cfg)
    run_lengths = rng.geometric(1 / 12, CLOCKS)
    levels = rng.random(CLOCKS) < 0.45
    ready = np.repeat(levels, run_lengths)[:CLOCKS]
    ready[-DRAIN:] = True
    return cfg, samples, ready


async def write_register(dut, address: int, value: int):
    await FallingEdge(dut.clk)
    dut.addr.value = address
    dut.w_data.value = int(value)
    dut.w_en.value = 1
    await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.w_en.value = 0


async def read_register(dut, address: int) -> int:
    await FallingEdge(dut.clk)
    dut.addr.value = address
    await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    return int(dut.r_data.value)


async def run_case(dut, cfg: TwinConfig, samples, ready):
    dut.rst.value = 1
    dut.words__ready.value = 0
    dut.pins.value = 0
    dut.w_en.value = 0
    # the settings are written while the core is held in reset: they survive it
    for name, values in lab_stimulus.register_settings(cfg).items():
        for i, value in enumerate(values):
            await write_register(dut, REGISTER_MAP.address(name, i), value)
    pins = [sum(int(w) << (ch * N) for ch, w in enumerate(row)) for row in samples]
    words, rises, last_pin = [], [], 0
    dut.rst.value = 0  # set at a falling edge: the next rising edge is clock 0
    for c in range(len(samples)):
        dut.pins.value = pins[c]
        dut.words__ready.value = int(ready[c])
        if ready[c] and dut.words__valid.value:
            words.append(int(dut.words__payload.value))
        pin = int(dut.herald_pin.value)
        if pin and not last_pin:
            rises.append(c)
        last_pin = pin
        await RisingEdge(dut.clk)
        await FallingEdge(dut.clk)
    dut.words__ready.value = 0
    counters = {name: [await read_register(dut, REGISTER_MAP.address(name, i)) for i in range(CHANNELS)]
                for name in ("ts_tag_count", "ts_fifo_lost", "ts_output_lost")}
    for name in UNIT_COUNTER_NAMES + ("herald_latency_clocks",):
        counters[name] = [await read_register(dut, REGISTER_MAP.address(name, i))
                          for i in range(REGISTER_MAP[name].count)]
    return np.array(words, np.uint64), counters, rises


@cocotb.test()
async def scoreboard_against_twin(dut):
    cocotb.start_soon(Clock(dut.clk, 8, unit="ns").start())
    await FallingEdge(dut.clk)
    for seed in SEEDS:
        for kind in range(len(KINDS)):
            cfg, samples, ready = make_case(seed, kind)
            got, counters, rises = await run_case(dut, cfg, samples, ready)
            twin = Twin(cfg).run(samples=samples, ready=ready)
            want = twin.words
            n = min(len(got), len(want))
            mismatches = int(np.count_nonzero(got[:n] != want[:n])) + abs(len(got) - len(want))
            expected = dict(twin.counters)
            expected.update(twin.unit_counters)
            expected["herald_latency_clocks"] = [int(os.environ["QNODE_PIN_LATENCY"])]
            counter_mismatches = sum(counters[k] != list(expected[k]) for k in counters)
            # herald latency: the pin's rising edges against the sample words that completed
            # each herald's condition (from the stimulus; the twin says which attempts heralded)
            h = twin.heralds
            done = lab_stimulus.completing_words(cfg, samples, h.attempt_index) if len(h.clock) else []
            latencies = [int(r - d) for r, d in zip(rises, done)]
            events, stats = decode_words(want)
            aux = split_aux(events)
            loss = events["kind"] == Kind.LOSS
            record = dict(
                seed=seed, kind=KINDS[kind], channels=CHANNELS, oversampling=N,
                words=len(want), events_compared=int(np.count_nonzero(events["kind"] == Kind.TAG)),
                loss_records=int(np.count_nonzero(loss)),
                loss_by_reason=np.bincount(aux["loss_reason"][loss], minlength=3).tolist(),
                lost_events=stats.lost_events, mismatches=mismatches,
                counter_mismatches=int(counter_mismatches),
                heralds_compared=int(np.count_nonzero(events["kind"] == Kind.HERALD)),
                coincidences_compared=int(np.count_nonzero(events["kind"] == Kind.COINCIDENCE)),
                heralds=len(h.clock), pin_rises=len(rises),
                pin_rises_match_twin=rises == [int(x) for x in h.pin_clock],
                latencies_clocks=sorted(set(latencies)), latencies_measured=len(latencies),
            )
            dut._log.info("seed %d %s: %s", seed, KINDS[kind], record)
            with open(RESULTS, "a") as f:
                f.write(json.dumps(record) + "\n")
            if mismatches:
                first = int(np.flatnonzero(got[:n] != want[:n])[0]) if np.any(got[:n] != want[:n]) else n
                raise AssertionError(
                    f"seed {seed} {KINDS[kind]}: {mismatches} words differ, first at {first}: "
                    f"rtl {[hex(w) for w in got[first:first + 3]]} twin {[hex(w) for w in want[first:first + 3]]}")
            assert counter_mismatches == 0, f"seed {seed} {KINDS[kind]}: counters {counters}"
