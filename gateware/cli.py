"""`qnode gateware ...`: build, flash and simulate the FPGA design."""

import json

import click

from .build import DEFAULT_SEED  # build.py imports no toolchain at module level


@click.group()
def gateware():
    """Build, flash and simulate the gateware."""


@gateware.command()
@click.option("--board", type=click.Choice(["ulx3s"]), default="ulx3s", show_default=True)
@click.option("--build-dir", default="build/ulx3s", show_default=True)
@click.option("--channels", default=8, show_default=True)
@click.option("--seed", default=DEFAULT_SEED, show_default=True,
              help="nextpnr placement seed (routing convergence depends on it: docs/gateware.md Timing)")
@click.option("--baud", default=3_000_000, show_default=True, help="link UART baud rate")
@click.option("--synth-opts", default=None, help="extra yosys synth_ecp5 options (default: the build's own)")
@click.option("--no-coincidence", is_flag=True, help="leave the coincidence unit out of the core")
@click.option("--no-herald", is_flag=True, help="leave the herald unit out of the core")
@click.option("--force", is_flag=True, help="rebuild even if this design is in the cache")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def build(board, build_dir, channels, seed, baud, synth_opts, no_coincidence, no_herald, force,
          as_json):
    """Synthesise, place and route; report fmax and resources; write the bitstream and its
    manifest (cached by content hash: an unchanged design is not rebuilt)."""
    from .build import SYNTH_OPTS, build_ulx3s
    from .capture import ECP5_SCLK_HZ

    report = build_ulx3s(build_dir, channels=channels, seed=seed, baud=baud, force=force,
                         synth_opts=SYNTH_OPTS if synth_opts is None else synth_opts,
                         coincidence=not no_coincidence, herald=not no_herald)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    capture_mhz = ECP5_SCLK_HZ / 1e6
    ok = (report.fmax_mhz is not None and report.fmax_mhz >= report.sys_clk_mhz
          and report.capture_fmax_mhz is not None and report.capture_fmax_mhz >= capture_mhz)
    margin = f"{100 * (report.fmax_mhz / report.sys_clk_mhz - 1):+.1f} %" if report.fmax_mhz else "?"
    click.echo(f"board {report.board}: {report.device}-{report.speed_grade} {report.package}")
    click.echo(f"system clock {report.sys_clk_mhz:g} MHz, fmax {report.fmax_mhz} MHz ({margin}); "
               f"capture clock {capture_mhz:g} MHz, fmax {report.capture_fmax_mhz} MHz "
               f"({'meets' if ok else 'FAILS'} timing; nextpnr post-route, {report.nextpnr_opts})")
    if report.critical_path:
        cp = report.critical_path
        click.echo(f"critical path {cp['ns']} ns: {cp['from']} -> {cp['to']} "
                   f"({', '.join(cp['source_lines']) or 'no gateware lines'})")
    click.echo(f"{report.channels} channels x {report.oversampling} samples/clock, bin {report.bin_ps} ps")
    click.echo(f"LUTs {report.luts}, FFs {report.ffs}, DP16KD {report.brams}")
    from .link_engine import event_rate_words_per_s
    from .uart import divisor_for

    clk_hz = round(report.sys_clk_mhz * 1e6)
    baud = clk_hz / divisor_for(clk_hz, report.baud)
    click.echo(f"link UART {baud / 1e6:.3f} Mbaud: at most {event_rate_words_per_s(baud):,.0f} "
               "event words/s (1024-word EVENTS frames)")
    state = "cached" if report.cached else f"built in {report.seconds:.0f} s"
    click.echo(f"gateware {report.gateware_hash}: {state}")
    click.echo(f"bitstream {report.bitstream}")
    click.echo(f"manifest {report.manifest}")


@gateware.command()
@click.option("--manifest", "manifest_path", type=click.Path(), default="build/ulx3s/manifest.json",
              show_default=True, help="the build to flash (default: the last one built)")
@click.option("--persist", is_flag=True, help="write the SPI flash (kept at power-off), not SRAM")
@click.option("--port", default="/dev/ttyUSB0", show_default=True,
              help="serial URL of the board's link, to verify what runs")
@click.option("--no-verify", is_flag=True, help="program only; do not open the link")
def flash(manifest_path, persist, port, no_verify):
    """Program the board with openFPGALoader and check it runs the manifest's gateware."""
    from .flash import FlashError, flash as do_flash

    try:
        result = do_flash(manifest_path, port=None if no_verify else port, persist=persist)
    except FlashError as exc:
        raise click.ClickException(str(exc)) from None
    where = "flash (persists)" if persist else "SRAM (until power-off)"
    click.echo(f"programmed {result.bitstream} into {where}")
    if result.identity is None:
        click.echo(f"not verified; expected gateware {result.gateware_hash}")
    else:
        ident = result.identity
        click.echo(f"verified on {port}: {ident.board} runs gateware {ident.gateware_hash}, "
                   f"protocol {ident.protocol_version}, {ident.channels} channels, {ident.bin_ps} ps bins")


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
