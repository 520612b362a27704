"""Benchmark: the daemon's live phase lock on the reference simulated lab, scored on the TRUE phase.

A daemon on lab_configs/sim.toml (real TCP link to the simulated FPGA, the simulated stretcher
driver) runs its ``phase_lock`` loop for ``--seconds`` (30). The simulated lab knows the
interferometer's true phase: every 0.5 s the phase over the event times seen since the last
sample is read at 1 ms (the interferometer keeps only ~2 s of actuator history, so it cannot
be read afterwards) and compared with the setpoint. Reported per run: the true residual's RMS
(all of it after ``--warm-up``, and the part while the loop says ``locked``), the loop's own
estimate (``phase_error_rms_deg``: RMS of its error over its last 1000 locked steps), steps per
second, relocks and sign flips, and how old the newest event is when the loop steps (lab clock
minus newest event time: the latency the loop cannot see).

``--ref REV`` also runs ``host/phase_lock.py`` as it was at git revision REV (loaded in this
process from ``git show``) on the same lab, as the reference. Runs alternate (ref, new, ref,
new...) ``--runs`` times; the table shows medians and bench/results/phase_lock_live.json every run.

    .venv/bin/python bench/phase_lock_live.py [--seconds 30] [--runs 1] [--ref 615f261]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

import qnode.host.phase_lock as current
from qnode.host.config import load_config
from qnode.host.daemon import Daemon

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SAMPLE_PS = 1_000_000_000  # score the true phase every 1 ms
READ_EVERY_S = 0.5


def module_at(rev: str):
    """host/phase_lock.py at git revision ``rev``, as a module of the qnode.host package."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:host/phase_lock.py"], check=True,
                            capture_output=True, text=True).stdout
    name = f"qnode.host._phase_lock_{rev.replace('~', '_').replace('^', '_')}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "qnode.host"
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:host/phase_lock.py", "exec"), module.__dict__)
    return module


