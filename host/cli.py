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
@click.option("--seconds", type=float, default=3.0, show_default=True, help="simulated time to record")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="directory for the recording")
def run(config_file, seconds, out):
    """The main job on the simulated lab: generate, record to HDF5, summarise."""
    from .demo import run_demo

    try:
        cfg = load_config(config_file)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    sys.exit(run_demo(cfg, seconds=seconds, out_dir=out, console=console))


main.add_command(gateware)
main.add_command(sim)

if __name__ == "__main__":
    main()
