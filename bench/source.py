"""Benchmark: simulated photon source throughput (detector clicks generated per second of wall time).

Two workloads from lab_configs/sim.toml: the reference lab as configured (1.3 M clicks per
second of lab time, 78 % of them sync pulses) and a bright variant (pair rate x 20). Prints a
table and writes bench/results/source.json. Median of repeated runs; the machine is shared.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from qnode.host.config import load_config
from qnode.sim.source import PhotonSource

RESULTS = Path(__file__).resolve().parent / "results"
BATCH_PS = 100_000_000_000  # 100 ms of lab time per batch, as the simulated FPGA serves it
REPEATS = 7


def measure(cfg, repeats=REPEATS):
    """Median clicks per wall second and per CPU second (the second is steadier when other
    processes share the cores; the generator is single-threaded)."""
    src = PhotonSource(cfg)
    src.generate(BATCH_PS)  # compile the kernels, fill the pipeline
    wall, cpu, n_events = [], [], 0
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        clicks = src.generate(BATCH_PS)
        wall.append(len(clicks) / (time.perf_counter() - t0))
        cpu.append(len(clicks) / max(time.process_time() - c0, 1e-9))
        n_events = len(clicks)
    return statistics.median(wall), statistics.median(cpu), n_events


def main():
    workloads = {}
    cfg = load_config()
    workloads["reference lab"] = cfg
    bright = load_config()
    bright.sim.pair_source.rate_hz *= 20
    workloads["bright (pairs x20)"] = bright

    results = {}
    table = Table(title="photon source: clicks generated per wall-clock second (median)")
    for col in ("workload", "clicks per 100 ms batch", "M clicks/s (wall)", "M clicks/CPU-s", "x real time"):
        table.add_column(col, justify="right")
    for name, c in workloads.items():
        rate, cpu_rate, n = measure(c)
        lab_rate = n / (BATCH_PS * 1e-12)
        results[name] = {"clicks_per_batch": n, "events_per_s": rate, "events_per_cpu_s": cpu_rate,
                         "x_real_time": rate / lab_rate}
        table.add_row(name, f"{n:,}", f"{rate / 1e6:.1f}", f"{cpu_rate / 1e6:.1f}", f"{rate / lab_rate:.0f}")
    Console().print(table)
    RESULTS.mkdir(exist_ok=True)
    out = {"benchmark": "source", "machine": platform.machine(), "python": platform.python_version(),
           "batch_ps": BATCH_PS, "repeats": REPEATS, "workloads": results,
           "load_average": os.getloadavg()[0],
           "source_events_per_s": results["reference lab"]["events_per_s"],
           "source_events_per_cpu_s": results["reference lab"]["events_per_cpu_s"]}
    (RESULTS / "source.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / 'source.json'}")


if __name__ == "__main__":
    main()
