"""`qnode gateware ...`: build, flash and simulate the FPGA design."""

import json

import click


@click.group()
def gateware():
    """Build, flash and simulate the gateware."""


@gateware.command()
@click.option("--board", type=click.Choice(["ulx3s"]), default="ulx3s", show_default=True)
@click.option("--build-dir", default="build/ulx3s", show_default=True)
@click.option("--channels", default=8, show_default=True)
@click.option("--seed", default=1, show_default=True, help="nextpnr placement seed")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def build(board, build_dir, channels, seed, as_json):
    """Synthesise, place and route; report fmax and resources; write the bitstream."""
    from .build import build_ulx3s

    report = build_ulx3s(build_dir, channels=channels, seed=seed)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    ok = report.fmax_mhz is not None and report.fmax_mhz >= report.sys_clk_mhz
    click.echo(f"board {report.board}: {report.device}-{report.speed_grade} {report.package}")
    click.echo(f"system clock {report.sys_clk_mhz:g} MHz, fmax {report.fmax_mhz} MHz "
               f"({'meets' if ok else 'FAILS'} timing)")
    click.echo(f"{report.channels} channels x {report.oversampling} samples/clock, bin {report.bin_ps} ps")
    click.echo(f"LUTs {report.luts}, FFs {report.ffs}, DP16KD {report.brams}")
    click.echo(f"bitstream {report.bitstream} ({report.seconds:.0f} s)")


@gateware.command()
@click.option("--channels", default=8, show_default=True)
@click.option("--oversampling", type=click.Choice(["4", "8"]), default="8", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="write Verilog here (default: stdout)")
def verilog(channels, oversampling, output):
    """Convert TimeTaggerCore to Verilog (what the cocotb tests simulate)."""
    from amaranth.back import verilog as back

    from .core import TimeTaggerCore

    text = back.convert(TimeTaggerCore(channels=channels, oversampling=int(oversampling)),
                        name="time_tagger_core")
    if output:
        with open(output, "w") as f:
            f.write(text)
    else:
        click.echo(text)
