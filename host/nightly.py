"""The nightly calibration job: ``qnode calibrate --nightly --config FILE``.

In order: the detector bias sweep, the delay calibration, the coincidence window, the phase
lock. Each result is checked against the config's ``[calibration.tolerances]`` and against the
previous night's (``[calibration] history``, a JSON file this job appends to); then a report is
written (``report.html`` with PNG plots, and ``report.json``) and the job exits

- 0: everything ran and is within tolerance;
- 1: out of tolerance (``failures`` in the report say what and by how much);
- 2: could not run (no lab, daemon unreachable, a step raised; ``errors`` say which).

Where it runs: against a running daemon (``daemon_url``: tags from its event stream, registers
through its API, the phase lock's own status), or, for a simulated lab (``fpga.link =
"sim://"``) with no daemon, by starting the lab itself in simulated time: the lab model, its
simulated SNSPD controller on a real socket (the real driver talks to it), the simulated FPGA's
device for tags and registers, and the phase lock run against the interferometer model, scored
on the true phase. A simulated run also records the simulation's true values beside the
results (``sim_truth``): a check of the calibration, never an input to it.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bias_sweep import BiasSweepSettings, EosCounts, sweep_bias
from .calibration import (
    Pair, SimTagSource, calibrate_delays, correlation, optimise_window, pair_key,
)
from .config import LabConfig
from .phase_lock import PhaseLockSettings, simulate_lock

EXIT_OK, EXIT_OUT_OF_TOLERANCE, EXIT_COULD_NOT_RUN = 0, 1, 2


# --- where the job runs ------------------------------------------------------------------


class SimulatedBench:
    """The simulated lab started by the job itself, in simulated time."""

    simulated = True

    def __init__(self, config: LabConfig):
        self.config = config

    def __enter__(self):
        from qnode.sim.clock import SimClock
        from qnode.sim.instruments.rack import InstrumentRack
        from qnode.sim.lab import LabModel

        self.clock = SimClock()
        self.lab = LabModel(self.config, clock=self.clock)
        name = self.config.calibration.bias_instrument
        instruments = {name: self.config.instruments[name]} if name else {}
        self.rack = InstrumentRack(self.config.model_copy(update={"instruments": instruments}), self.lab,
                                   any_free_port=True).start()
        self.tags = SimTagSource(self.config, lab=self.lab)
        self._driver = None
        return self

    def counts(self) -> EosCounts:
        from qnode.drivers.registry import open_instrument

        name = self.config.calibration.bias_instrument
        # A generous I/O timeout: the simulated controller's counts thread polls the SimClock,
        # and on a busy machine its line can take a while to come.
        entry = self.rack.config_entry(name).model_copy(update={"timeout_s": 10.0})
        self._driver = open_instrument(name, entry)
        return EosCounts(self._driver, advance=self.clock.advance)

    def light(self, on: bool) -> None:
        """The simulated lab's shutter: the bias sweep measures dark counts with it closed."""
        self.lab.light_on = bool(on)

    def phase_lock(self, settings: dict, seconds: float, kicks: list) -> dict:
        run = simulate_lock(self.config, duration_s=seconds, settings=settings, kicks=kicks)
        return {"run": run}

    def truth(self) -> dict:
        sim = self.config.sim
        return {"cable_delay_ps": {str(k): v for k, v in sim.cable_delay_ps.items()}}

    def __exit__(self, *exc):
        if self._driver is not None:
            self._driver.close()
        self.rack.stop()


