"""`qnode sim ...`: run parts of the simulated lab as servers."""

import click


@click.group()
def sim():
    """Run the simulated lab's instruments and FPGA as servers."""


@sim.command("lab")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="lab config (default: the packaged lab_configs/sim.toml)")
@click.option("--seconds", type=float, default=None, help="stop by itself after this many seconds (for tests)")
@click.option("--speed", type=float, default=1.0, show_default=True,
              help="simulated seconds per wall-clock second")
@click.option("--any-port", is_flag=True, help="let the OS pick free TCP ports instead of the configured ones")
@click.option("--fpga-port", type=int, default=None,
              help="TCP port of the simulated FPGA (default: the port of a socket://127.0.0.1:P link, "
                   "else any free port)")
@click.option("--no-fpga", is_flag=True, help="serve the instruments only, not the simulated FPGA")
def lab(config_file, seconds, speed, any_port, fpga_port, no_fpga):
    """Serve every instrument the config marks sim = true, and the simulated FPGA of a
    board = "sim" config, on one lab model until Ctrl-C."""
    import signal
    import sys
    import threading

    from rich.console import Console
    from rich.table import Table

    from qnode.host.config import ConfigError, load_config

    from .instruments.rack import InstrumentRack
    from .lab import LabModel

    try:
        config = load_config(config_file)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    model = LabModel.for_demo(config, speed=speed)
    try:
        rack = InstrumentRack(config, model, any_free_port=any_port).start()
    except (OSError, ValueError) as exc:
        click.echo(f"cannot start the simulated instruments: {exc}", err=True)
        sys.exit(1)
    fpga = None
    if config.fpga.board == "sim" and not no_fpga:
        try:
            fpga = _start_fpga(config, model, _fpga_port(config, any_port, fpga_port), speed)
        except (OSError, ValueError) as exc:
            rack.stop()
            click.echo(f"cannot start the simulated FPGA: {exc}", err=True)
            sys.exit(1)
    table = Table(title=f"simulated lab: {config.node.name}")
    for column in ("name", "driver", "transport", "address"):
        table.add_column(column)
    for slot in rack.slots.values():
        address = slot.address + (f" (counts {slot.counts.address})" if slot.counts is not None else "")
        table.add_row(slot.name, slot.driver, slot.transport, address)
    if fpga is not None:
        table.add_row("fpga", "timetagger", "tcp", fpga.url)
    console = Console(width=120)
    console.print(table)
    if fpga is not None:
        ident = fpga.server.device.identity
        console.print(f"fpga: protocol {ident.protocol_version}, gateware {ident.gateware_hash}, "
                      f"{ident.channels} channels, {ident.bin_ps} ps bins; link = \"{fpga.url}\"")
    if not rack.slots and fpga is None:
        console.print("no instrument in this config has sim = true, and its FPGA is not simulated")
    # Ctrl-C (and SIGTERM from a service manager) ask for a clean stop at any moment, even
    # before the loop below starts; the servers always close.
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        console.print("running; Ctrl-C stops" if seconds is None else f"running for {seconds:g} s")
        sys.stdout.flush()
        stop.wait(seconds)
    finally:
        if fpga is not None:
            fpga.stop()
        rack.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    console.print("stopped")


def _fpga_port(config, any_port: bool, fpga_port: int | None) -> int:
    """Where `qnode sim lab` serves the simulated FPGA: --fpga-port, else the port of a
    socket://127.0.0.1:P link (so a daemon with that config finds it), else any free port."""
    import re

    if fpga_port is not None:
        return fpga_port
    match = re.fullmatch(r"socket://(?:127\.0\.0\.1|localhost):(\d+)", config.fpga.link)
    return int(match.group(1)) if match and not any_port else 0


def _start_fpga(config, model, port: int, speed: float):
    """The simulated FPGA on 127.0.0.1:port, its detectors driven by the rack's lab model."""
    from .fpga import FpgaServerThread, SimulatedFpga

    return FpgaServerThread(SimulatedFpga(config, lab=model), port=port, speed=speed)


@sim.command("fpga")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="lab config (default: the packaged lab_configs/sim.toml)")
@click.option("--port", type=int, default=0, show_default=True, help="TCP port on 127.0.0.1 (0: any free port)")
@click.option("--speed", type=float, default=1.0, show_default=True, help="lab seconds per wall-clock second")
@click.option("--seconds", type=float, default=None, help="stop by itself after this long")
def fpga(config_file, port, speed, seconds):
    """Serve the simulated FPGA (the gateware's twin fed by the simulated lab) over TCP."""
    import asyncio
    import sys

    from qnode.host.config import ConfigError, load_config
    from qnode.sim.fpga import FpgaServer, SimulatedFpga

    try:
        config = load_config(config_file)
        device = SimulatedFpga(config)
    except (ConfigError, ValueError) as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)

    async def serve():
        server = FpgaServer(device, port=port, speed=speed)
        try:
            bound = await server.start()
        except OSError as exc:
            click.echo(f"cannot listen on 127.0.0.1:{port}: {exc}", err=True)
            sys.exit(1)
        ident = device.identity
        click.echo(f"simulated FPGA on socket://127.0.0.1:{bound} (protocol {ident.protocol_version}, "
                   f"gateware {ident.gateware_hash}, {ident.channels} channels, {ident.bin_ps} ps bins, "
                   f"{speed:g}x real time)", nl=True)
        sys.stdout.flush()
        try:
            if seconds is None:
                await asyncio.Event().wait()
            else:
                await asyncio.sleep(seconds)
        finally:
            await server.stop()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
