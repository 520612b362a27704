"""`qnode sim ...`: run parts of the simulated lab as servers."""

import click


@click.group()
def sim():
    """Run the simulated lab's instruments and FPGA as servers."""