class DaemonBench:
    """A running daemon: tags from its stream, registers through its API."""

    simulated = False

    def __init__(self, config: LabConfig, control_url: str, stream_url: str):
        self.config, self.control_url, self.stream_url = config, control_url, stream_url

    def __enter__(self):
        from .calibration import DaemonTagSource
        from .client import Client

        self.client = Client(self.control_url, timeout_s=10.0)
        self.client.call("ping")  # fails fast (TimeoutError) when no daemon answers
        self.tags = DaemonTagSource(self.client, self.stream_url)
        self._driver = None
        return self

    def counts(self) -> EosCounts | None:
        from qnode.drivers.registry import open_instrument

        name = self.config.calibration.bias_instrument
        if self.config.instruments[name].sim:
            return None  # the simulated controller lives inside the daemon's lab, out of reach
        self._driver = open_instrument(name, self.config.instruments[name])
        return EosCounts(self._driver)

    def phase_lock(self, settings: dict, seconds: float, kicks: list) -> dict | None:
        loop = self.client.call("loops.list").get("phase_lock")
        if loop is None or not loop.get("running"):
            return None
        first = loop
        time.sleep(seconds)
        last = self.client.call("loops.status", name="phase_lock")
        return {"status": last, "relocks": last.get("relocks", 0) - first.get("relocks", 0)}

    def truth(self) -> dict:
        return {}

    def __exit__(self, *exc):
        if self._driver is not None:
            self._driver.close()
        self.client.close()


# --- the job ---------------------------------------------------------------------------


@dataclass
class Night:
    config: LabConfig
    started: str
    results: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    drift: list[dict] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)

    def check(self, quantity: str, value, ok: bool, message: str) -> None:
        if not ok:
            self.failures.append(f"{quantity}: {message}")


def load_history(path: Path) -> list[dict]:
    try:
        return json.loads(Path(path).read_text())["nights"]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError) as exc:
        raise RuntimeError(f"{path}: not a calibration history ({exc}); move it away to start a new one") from None


