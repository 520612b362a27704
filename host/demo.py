"""`qnode run`: the main job on the simulated lab, end to end.

It starts the daemon on the config (on ``sim://`` that starts the simulated lab: instruments on
real sockets and ptys, and the simulated FPGA on TCP), records for a while through the daemon's
API like any client would, and prints what a physicist checks first: rates per channel,
coincidences and CAR of the pair source, the g2 peak position, the herald rate and every loss.
It ends by itself and leaves nothing running.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .api import ApiError
from .client import Client
from .config import LabConfig
from .daemon import Daemon

G2_BIN_PS = 100
G2_RANGE_PS = 50_000
PEAK_WINDOW_PS = 2_000  # coincidence window around the g2 peak (covers 1 ns bins and jitter)


def pair_channels(cfg: LabConfig) -> tuple[int, int] | None:
    if cfg.sim is not None and cfg.sim.pair_source is not None:
        return cfg.sim.pair_source.channel_a, cfg.sim.pair_source.channel_b
    if len(cfg.fpga.channels) >= 2:
        return cfg.fpga.channels[0].index, cfg.fpga.channels[1].index
    return None


def _why_no_heralds(node: Client) -> str:
    """What the time tagger's registers say about a run without heralds."""
    try:
        latency = node.call("registers.read", name="herald_latency_clocks")["value"]
        rule = node.call("registers.read", name="herald_rule")["value"]
    except (ApiError, TimeoutError):  # an older gateware without the registers, or no register access
        return " (the time tagger does not say whether it has a herald unit)"
    if latency == 0:
        return " (this time tagger reports no herald unit: herald_latency_clocks = 0)"
    if rule == 0:
        return " (the herald unit is off: herald_rule = 0; set the herald_* registers, docs/registers.md)"
    return ""


def expected_herald_note(cfg: LabConfig) -> str:
    """What the simulated lab's physics gives for the config's herald rule (sim/expected_rates.py)."""
    if cfg.fpga.link != "sim://" or cfg.fpga.herald.rule != "single_click":
        return ""
    from qnode.sim.expected_rates import expected_heralds

    try:
        e = expected_heralds(cfg)
    except ValueError:
        return ""
    return (f"; the lab's physics gives {e.rate_hz:,.0f} /s: {e.per_attempt:.2e} per attempt, "
            f"{e.attempts_hz:,.0f} attempts/s")


def run_demo(cfg: LabConfig, *, seconds: float, out_dir: str | None, console: Console) -> int:
    out = Path(out_dir or cfg.recording.directory)
    path = out / f"{cfg.node.name}-{dt.datetime.now():%Y%m%d-%H%M%S}.h5"
    console.print(f"[bold]{cfg.node.name}[/bold]: starting the daemon"
                  + (" and the simulated lab" if cfg.fpga.link == "sim://" else f" on {cfg.fpga.link}"))
    with Daemon(cfg, control_url="tcp://127.0.0.1:0", stream_url="tcp://127.0.0.1:0") as daemon, \
            Client(daemon.control_url, timeout_s=10) as node:
        status = node.call("status")
        ident = status["source"].get("identity") or {}
        console.print(f"time tagger: {ident.get('board')} gateware {ident.get('gateware_hash')}, "
                      f"{ident.get('channels')} channels, {ident.get('bin_ps')} ps bins; "
                      f"instruments: {', '.join(f'{k} {v}' for k, v in status['instruments'].items()) or 'none'}")
        console.print(f"control {daemon.control_url}, streams {daemon.stream_url}")
        console.print(f"dashboard {daemon.dashboard.url} (live while this runs)" if daemon.dashboard else "dashboard off")
        pair = pair_channels(cfg)
        g2_params = dict(channel_a=pair[0], channel_b=pair[1], bin_ps=G2_BIN_PS, range_ps=G2_RANGE_PS) if pair else None
        node.call("measure.reset")
        if g2_params:
            node.call("measure.g2", **g2_params)
        node.call("record.start", path=str(path))
        with Progress(TextColumn("[bold]recording"), BarColumn(), TextColumn("{task.fields[events]:,} events"),
                      TimeRemainingColumn(), console=console, transient=True) as progress:
            task = progress.add_task("rec", total=seconds, events=0)
            start = time.monotonic()
            while (elapsed := time.monotonic() - start) < seconds:
                time.sleep(min(0.2, seconds - elapsed))
                progress.update(task, completed=time.monotonic() - start,
                                events=node.call("record.status").get("tags", 0))
        recording = node.call("record.stop")
        rates = node.call("measure.rates")
        g2 = node.call("measure.g2", window_ps=PEAK_WINDOW_PS, **g2_params) if g2_params else None
        heralds = node.call("measure.heralds")
        status = node.call("status")
        herald_note = expected_herald_note(cfg) if heralds["total"] else _why_no_heralds(node)
        patterns = [[[int(c) for c in cfg.fpga.coincidence_channels(p)], cfg.fpga.coincidence[p].window_ps]
                    for p in range(len(cfg.fpga.coincidence))]
        try:
            fpga_coinc = [node.call("registers.read", name="coinc_count", index=p)["value"]
                          for p in range(len(patterns))]
        except (ApiError, TimeoutError):
            fpga_coinc = []

    table = Table(title=f"{cfg.node.name}: {recording['duration_s']:.1f} s recorded")
    for col, justify in (("ch", "right"), ("name", "left"), ("rate", "right")):
        table.add_column(col, justify=justify)
    names = {ch.index: ch.name for ch in cfg.fpga.channels}
    for ch, name in sorted(names.items()):
        table.add_row(str(ch), name, f"{rates['rates_hz'].get(name, 0.0):,.0f} /s")
    console.print(table)

    if g2 is not None and g2["pairs"]:
        counts, centres = g2["counts"], g2["delays_ps"] + G2_BIN_PS / 2
        peak = g2["peak_ps"]
        window = np.abs(centres - peak) <= PEAK_WINDOW_PS / 2
        duration_s = g2["duration_ps"] * 1e-12
        console.print(
            f"pair source {names.get(pair[0])}-{names.get(pair[1])}: g2 peak at {peak:+,.0f} ps, "
            f"{counts[window].sum() / duration_s:,.0f} coincidences/s in +-{PEAK_WINDOW_PS // 2} ps, "
            f"CAR {g2.get('car', float('nan')):.0f}")
    by_outcome = heralds.get("by_outcome", [])
    outcomes = f", psi+ {by_outcome[1]}, psi- {by_outcome[2]}" if heralds["total"] and len(by_outcome) > 2 else ""
    console.print(f"heralds: {heralds['total']} ({heralds['rate_hz']:.1f} /s{outcomes})" + herald_note)
    for p, count in enumerate(fpga_coinc):
        chans = "+".join(names.get(c, str(c)) for c in patterns[p][0])
        console.print(f"gateware coincidence pattern {p} ({chans}, {patterns[p][1]:,} ps): {count:,} counted "
                      "since the daemon started")
    losses = status["losses"]
    console.print(f"losses: {losses['in_band_events']} events in band, {losses['link_words']} words on the link, "
                  f"{losses['invalid_words']} invalid words, {recording['lost_events']} recorder")
    tags = max(recording["tags"], 1)
    console.print(f"recorded [bold]{recording['path']}[/bold]: {recording['tags']:,} tags, "
                  f"{recording['bytes'] / 1e6:.1f} MB ({recording['bytes'] / tags:.2f} B/tag)")
    return 0 if not recording.get("error") else 1
