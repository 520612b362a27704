"""Benchmark: simulated photon source throughput (detector clicks generated per second of wall time).

Two workloads from lab_configs/sim.toml: the reference lab as configured (1.3 M clicks per
second of lab time, 78 % of them sync pulses) and a bright variant (pair rate x 20). Prints a
table and writes bench/results/source.json. Median of repeated runs; the machine is shared, so
the clicks per CPU-second (time.process_time) stand beside the wall rate.

``--against REV`` also runs the source of git revision REV (its sim/source.py and
sim/detector.py, imported from a temporary copy), batch for batch interleaved with the working
tree's in the same process, so both see the same load: the ratio is the speed-up. Both start
from the same seed, so the table also says whether the revision gave the very same clicks.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from qnode.host.config import load_config
from qnode.sim.source import PhotonSource

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
BATCH_PS = 100_000_000_000  # 100 ms of lab time per batch, as the simulated FPGA serves it
REPEATS = 15


def source_at_revision(rev: str):
    """PhotonSource as of git revision ``rev`` (sim/source.py and sim/detector.py)."""
    files = {}
    for name in ("source.py", "detector.py"):
        shown = subprocess.run(["git", "show", f"{rev}:sim/{name}"], cwd=ROOT, capture_output=True, text=True)
        if shown.returncode != 0:
            raise SystemExit(f"--against {rev}: git show {rev}:sim/{name} failed: {shown.stderr.strip()}")
        files[name] = shown.stdout
    home = Path(tempfile.mkdtemp(prefix="qnode-bench-source-"))
    package = home / "qnode_source_at_revision"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, text in files.items():
        (package / name).write_text(text)
    sys.path.insert(0, str(home))
    return importlib.import_module("qnode_source_at_revision.source").PhotonSource


def measure(cfg, sources, repeats=REPEATS):
    """Per source: median clicks per wall second and per CPU second over ``repeats`` batches, the
    sources taking turns batch by batch (the CPU rate is the steadier one when other processes
    share the cores; the generator is single-threaded), and whether every batch was the same
    clicks as the first source's."""
    gens = {name: cls(cfg) for name, cls in sources.items()}
    for src in gens.values():
        src.generate(BATCH_PS)  # compile the kernels, fill the pipeline
    wall = {name: [] for name in gens}
    cpu = {name: [] for name in gens}
    n_events = {}
    same = dict.fromkeys(gens, True)
    for _ in range(repeats):
        first = None
        for name, src in gens.items():
            t0, c0 = time.perf_counter(), time.process_time()
            clicks = src.generate(BATCH_PS)
            wall[name].append(len(clicks) / (time.perf_counter() - t0))
            cpu[name].append(len(clicks) / max(time.process_time() - c0, 1e-9))
            n_events[name] = len(clicks)
            first = clicks if first is None else first
            same[name] &= bool(np.array_equal(clicks, first))
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name]), n_events[name], same[name])
            for name in gens}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", metavar="REV", help="also measure the source of this git revision")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="batches per source and workload")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    sources = {"this tree": PhotonSource}
    if args.against:
        sources[args.against] = source_at_revision(args.against)

    workloads = {}
    cfg = load_config()
    workloads["reference lab"] = cfg
    bright = load_config()
    bright.sim.pair_source.rate_hz *= 20
    workloads["bright (pairs x20)"] = bright

    results = {}
    table = Table(title=f"photon source: clicks generated per second, median of {args.repeats} batches of 100 ms "
                        "(CPU-s ratio: this tree's clicks per CPU-s over the source's)")
    for col in ("workload", "source", "clicks a batch", "M clicks/s wall", "M clicks/CPU-s", "x real time",
                "CPU-s ratio", "same clicks"):
        table.add_column(col, justify="right")
    for name, c in workloads.items():
        measured = measure(c, sources, args.repeats)
        base_cpu = measured["this tree"][1]
        for source, (rate, cpu_rate, n, same) in measured.items():
            lab_rate = n / (BATCH_PS * 1e-12)
            entry = {"clicks_per_batch": n, "events_per_s": rate, "events_per_cpu_s": cpu_rate,
                     "x_real_time": rate / lab_rate}
            if source == "this tree":
                results[name] = entry
            else:
                entry["this_tree_cpu_speedup"] = base_cpu / cpu_rate
                entry["same_clicks_as_this_tree"] = same
                results[name].setdefault("against", {})[source] = entry
            ratio = "1" if source == "this tree" else f"{base_cpu / cpu_rate:.2f}x"
            table.add_row(name, source, f"{n:,}", f"{rate / 1e6:.1f}", f"{cpu_rate / 1e6:.1f}",
                          f"{rate / lab_rate:.0f}", ratio, "" if source == "this tree" else "yes" if same else "NO")
    Console(width=max(Console().width, 110)).print(table)
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} cores")
    RESULTS.mkdir(exist_ok=True)
    out = {"benchmark": "source", "machine": platform.machine(), "python": platform.python_version(),
           "batch_ps": BATCH_PS, "repeats": args.repeats, "workloads": results,
           "load_average": load,
           "source_events_per_s": results["reference lab"]["events_per_s"],
           "source_events_per_cpu_s": results["reference lab"]["events_per_cpu_s"]}
    (RESULTS / "source.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / 'source.json'}")


if __name__ == "__main__":
    main()