def _new_directory(root: Path, name: str) -> Path:
    """``root/name``, or ``name-2``, ``name-3`` ... when a run in the same second took it: a
    report is never written over another."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        path = root / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"{root}: 999 reports named {name}; clean up the report directory")


def _previous(history: list[dict]) -> dict | None:
    for night in reversed(history):
        if night.get("exit_code") in (EXIT_OK, EXIT_OUT_OF_TOLERANCE):
            return night
    return None


def _drift(night: Night, quantity: str, previous, current, tolerance: float, unit: str, relative: bool = False):
    if previous is None or current is None:
        return
    change = current - previous
    measure = abs(change) / abs(previous) if relative and previous else abs(change)
    ok = measure <= tolerance
    night.drift.append({"quantity": quantity, "previous": previous, "current": current, "change": change,
                        "tolerance": tolerance, "unit": "fraction" if relative else unit, "ok": ok})
    if not ok:
        how = f"{measure:.2f} of last night's" if relative else f"{change:+.3g} {unit}"
        night.failures.append(f"{quantity} drifted since last night: {previous:.4g} -> {current:.4g} ({how}; "
                              f"tolerance {tolerance:g}{'' if relative else ' ' + unit})")


STEPS = ("bias", "delays", "window", "phase")


def run_nightly(config: LabConfig, *, daemon_url: str | None = None, stream_url: str | None = None,
                out_dir: Path | None = None, history_path: Path | None = None,
                steps: tuple[str, ...] = STEPS, record_history: bool = True) -> tuple[int, dict, Path]:
    """Run the job; returns (exit code, the JSON report, the report's directory). ``steps``
    picks calibrations (the one-shot ``qnode calibrate delays`` runs one, without history)."""
    t0 = time.monotonic()
    cal = config.calibration
    started = dt.datetime.now().astimezone()
    night = Night(config, started.isoformat(timespec="seconds"))
    out_root = Path(out_dir or cal.report_directory)
    report_dir = _new_directory(out_root, f"{config.node.name}-{started:%Y%m%d-%H%M%S}")
    history_path = Path(history_path or cal.history)
    try:
        history = load_history(history_path)
    except RuntimeError as exc:
        history = []
        night.errors.append(str(exc))
    previous = _previous(history) if record_history else None
    lock_run = None
    try:
        if daemon_url is not None:
            from .daemon import DEFAULT_STREAM

            bench = DaemonBench(config, daemon_url, stream_url or DEFAULT_STREAM)
        elif config.fpga.link == "sim://" and config.sim is not None:
            bench = SimulatedBench(config)
        else:
            raise RuntimeError(f"no daemon given (--daemon URL) and {config.fpga.link} is not a simulated lab: "
                               "start `qnode daemon` and pass its control address")
        with bench:
            for name, step in (("bias", _bias), ("delays", _delays), ("window", _window), ("phase", _phase)):
                if name not in steps:
                    continue
                try:
                    out = step(night, bench, previous)
                    if name == "phase":
                        lock_run = out
                except Exception as exc:  # one step failing does not hide the others' results
                    night.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                    night.results.setdefault("tracebacks", {})[name] = traceback.format_exc()
            night.results["sim_truth"] = _truth(night, bench)
    except Exception as exc:
        night.errors.append(f"could not start: {type(exc).__name__}: {exc}")

    exit_code = EXIT_COULD_NOT_RUN if night.errors else EXIT_OUT_OF_TOLERANCE if night.failures else EXIT_OK
    wall_s = time.monotonic() - t0
    report = _report(night, exit_code, wall_s)
    summary = _summary(report)
    nights = history + [summary]
    try:
        _plots(night, report, nights, lock_run, report_dir)
    except Exception as exc:  # a plot must not cost the verdict
        report["errors"].append(f"plots: {type(exc).__name__}: {exc}")
    report["wall_s"] = time.monotonic() - t0
    report["plots"] = night.plots
    (report_dir / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
    (report_dir / "report.html").write_text(_html(report))
    if record_history and (exit_code != EXIT_COULD_NOT_RUN or not history_path.exists()):
        history_path.parent.mkdir(parents=True, exist_ok=True)
        history_path.write_text(json.dumps({"nights": nights}, indent=1, default=_json_default))
    return exit_code, report, report_dir


# --- the steps -------------------------------------------------------------------------------


def _bias(night: Night, bench, previous: dict | None):
    cal = night.config.calibration
    if cal.bias_instrument is None:
        night.results["bias"] = {"skipped": "no [calibration] bias_instrument"}
        return
    settings = BiasSweepSettings(**cal.bias)
    counts = bench.counts()
    if counts is None:
        night.results["bias"] = {"skipped": f"{cal.bias_instrument} is simulated inside the daemon's lab"}
        night.skipped.append("bias: the simulated SNSPD controller belongs to the daemon's lab")
        return
    results = sweep_bias(counts, settings, light=getattr(bench, "light", None))
    night.results["bias"] = {str(r.detector): r.to_dict() for r in results}
    tol = cal.tolerances
    for r in results:
        night.check(f"bias detector {r.detector}", r.ok, r.ok, r.reason)
        old = (previous or {}).get("bias", {}).get(str(r.detector), {})
        _drift(night, f"plateau start detector {r.detector}", old.get("plateau_start_ua"), r.plateau_start_ua,
               tol.bias_change_ua, "uA")
        _drift(night, f"switching current detector {r.detector}", old.get("switching_ua"), r.switching_ua,
               tol.bias_change_ua, "uA")


def _delays(night: Night, bench, previous: dict | None):
    cal = night.config.calibration
    if not cal.delay_pairs:
        night.results["delays"] = {"skipped": "no [calibration] delay_pairs"}
        return
    pairs = [Pair(p.channel_a, p.channel_b, p.shape, p.range_ps, p.tail_ps) for p in cal.delay_pairs]
    result = calibrate_delays(bench.tags, pairs, duration_s=cal.delay_seconds, verify_s=cal.delay_seconds / 2)
    bin_ps = bench.tags.bin_ps
    raw = {}
    for f in result.fits:
        key = pair_key(f.channel_a, f.channel_b)
        # the pair's own offset without any delays: comparable night to night
        raw[key] = f.offset_ps - (result.before_bins.get(f.channel_b, 0) - result.before_bins.get(f.channel_a, 0)) * bin_ps
    night.results["delays"] = {**result.to_dict(), "raw_offset_ps": raw, "bin_ps": bin_ps}
    night.check("delays", result.applied, result.applied, result.reason)
    tol = cal.tolerances
    errors = {k: v / bin_ps for k, v in result.residual_ps.items()}
    night.results["delay_error_bins"] = errors
    for key, err in errors.items():
        night.check(f"delay {key}", err, abs(err) <= tol.delay_error_bins,
                    f"peak {err:+.2f} bins from zero after applying (tolerance {tol.delay_error_bins})")
    old = (previous or {}).get("delay_raw_offset_ps", {})
    for key, value in raw.items():
        if key in old:
            _drift(night, f"delay {key}", old[key] / bin_ps, value / bin_ps, tol.delay_change_bins, "bins")


def _window(night: Night, bench, previous: dict | None):
    cal = night.config.calibration
    if cal.window_pair is None:
        night.results["window"] = {"skipped": "no [calibration] window_pair"}
        return
    a, b = cal.window_pair
    t, ch = bench.tags.acquire(cal.delay_seconds)
    hist = correlation(t, ch, a, b, bench.tags.bin_ps, 20_000)
    choice = optimise_window(hist, target_car=cal.target_car)
    night.results["window"] = {**choice.to_dict(), "delays_ps": hist.delays_ps.tolist(), "counts": hist.counts.tolist()}
    tol = cal.tolerances
    night.check("car", choice.car, choice.car >= tol.car_min, f"CAR {choice.car:.0f} below {tol.car_min:g}")
    _drift(night, "car", (previous or {}).get("car"), choice.car, tol.car_change_fraction, "", relative=True)


def _phase(night: Night, bench, previous: dict | None):
    cal = night.config.calibration
    loop = night.config.loops.get("phase_lock")
    known = set(PhaseLockSettings.__dataclass_fields__)
    settings = {k: v for k, v in (loop.settings if loop is not None else {}).items() if k in known}
    seconds = cal.phase_seconds
    kicks = []
    if cal.phase_kicks and bench.simulated:
        # three half-fringe kicks (the worst case) and a full fringe, at odd moments of the cycle
        kicks = [(f * seconds + 0.0001 * (i + 1) + 0.00003, d)
                 for i, (f, d) in enumerate(((0.25, math.pi), (0.45, -math.pi), (0.65, math.pi), (0.85, 2 * math.pi)))]
    out = bench.phase_lock(settings, seconds, kicks)
    tol = cal.tolerances
    if out is None:
        night.results["phase"] = {"skipped": "the daemon's phase_lock loop is not running (loops.start)"}
        night.skipped.append("phase: the daemon's phase_lock loop is not running (qnode: loops.start name=phase_lock)")
        return None
    if "run" in out:
        run = out["run"]
        locked = run.locked_at_s if run.locked_at_s is not None else seconds
        quiet_end = kicks[0][0] if kicks else seconds
        rms = run.rms_deg(min(locked + 0.02, quiet_end), quiet_end)
        half = [run.relock_ms(t) for t, d in kicks if abs(abs(d) - math.pi) < 1e-9]
        full = [run.relock_ms(t) for t, d in kicks if abs(abs(d) - 2 * math.pi) < 1e-9]
        # The figure is the worst of the half-fringe kicks (the acceptance is on every kick);
        # each one is in the report beside it.
        relock = None if not half or None in half else float(max(half))
        night.results["phase"] = {"phase_rms_deg": rms, "relock_ms_pi_kicks": half, "relock_ms_2pi_kicks": full,
                                  "acquired_ms": 1e3 * locked, "status": run.controller.status(),
                                  "scored_on": "true phase (simulation)"}
        night.results["phase_rms_deg"] = rms
        night.results["relock_ms"] = relock
        night.check("phase_rms_deg", rms, rms <= tol.phase_rms_max_deg,
                    f"{rms:.1f} deg RMS > {tol.phase_rms_max_deg:g}")
        if kicks:
            night.check("relock_ms", relock, relock is not None and relock <= tol.relock_max_ms,
                        f"slowest relock after the half-fringe kicks {relock} ms (each: {half}) > {tol.relock_max_ms:g}")
            night.check("relock_ms (2 pi)", full, all(v is not None and v <= tol.relock_max_ms for v in full),
                        f"relock after a full-fringe kick {full} ms > {tol.relock_max_ms:g}")
        return run
    status = out["status"]
    rms = status.get("phase_error_rms_deg")
    night.results["phase"] = {"status": status, "relocks": out["relocks"], "scored_on": "the loop's own estimate"}
    night.results["phase_rms_deg"] = rms
    night.results["relock_ms"] = None
    if rms is not None:
        night.check("phase_rms_deg", rms, rms <= tol.phase_rms_max_deg, f"{rms:.1f} deg RMS > {tol.phase_rms_max_deg:g}")
    return None


def _truth(night: Night, bench) -> dict:
    truth = bench.truth()
    delays = night.results.get("delays", {})
    if truth and "raw_offset_ps" in delays:
        true = {int(k): v for k, v in truth["cable_delay_ps"].items()}
        err = {}
        for key, value in delays["raw_offset_ps"].items():
            a, b = (int(x) for x in key.split("-"))
            err[key] = (value - (true.get(b, 0) - true.get(a, 0))) / delays["bin_ps"]
        truth["delay_error_vs_truth_bins"] = err
    return truth


# --- the report -------------------------------------------------------------------------------


def _report(night: Night, exit_code: int, wall_s: float) -> dict:
    r = night.results
    bias = r.get("bias", {})
    fractions = [d["bias_fraction"] for d in bias.values() if isinstance(d, dict) and d.get("bias_fraction")]
    window = r.get("window", {})
    return {
        "exit_code": exit_code,
        "node": night.config.node.name,
        "started": night.started,
        "wall_s": wall_s,
        "delay_error_bins": r.get("delay_error_bins", {}),
        "delay_raw_offset_ps": r.get("delays", {}).get("raw_offset_ps", {}),
        "delays_bins": r.get("delays", {}).get("after_bins", {}),
        "car": window.get("car"),
        "g2_zero": window.get("g2_zero"),
        "window_ps": window.get("window_ps"),
        "bias_fraction": float(np.mean(fractions)) if fractions else None,
        "phase_rms_deg": r.get("phase_rms_deg"),
        "relock_ms": r.get("relock_ms"),
        "drift": night.drift,
        "failures": night.failures,
        "errors": night.errors,
        "skipped": night.skipped,
        "details": {k: v for k, v in r.items() if k not in ("delay_error_bins", "phase_rms_deg", "relock_ms")},
    }


def _summary(report: dict) -> dict:
    bias = report["details"].get("bias", {})
    return {
        "started": report["started"], "exit_code": report["exit_code"],
        "delay_raw_offset_ps": report["delay_raw_offset_ps"], "car": report["car"], "g2_zero": report["g2_zero"],
        "bias_fraction": report["bias_fraction"], "phase_rms_deg": report["phase_rms_deg"],
        "relock_ms": report["relock_ms"],
        "bias": {k: {"plateau_start_ua": v.get("plateau_start_ua"), "switching_ua": v.get("switching_ua")}
                 for k, v in bias.items() if isinstance(v, dict) and "detector" in v},
    }


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def _plots(night: Night, report: dict, nights: list[dict], lock_run, report_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(report_dir / name, dpi=90)
        plt.close(fig)
        night.plots[name.removesuffix(".png")] = name

    delays = night.results.get("delays", {})
    fits = delays.get("fits", [])
    if fits:
        fig, axes = plt.subplots(1, len(fits), figsize=(4 * len(fits), 3), squeeze=False)
        for ax, f in zip(axes[0], fits):
            d = np.array(f["delays_ps"]) / 1000
            ax.step(d, f["counts"], where="post", label="counts")
            if f["model"]:
                ax.plot(d, f["model"], "o", ms=3, label="fit")
            ax.set_title(f"ch{f['channel_a']}-ch{f['channel_b']}: {f['offset_ps']:.0f} +- {f['offset_err_ps']:.0f} ps")
            ax.set_xlabel("delay (ns)")
            ax.set_xlim(f["offset_ps"] / 1000 - 6, f["offset_ps"] / 1000 + 6)
        axes[0][0].legend()
        save(fig, "delays.png")
    window = night.results.get("window", {})
    if "counts" in window:
        fig, ax = plt.subplots(figsize=(5, 3))
        d = np.array(window["delays_ps"]) / 1000
        ax.step(d, window["counts"], where="post")
        ax.axvspan(window["start_ps"] / 1000, window["stop_ps"] / 1000, alpha=0.3, color="C2",
                   label=f"window {window['window_ps']} ps, CAR {window['car']:.0f}")
        ax.set_yscale("log")
        ax.set_xlabel("delay (ns)")
        ax.legend()
        save(fig, "window.png")
    bias = {k: v for k, v in night.results.get("bias", {}).items() if isinstance(v, dict) and "detector" in v}
    if bias:
        fig, (ax, ax_dark) = plt.subplots(1, 2, figsize=(10, 3.5))
        for k, v in bias.items():
            line, = ax.plot(v["bias_ua"], v["rate_hz"], ".-", label=f"detector {k}")
            if v.get("chosen_bias_ua"):
                ax.axvline(v["chosen_bias_ua"], color=line.get_color(), ls=":")
            if v.get("plateau_start_ua"):
                ax.axvline(v["plateau_start_ua"], color=line.get_color(), ls="--", alpha=0.5)
            dark = np.array(v["dark_rate_hz"], float)
            shown = dark > 0
            ax_dark.plot(np.array(v["bias_ua"])[shown], dark[shown], ".-", color=line.get_color(),
                         label=f"detector {k}" + ("" if v.get("dark_measured") else " (excess over plateau)"))
        ax.set_xlabel("bias (uA)")
        ax.set_ylabel("count rate (/s)")
        ax.set_title("count rate; plateau start --, chosen bias :", fontsize=9)
        ax.legend(fontsize=7)
        ax_dark.set_yscale("log")
        ax_dark.set_xlabel("bias (uA)")
        ax_dark.set_ylabel("dark counts (/s)")
        ax_dark.set_title("dark counts" + (" (shutter closed)" if any(v.get("dark_measured") for v in bias.values())
                                           else " (estimated)"), fontsize=9)
        ax_dark.legend(fontsize=7)
        save(fig, "bias.png")
    if lock_run is not None:
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 4.5), sharex=True)
        ax1.plot(lock_run.t_s, lock_run.residual_deg, lw=0.5)
        for t, dlt in lock_run.kicks:
            ax1.axvline(t, color="r", ls=":")
        ax1.set_ylabel("residual (deg)")
        ax1.set_ylim(-180, 180)
        phase = night.results.get("phase", {})
        relocks = ", ".join("-" if v is None else f"{v:.1f}" for v in phase.get("relock_ms_pi_kicks", []))
        ax1.set_title(f"true phase - setpoint: {phase.get('phase_rms_deg', float('nan')):.1f} deg RMS locked"
                      + (f"; relock after the pi kicks (red): {relocks} ms" if relocks else ""), fontsize=9)
        ax2.plot(lock_run.cycle_t_s, lock_run.actuator_v, lw=0.7)
        ax2.set_ylabel("piezo (V)")
        ax2.set_xlabel("time (s, simulated)")
        save(fig, "phase.png")
    if len(nights) >= 1:
        tol = night.config.calibration.tolerances
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
        x = np.arange(len(nights))
        labels = [str(n.get("started", ""))[5:16].replace("T", " ") for n in nights]
        bin_ps = night.results.get("delays", {}).get("bin_ps") or 1000
        keys = sorted({k for n in nights for k in n.get("delay_raw_offset_ps", {})})
        for key in keys:
            offsets = np.array([n.get("delay_raw_offset_ps", {}).get(key, np.nan) for n in nights], float)
            first = offsets[np.isfinite(offsets)][0] if np.isfinite(offsets).any() else 0.0
            axes[0].plot(x, (offsets - first) / bin_ps, "o-", label=f"{key} ({first / 1000:.2f} ns)")
        axes[0].axhspan(-tol.delay_change_bins, tol.delay_change_bins, color="0.9", zorder=0)
        axes[0].set_title(f"pair offsets: change (bins; shaded +-{tol.delay_change_bins:g} a night)", fontsize=9)
        if keys:
            axes[0].legend(fontsize=7)
        axes[1].plot(x, [n.get("car") or np.nan for n in nights], "o-")
        axes[1].axhline(tol.car_min, color="r", ls=":")
        axes[1].set_title(f"CAR (min {tol.car_min:g})", fontsize=9)
        axes[2].plot(x, [n.get("phase_rms_deg") or np.nan for n in nights], "o-", label="RMS (deg)")
        axes[2].plot(x, [n.get("relock_ms") or np.nan for n in nights], "s--", label="relock (ms)")
        axes[2].axhline(tol.phase_rms_max_deg, color="r", ls=":")
        axes[2].set_title(f"phase lock (limits {tol.phase_rms_max_deg:g} deg, {tol.relock_max_ms:g} ms)", fontsize=9)
        axes[2].legend(fontsize=7)
        for ax in axes:
            ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
            ax.set_xlim(-0.5, len(nights) - 0.5)
        save(fig, "drift.png")


def _html(report: dict) -> str:
    verdict = {0: "all within tolerance", 1: "OUT OF TOLERANCE", 2: "COULD NOT RUN"}[report["exit_code"]]
    esc = html.escape
    def shown(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, dict):
            return ", ".join(f"{k}: {shown(v)}" for k, v in value.items())
        return json.dumps(value, default=_json_default)

    rows = "".join(
        f"<tr><td>{esc(k)}</td><td>{esc(shown(report[k]))}</td></tr>"
        for k in ("delay_error_bins", "delays_bins", "car", "g2_zero", "window_ps", "bias_fraction", "phase_rms_deg",
                  "relock_ms", "wall_s"))
    drift = "".join(
        f"<tr><td>{esc(d['quantity'])}</td><td>{d['previous']:.4g}</td><td>{d['current']:.4g}</td>"
        f"<td>{d['change']:+.3g}</td><td>{d['tolerance']:g} {esc(d['unit'])}</td><td>{'ok' if d['ok'] else 'DRIFT'}</td></tr>"
        for d in report["drift"])
    items = lambda xs: "".join(f"<li>{esc(x)}</li>" for x in xs) or "<li>none</li>"  # noqa: E731
    plots = "".join(f'<h3>{esc(name)}</h3><img src="{esc(file)}">' for name, file in report.get("plots", {}).items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>qnode nightly calibration</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}</style></head>
<body><h1>{esc(report['node'])}: nightly calibration {esc(report['started'])}</h1>
<p><b>exit {report['exit_code']}: {verdict}</b></p>
<h2>Failures</h2><ul>{items(report['failures'])}</ul><h2>Errors</h2><ul>{items(report['errors'])}</ul>
<h2>Skipped</h2><ul>{items(report.get('skipped', []))}</ul>
<h2>Results</h2><table>{rows}</table>
<h2>Drift since last night</h2><table><tr><th>quantity</th><th>last night</th><th>tonight</th><th>change</th>
<th>tolerance</th><th></th></tr>{drift}</table>
{plots}
<p>Full results: <a href="report.json">report.json</a></p></body></html>
"""
