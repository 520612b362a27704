"""`qnode gateware ...`: build, flash and simulate the FPGA design."""

import click


@click.group()
def gateware():
    """Build, flash and simulate the gateware."""
