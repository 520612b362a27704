"""cocotb testbench: the herald path (InputCapture -> Timestampers -> HeraldUnit, the
HeraldBench of test_herald.py) as Verilog on Verilator, against the twin, measuring the herald
latency on every herald.

Driven by test_herald.py::test_herald_latency_on_verilator through cocotb_tools.runner. For
each seed and rule it plays random sample words clock by clock, records every HERALD record and
every rising edge of the pin, and writes to QNODE_RESULTS: the records, the twin's, and for each
herald the latency in clocks from the sample word that completed its condition (the word holding
the attempt's last window bin on the fastest watched channel, computed from the stimulus: the
attempt's sync edge, the offset, the rule's windows and the delays) to the pin's rising edge.
"""

import json
import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge

from qnode.sim.twin import edges_from_samples, timestamp
from qnode.sim.twin_herald import RULE_TWO

import test_herald as th

N = int(os.environ["QNODE_OVERSAMPLING"])
SEEDS = [int(s) for s in os.environ["QNODE_SEEDS"].split(",")]
CLOCKS = int(os.environ["QNODE_CLOCKS"])
RESULTS = os.environ["QNODE_RESULTS"]
PERIOD_NS = 1e9 / int(os.environ["QNODE_SYS_CLK_HZ"])


def pack(values, width):
    return sum(int(v) << (i * width) for i, v in enumerate(values))


def completing_word(cfg, settings, samples, attempt):
    """Sample clock holding the attempt's last window bin on the fastest watched channel."""
    entries = timestamp(edges_from_samples(samples, cfg), cfg)
    sync_time = entries.time[entries.channel(settings.sync_channel)][attempt]
    start = sync_time + settings.offset_bins
    last = start + (settings.late_bins if settings.rule == RULE_TWO else 0) + settings.length_bins - 1
    watched = settings.detector_mask | settings.veto_mask
    d_min = min(cfg.delay_bins[c] for c in range(cfg.channels) if watched >> c & 1)
    return (last - d_min) // N


async def run_case(dut, cfg, settings, samples):
    dut.rst.value = 1
    dut.pins.value = 0
    for name in th.SETTING_WIDTHS:
        getattr(dut, name).value = getattr(settings, name)
    dut.enable.value = pack(cfg.enable, 1)
    dut.edge.value = pack(cfg.edge, 1)
    dut.delay_bins.value = pack(cfg.delay_bins, 16)
    dut.dead_time_bins.value = pack(cfg.dead_time_bins, 16)
    for _ in range(3):
        await RisingEdge(dut.clk)
        await FallingEdge(dut.clk)
    pins = [pack(row, N) for row in samples]
    records, rises, last_pin = [], [], 0
    dut.rst.value = 0  # set at a falling edge: the next rising edge is clock 0
    for c in range(len(samples)):
        dut.pins.value = pins[c]
        if dut.record_valid.value:
            p = int(dut.record.value)
            # HeraldRecord: channel 6, outcome 4, attempt 18, time 56 (LSB first)
            records.append((c, p & 0x3F, (p >> 6) & 0xF, (p >> 10) & 0x3FFFF, p >> 28))
        pin = int(dut.pin.value)
        if pin and not last_pin:
            rises.append(c)
        last_pin = pin
        await RisingEdge(dut.clk)
        await FallingEdge(dut.clk)
    return records, rises


@cocotb.test()
async def herald_latency_against_twin(dut):
    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
    await FallingEdge(dut.clk)
    with open(RESULTS, "w") as out:
        for seed in SEEDS:
            for rule in (th.RULE_SINGLE, th.RULE_TWO):
                cfg, settings, samples = th.random_case(seed, rule, CLOCKS, N)
                records, rises = await run_case(dut, cfg, settings, samples)
                twin = th.twin_records(th.run_twin(cfg, settings, samples))
                latencies = [int(rise - completing_word(cfg, settings, samples, r[3]))
                             for rise, r in zip(rises, records)]
                out.write(json.dumps(dict(
                    seed=seed, rule=rule, heralds=len(records), pin_rises=len(rises),
                    matches_twin=records == twin, latencies=latencies)) + "\n")
