"""`qnode run`: the main job on the simulated lab.

Detector clicks from the simulated lab take the same path as on hardware from the event word
on: quantised to the gateware's bins, encoded into 64-bit words (firmware contract), decoded
by the host's StreamDecoder, and recorded to HDF5. A table of rates per channel closes it.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from qnode.firmware.events import StreamDecoder, encode_tags, header_word
from qnode.sim.source import PhotonSource

from .config import LabConfig
from .recorder import Recorder

BATCH_PS = 50_000_000_000  # 50 ms of lab time per batch


def config_text(cfg: LabConfig) -> str:
    if cfg.source_path is not None and Path(cfg.source_path).exists():
        return Path(cfg.source_path).read_text()
    return cfg.model_dump_json(indent=2)


def run_demo(cfg: LabConfig, *, seconds: float, out_dir: str | None, console: Console) -> int:
    if cfg.sim is None:
        console.print("[red]qnode run needs a config with a [sim] table (the simulated lab); "
                      "lab_configs/sim.toml is the reference.[/red]")
        return 2
    bin_ps = cfg.fpga.bin_ps
    names = {ch.index: ch.name for ch in cfg.fpga.channels}
    out = Path(out_dir or cfg.recording.directory)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out / f"{cfg.node.name}-{stamp}.h5"

    source = PhotonSource(cfg)
    decoder = StreamDecoder()
    counts = np.zeros(64, np.int64)
    total_ps = int(seconds * 1e12)
    n_batches = max(1, -(-total_ps // BATCH_PS))
    epoch = -1
    wall0 = time.perf_counter()
    with Recorder(path, channel_names=names, config_text=config_text(cfg),
                  description=f"qnode run on {cfg.node.name}: {seconds} s of the simulated lab",
                  compression=cfg.recording.compression) as rec, Progress(
        TextColumn("[bold]recording"), BarColumn(), TextColumn("{task.fields[lab_s]:.2f} s lab time"),
        TimeRemainingColumn(), console=console, transient=True,
    ) as progress:
        task = progress.add_task("rec", total=n_batches, lab_s=0.0)
        for i in range(n_batches):
            span = min(BATCH_PS, total_ps - i * BATCH_PS)
            clicks = source.generate(span)
            words, epoch = encode_tags(clicks["channel"], clicks["time_ps"] // bin_ps, epoch=epoch)
            if i == 0:
                words = np.concatenate([[header_word(bin_ps, len(names))], words])
            events = decoder.decode(words)
            rec.append(events)
            counts += np.bincount(events["channel"], minlength=64)
            rec.flush()
            progress.update(task, advance=1, lab_s=source.now_ps * 1e-12)
        rec.record_duration(seconds)
    wall = time.perf_counter() - wall0
    size = path.stat().st_size

    table = Table(title=f"{cfg.node.name}: {seconds:g} s of the simulated lab")
    table.add_column("ch", justify="right")
    table.add_column("name")
    table.add_column("events", justify="right")
    table.add_column("rate", justify="right")
    for ch, name in sorted(names.items()):
        table.add_row(str(ch), name, f"{counts[ch]:,}", f"{counts[ch] / seconds:,.0f} /s")
    total = int(counts.sum())
    table.add_row("", "[bold]total", f"[bold]{total:,}", f"[bold]{total / seconds:,.0f} /s")
    console.print(table)
    stats = decoder.stats
    console.print(
        f"losses: {stats.lost_events} events, invalid words: {stats.invalid_words}; "
        f"bin {bin_ps} ps; {total / wall / 1e6:.1f} M events/s through source, codec and recorder"
    )
    console.print(f"recorded [bold]{path}[/bold] ({size / 1e6:.1f} MB, {size / max(total, 1):.2f} B/event)")
    return 0
