"""The `qnode` command line."""

from __future__ import annotations

import sys
from importlib.metadata import version as package_version

import click
from rich.console import Console

from qnode.gateware.cli import gateware
from qnode.sim.cli import sim

from .config import ConfigError, load_config

console = Console()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_version("qnode"), prog_name="qnode")
def main():
    """qnode: the control stack of one quantum network node."""


@main.group()
def config():
    """Lab configuration files."""


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def config_check(file):
    """Validate FILE; print "ok" or every problem with its key."""
    try:
        load_config(file)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    click.echo("ok")


@main.command()
def doctor():
    """Report the Python and the FPGA toolchain this machine has, and what to install."""
    from .doctor import run_doctor

    sys.exit(run_doctor(console))


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="lab config (default: the packaged lab_configs/sim.toml)")
@click.option("--seconds", type=float, default=10.0, show_default=True, help="how long to record")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="directory for the recording")
def run(config_file, seconds, out):
    """The main job: daemon + simulated lab, record, summarise, stop."""
    from .demo import run_demo

    try:
        cfg = load_config(config_file)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    sys.exit(run_demo(cfg, seconds=seconds, out_dir=out, console=console))


CONTROL_OPTION = click.option("--control", default=None, help="daemon control URL (default tcp://127.0.0.1:5555)")


def _client(control, timeout_s=5.0):
    from .client import Client
    from .daemon import DEFAULT_CONTROL

    return Client(control or DEFAULT_CONTROL, timeout_s=timeout_s)


def _call(control, method, **params):
    from .api import ApiError

    with _client(control) as node:
        try:
            return node.call(method, **params)
        except (ApiError, TimeoutError) as exc:
            click.echo(str(exc), err=True)
            sys.exit(1)


def _serve(daemon, banner: str, until_finished: bool = False) -> None:
    import signal

    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    try:
        daemon.start()
    except Exception as exc:
        click.echo(f"daemon could not start: {type(exc).__name__}: {exc}", err=True)
        sys.exit(2)
    click.echo(f"{banner}: control {daemon.control_url}, streams {daemon.stream_url}")
    if getattr(daemon, "dashboard", None) is not None:
        click.echo(f"dashboard {daemon.dashboard.url}")
    sys.stdout.flush()
    try:
        while not daemon.wait(0.2):
            if until_finished and getattr(daemon.source, "finished", False):
                break
    except KeyboardInterrupt:
        pass
    finally:
        daemon.close()


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="lab config (default: the packaged lab_configs/sim.toml)")
@click.option("--control", default="tcp://127.0.0.1:5555", show_default=True, help="ZeroMQ control (ROUTER) endpoint")
@click.option("--stream", default="tcp://127.0.0.1:5556", show_default=True, help="ZeroMQ stream (PUB) endpoint")
def daemon(config_file, control, stream):
    """Run the node's daemon: FPGA link, instruments, API, recorder. Ctrl-C or SIGTERM stops it."""
    from .daemon import Daemon

    try:
        cfg = load_config(config_file)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    _serve(Daemon(cfg, control_url=control, stream_url=stream), f"qnode daemon ({cfg.node.name})")


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--speed", type=float, default=1.0, show_default=True, help="x the recorded speed")
@click.option("--max", "as_fast", is_flag=True, help="as fast as possible")
@click.option("--stay", is_flag=True, help="keep serving after the end of the file")
@click.option("--control", default="tcp://127.0.0.1:5555", show_default=True)
@click.option("--stream", default="tcp://127.0.0.1:5556", show_default=True)
def replay(file, speed, as_fast, stay, control, stream):
    """Play a recording through the daemon's pipeline and API, like a virtual time tagger."""
    import h5py

    from .config import parse_config
    from .daemon import Daemon

    with h5py.File(file, "r") as f:
        text = f["/qnode/config"][()].decode() if "/qnode/config" in f else ""
    try:
        cfg = parse_config(text, f"{file}:/qnode/config") if text else load_config(None)
    except ConfigError as exc:
        click.echo(f"{exc}\nthe recording's config is unusable; replaying with lab_configs/sim.toml's channels", err=True)
        cfg = load_config(None)
    d = Daemon(cfg, control_url=control, stream_url=stream, replay=file, replay_speed=None if as_fast else speed)
    _serve(d, f"replaying {file}", until_finished=not stay)
    rates = d.rates
    click.echo(f"replayed {int(rates.counts.sum()):,} tags over {rates.duration_ps * 1e-12:.3f} s")


@main.command()
@CONTROL_OPTION
@click.option("--json", "as_json", is_flag=True, help="print the raw status as JSON")
def status(control, as_json):
    """What the daemon is doing: source, rates, recording, losses, instruments."""
    import json

    st = _call(control, "status")
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    from rich.table import Table

    src = st["source"]
    console.print(f"[bold]{st['node']}[/bold] up {st['uptime_s']:.0f} s, {st['events_total']:,} events; "
                  f"source: {src.get('url') or src.get('replay')}")
    table = Table(title="rates")
    table.add_column("channel")
    table.add_column("rate", justify="right")
    for name, hz in st["rates_hz"].items():
        table.add_row(name, f"{hz:,.0f} /s")
    console.print(table)
    rec = st["recording"]
    console.print(f"recording: {rec['path'] + ', ' + format(rec['tags'], ',') + ' tags' if rec.get('recording') else 'off'}")
    console.print(f"losses: {st['losses']}")
    console.print(f"instruments: {st['instruments']}")