def run_live(module, seconds: float, warm_up_s: float, settings: dict | None = None) -> dict:
    config = load_config()
    entry = config.loops["phase_lock"]
    if settings:
        entry = entry.model_copy(update={"settings": {**entry.settings, **settings}})
    with Daemon(config, control_url="tcp://127.0.0.1:0", stream_url="tcp://127.0.0.1:0") as daemon:
        model = daemon.lab.model
        driver = daemon.instruments[entry.settings["actuator"]]
        loop = module.make_phase_lock_loop("phase_lock", entry, reference=config.sim.reference,
                                           actuator=driver.set_voltage_v)
        daemon.loops["phase_lock"] = loop  # the acquisition thread feeds whatever is there
        cycle_ps = loop.cycle_ps
        steps: list[tuple[float, float, float | None, str]] = []  # (wall s, event age ms, error deg, state)
        plain_step = loop.step
        estimates: list[tuple[float, float]] = []  # (burst time s, the controller's phase there)
        checked: list[float] = []  # estimate minus true phase at the bursts, deg

        def step():
            plain_step()
            newest_ps = (loop._latest_cycle + 1) * cycle_ps
            age_ms = model.now_s() * 1e3 - newest_ps * 1e-9
            c = loop.controller
            error = None if c.error_rad is None else math.degrees(c.error_rad)
            steps.append((time.monotonic(), age_ms, error, c.state))
            t_b = getattr(loop, "_last_burst_t_s", None)
            if t_b is not None and c.phase_rad is not None and t_b != (estimates[-1][0] if estimates else None):
                estimates.append((t_b, c.phase_rad))

        loop.step = step
        # The sim's FPGA stamps events in the lab model's time (the clock the stretcher's steps
        # act on); what is left between the two is the production's lag, reported as a check.
        device = daemon.lab.fpga.server.device
        plain_produce = device.produce
        fpga_zero_s: list[float] = []

        def produce(duration_ps):
            words = plain_produce(duration_ps)
            fpga_zero_s.append(time.monotonic() - device.source.now_ps * 1e-12)
            return words

        device.produce = produce
        setpoint = math.radians(loop.controller.settings.setpoint_deg)
        t_start = time.monotonic()
        loop.start()
        times_ps, residual_deg, locked = [], [], []
        scored_from_ps = None
        while time.monotonic() - t_start < warm_up_s + seconds:
            time.sleep(READ_EVERY_S)
            newest_ps = (loop._latest_cycle - 1) * cycle_ps  # the phase there is final
            if time.monotonic() - t_start < warm_up_s or newest_ps <= 0:
                continue
            if scored_from_ps is None:
                scored_from_ps = newest_ps
                continue
            t = np.arange(scored_from_ps, newest_ps, SAMPLE_PS, dtype=np.int64)
            scored_from_ps = int(t[-1]) + SAMPLE_PS if len(t) else scored_from_ps
            if not len(t):
                continue
            times_ps.append(t)
            residual_deg.append(np.degrees(current.wrap_rad(model.phase_rad(t) - setpoint)))
            locked.append(np.full(len(t), loop.controller.state == "locked"))
            done = [e for e in estimates if e[0] * 1e12 < newest_ps]
            del estimates[:len(done)]
            if done:
                tb = np.array([e[0] for e in done])
                truth = model.phase_rad(np.rint(tb * 1e12).astype(np.int64))
                checked.extend(np.degrees(current.wrap_rad(np.array([e[1] for e in done]) - truth)).tolist())
        loop.stop()
        status = loop.status()
        device.produce = plain_produce
        clock_offset_ms = 1e3 * (min(fpga_zero_s) - model.clock._start) if fpga_zero_s else None
    residual = np.concatenate(residual_deg)
    # which samples were while locked: by the state at the read (0.5 s granularity)
    held = np.concatenate(locked)
    scored = [s for s in steps if s[0] - t_start >= warm_up_s]
    errors = np.array([s[2] for s in scored if s[2] is not None and s[3] == "locked"])
    span_s = scored[-1][0] - scored[0][0] if len(scored) > 1 else float("nan")
    return {
        "true_rms_deg": float(np.sqrt(np.mean(residual ** 2))),
        "true_rms_locked_deg": float(np.sqrt(np.mean(residual[held] ** 2))) if held.any() else None,
        "true_p95_abs_deg": float(np.percentile(np.abs(residual), 95)),
        "own_rms_deg": status["phase_error_rms_deg"],
        "estimate_error_rms_deg": float(np.sqrt(np.mean(np.square(checked)))) if checked else None,
        "own_rms_scored_deg": float(np.sqrt(np.mean(errors ** 2))) if len(errors) else None,
        "updates_per_s": status["cycles"] / max(time.monotonic() - t_start, 1e-9),
        "steps_with_bursts_per_s": (len(scored) - sum(1 for s in scored if s[2] is None)) / span_s,
        "event_age_ms_median": float(np.median([s[1] for s in scored])),
        "event_age_ms_p5_p95": [float(np.percentile([s[1] for s in scored], q)) for q in (5, 95)],
        "sim_clock_offset_ms": clock_offset_ms,
        "loop_latency_s": status.get("latency_s"),
        "relocks": status["relocks"], "sign_flips": status["sign_flips"], "state": status["state"],
        "stale_steps": status.get("stale_steps"),  # steps that held the actuator: data too old
        "scored_s": len(residual) * SAMPLE_PS * 1e-12,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warm-up", type=float, default=5.0, help="acquisition sweep and settling, not scored")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--ref", help="also run host/phase_lock.py at this git revision (reference)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a loop setting for the current code's runs (repeatable)")
    args = parser.parse_args()
    settings = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    variants = []
    if args.ref:
        variants.append((f"ref {args.ref}", module_at(args.ref), {}))
    variants.append(("current", current, settings))
    results: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
    for _ in range(args.runs):
        for name, module, extra in variants:
            results[name].append(run_live(module, args.seconds, args.warm_up, extra))
            print(name, json.dumps(results[name][-1]), flush=True)

    def med(runs, key):
        values = [r[key] for r in runs if r[key] is not None]
        return float(np.median(values)) if values else None

    keys = [("true_rms_deg", "true RMS (deg)"), ("true_rms_locked_deg", "true RMS locked"),
            ("true_p95_abs_deg", "true |res| p95"), ("own_rms_deg", "own estimate RMS"),
            ("steps_with_bursts_per_s", "updates/s"), ("event_age_ms_median", "event age at step (ms)"),
            ("relocks", "relocks"), ("sign_flips", "sign flips"), ("stale_steps", "stale steps")]
    table = Table(title=f"daemon phase lock, reference sim lab, {args.seconds:.0f} s runs, median of {args.runs}")
    table.add_column("code")
    for _, label in keys:
        table.add_column(label, justify="right")
    for name, runs in results.items():
        table.add_row(name, *(f"{med(runs, k):.1f}" if med(runs, k) is not None else "-" for k, _ in keys))
    Console().print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"seconds": args.seconds, "warm_up_s": args.warm_up, "settings": settings,
           "medians": {name: {k: med(runs, k) for k, _ in keys} for name, runs in results.items()},
           "runs": results}
    (RESULTS / "phase_lock_live.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {RESULTS / 'phase_lock_live.json'}")


if __name__ == "__main__":
    main()
