"""Benchmark: what the web dashboard costs the daemon's data path, and how often the page updates.

The daemon runs on the reference simulated lab (in-process, so the lab, the daemon and the
dashboard share one Python process and its GIL, as in `qnode run`). For each condition the
acquisition thread's throughput is measured as events/s from ``events_total`` over a window:

- dashboard disabled (the reference),
- dashboard enabled, no page open,
- one headless Chromium page open (Debian's chromium, driven by playwright),

at the lab's real speed (1x: the source offers about 1.3 M events/s) and at 8x (more than the
process can take, so events/s is the capacity and any cost shows). Beside events/s, which a
shared machine makes noisy, it reports the CPU time of the daemon's threads (from /proc) per
second: what the dashboard itself uses, and what its requests cost the control thread. The conditions are
interleaved over ROUNDS rounds and the median is reported, so load from elsewhere on a shared
machine spreads over all of them. With a page open it also reports the page's update rate
(WebSocket updates/s the page received) and the rates plot's samples/s. Prints a table and
writes bench/results/dashboard.json. Chromium runs on the same machine here (in a lab it is
usually another one), so with a page open it competes for the cores too.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from qnode.host.config import load_config
from qnode.host.daemon import Daemon

RESULTS = Path(__file__).resolve().parent / "results"
WINDOW_S = 6.0
SETTLE_S = 2.0
SPEEDS = (1.0, 8.0)
ROUNDS = 3
CONDITIONS = ((False, False), (True, False), (True, True))  # (dashboard enabled, page open)


def chromium() -> str | None:
    path = os.environ.get("QNODE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright  # noqa: F401
    except ImportError:
        return None
    return path


def thread_cpu_s(thread) -> float:
    """CPU seconds (user + system) a thread has used, from /proc (Linux); NaN elsewhere."""
    try:
        fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, AttributeError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(speed: float, dashboard: bool, page: bool, browser=None) -> dict:
    cfg = load_config()
    cfg.dashboard.enabled = dashboard
    cfg.dashboard.port = 0
    with Daemon(cfg, control_url="tcp://127.0.0.1:0", stream_url="tcp://127.0.0.1:0", sim_speed=speed) as daemon:
        pg = None
        if page:
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            pg.goto(daemon.dashboard.url)
            pg.wait_for_function("qnode.connected && qnode.updates > 0", timeout=30_000)
        time.sleep(SETTLE_S)
        lost0 = daemon._losses()["link_words"]
        threads = {t.name.removeprefix("qnode-"): t for t in daemon._threads}
        if daemon.dashboard is not None:
            threads["dashboard"] = daemon.dashboard._thread
        cpu0 = {name: thread_cpu_s(t) for name, t in threads.items()}
        n0, t0 = daemon.events_total, time.monotonic()
        u0 = pg.evaluate("[qnode.updates, qnode.rateSamples]") if pg else None
        time.sleep(WINDOW_S)
        n1, t1 = daemon.events_total, time.monotonic()
        u1 = pg.evaluate("[qnode.updates, qnode.rateSamples]") if pg else None
        lost = daemon._losses()["link_words"] - lost0
        cpu = {f"cpu_{name}_percent": 100 * (thread_cpu_s(t) - cpu0[name]) / (t1 - t0) for name, t in threads.items()}
        out = {"sim_speed": speed, "dashboard": dashboard, "pages": int(page), "window_s": t1 - t0,
               "events_per_s": (n1 - n0) / (t1 - t0), "link_words_lost": lost, **cpu}
        if pg is not None:
            out["page_updates_per_s"] = (u1[0] - u0[0]) / (t1 - t0)
            out["rates_plot_samples_per_s"] = (u1[1] - u0[1]) / (t1 - t0)
            out["updates_skipped"] = pg.evaluate("qnode.lastUpdate.skipped")
            pg.close()
    return out


def main():
    console = Console(width=120)
    path = chromium()
    rows = []
    pw = browser = None
    if path is None:
        console.print("no headless Chromium/playwright: the page rows are skipped "
                      "(apt-get install chromium; pip install -e '.[dev]')")
    else:
        from playwright.sync_api import sync_playwright

        pw = sync_playwright().start()
        browser = pw.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
    runs = []
    try:
        for round_ in range(ROUNDS):
            for speed in SPEEDS:
                for dashboard, page in CONDITIONS:
                    if page and browser is None:
                        continue
                    console.print(f"round {round_ + 1}/{ROUNDS}: sim speed {speed:g}x, dashboard "
                                  f"{'on' if dashboard else 'off'}, {int(page)} page(s)")
                    runs.append(measure(speed, dashboard, page, browser))
    finally:
        if browser is not None:
            browser.close()
            pw.stop()
    for speed in SPEEDS:
        for dashboard, page in CONDITIONS:
            same = [r for r in runs if (r["sim_speed"], r["dashboard"], r["pages"]) == (speed, dashboard, int(page))]
            if not same:
                continue
            row = {k: float(np.median([r[k] for r in same])) if isinstance(same[0][k], float) else same[0][k]
                   for k in same[0]}
            row["events_per_s_runs"] = [r["events_per_s"] for r in same]
            row["link_words_lost"] = sum(r["link_words_lost"] for r in same)
            rows.append(row)

    table = Table(title=f"daemon throughput with the dashboard: median of {ROUNDS} windows of {WINDOW_S:g} s, "
                        "in-process simulated lab")
    for col in ("sim speed", "dashboard", "pages", "events/s", "vs. off", "page updates/s", "plot samples/s",
                "CPU % acquisition", "CPU % control", "CPU % dashboard"):
        table.add_column(col, justify="right")
    for r in rows:
        ref = next(x for x in rows if x["sim_speed"] == r["sim_speed"] and not x["dashboard"])
        r["vs_off"] = r["events_per_s"] / ref["events_per_s"]
        table.add_row(f"{r['sim_speed']:g}x", "on" if r["dashboard"] else "off", str(r["pages"]),
                      f"{r['events_per_s'] / 1e6:.3f} M", f"{r['vs_off']:.3f}",
                      f"{r['page_updates_per_s']:.1f}" if "page_updates_per_s" in r else "",
                      f"{r['rates_plot_samples_per_s']:.1f}" if "rates_plot_samples_per_s" in r else "",
                      f"{r['cpu_acquisition_percent']:.1f}", f"{r['cpu_control_percent']:.1f}",
                      f"{r['cpu_dashboard_percent']:.1f}" if "cpu_dashboard_percent" in r else "")
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "dashboard.json"
    out.write_text(json.dumps({"window_s": WINDOW_S, "rounds": ROUNDS, "rows": rows, "runs": runs}, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