@main.group()
def record():
    """Start and stop recording on the daemon."""


@record.command("start")
@CONTROL_OPTION
@click.option("--path", default=None, help="file to write (default: the config's recording directory)")
def record_start(control, path):
    params = {"path": path} if path else {}
    st = _call(control, "record.start", **params)
    click.echo(f"recording to {st['path']}")


@record.command("stop")
@CONTROL_OPTION
def record_stop(control):
    st = _call(control, "record.stop")
    click.echo(f"stopped {st['path']}: {st['tags']:,} tags, {st['bytes'] / 1e6:.1f} MB, {st['lost_events']} lost")


@main.group()
def watch():
    """Watch the daemon's streams live."""


@watch.command("rates")
@click.option("--stream", default="tcp://127.0.0.1:5556", show_default=True)
@click.option("--count", type=int, default=None, help="stop after this many updates")
def watch_rates(stream, count):
    """A live table of count rates per channel (Ctrl-C stops)."""
    from rich.live import Live
    from rich.table import Table

    from .client import Subscriber

    def render(rates, missed):
        table = Table(title=f"rates (missed updates: {missed})")
        table.add_column("channel")
        table.add_column("rate", justify="right")
        for name, hz in rates.items():
            table.add_row(name, f"{hz:,.0f} /s")
        return table

    seen = 0
    with Subscriber(stream, topics=["rates"]) as sub, Live(render({}, 0), console=console, transient=False) as live:
        try:
            while count is None or seen < count:
                msg = sub.receive(timeout_s=5.0)
                if msg is None:
                    live.console.print(f"no rates from {stream} for 5 s: is the daemon running?")
                    continue
                seen += 1
                live.update(render(msg[1]["rates_hz"], sub.missed.get("rates", 0)))
        except KeyboardInterrupt:
            pass


@main.command()
@CONTROL_OPTION
@click.option("--open/--no-open", "open_browser", default=None,
              help="open a browser (default: when this session has a display)")
def dashboard(control, open_browser):
    """Print the URL of the daemon's web dashboard and open it in a browser."""
    import os
    import webbrowser

    info = _call(control, "dashboard.url")
    click.echo(info["url"] + ("" if info.get("token_configured") else "  (read-only: the daemon has no dashboard token)"))
    if open_browser is None:
        open_browser = sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if open_browser:
        webbrowser.open(info["url"])


@main.command()
@click.argument("what", required=False, type=click.Choice(["delays", "window", "bias", "phase"]))
@click.option("--nightly", is_flag=True, help="all calibrations, compared with last night; exit 0 ok, 1 out of tolerance, 2 could not run")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="lab config (default: the packaged lab_configs/sim.toml)")
@click.option("--daemon", "daemon_url", default=None,
              help="control URL of a running daemon (default: start the simulated lab in-process)")
@click.option("--stream", "stream_url", default=None, help="the daemon's stream URL (default tcp://127.0.0.1:5556)")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="report directory (default: [calibration] report_directory)")
@click.option("--history", "history_file", type=click.Path(dir_okay=False), default=None,
              help="history file (default: [calibration] history)")
def calibrate(what, nightly, config_file, daemon_url, stream_url, out, history_file):
    """Calibrate: `--nightly` runs bias, delays, window and phase lock and writes a report;
    `qnode calibrate delays|window|bias|phase` runs one (no history). See docs/calibration.md."""
    from pathlib import Path

    from .nightly import EXIT_COULD_NOT_RUN, STEPS, run_nightly

    if nightly == (what is not None):
        click.echo("say either --nightly or one of: delays, window, bias, phase", err=True)
        sys.exit(EXIT_COULD_NOT_RUN)
    try:
        cfg = load_config(config_file)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_COULD_NOT_RUN)
    code, report, report_dir = run_nightly(
        cfg, daemon_url=daemon_url, stream_url=stream_url, out_dir=Path(out) if out else None,
        history_path=Path(history_file) if history_file else None,
        steps=STEPS if nightly else (what,), record_history=nightly)
    verdict = {0: "all within tolerance", 1: "OUT OF TOLERANCE", 2: "COULD NOT RUN"}[code]
    for key in ("delay_error_bins", "delays_bins", "car", "g2_zero", "window_ps", "bias_fraction", "phase_rms_deg",
                "relock_ms"):
        if report.get(key) not in (None, {}):
            value = report[key]
            click.echo(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    for line in report["failures"]:
        click.echo(f"out of tolerance: {line}")
    for line in report["errors"]:
        click.echo(f"could not run: {line}", err=True)
    click.echo(f"exit {code}: {verdict} ({report['wall_s']:.1f} s); report {report_dir / 'report.html'}")
    sys.exit(code)


main.add_command(gateware)
main.add_command(sim)

if __name__ == "__main__":
    main()
