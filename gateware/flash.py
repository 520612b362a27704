"""Programming a built bitstream with openFPGALoader, then proving the board runs it.

``flash`` checks the bitstream against its manifest (gateware/manifest.py), runs
``openFPGALoader -b <board> FILE`` (SRAM: gone at power-off) or with ``-f`` (``persist``: the
SPI flash, loaded at every power-up), then opens the link (``TimeTagger`` on the serial URL)
and compares the gateware hash the design reports with the manifest's. Each way this can fail
says what is missing and what to do.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from qnode.firmware import link

from .manifest import Manifest, file_sha256

PROGRAMMER = "openFPGALoader"
INSTALL_HINT = ("install it with `apt-get install openfpgaloader` (Debian/Ubuntu), or build it "
                "from https://github.com/trabucayre/openFPGALoader")
DEFAULT_PORT = "/dev/ttyUSB0"  # the ULX3S's FTDI, first USB serial device
PROGRAM_TIMEOUT_S = 300  # writing the 85F's flash takes about a minute
VERIFY_TIMEOUT_S = 5.0  # the FPGA configures from SRAM in well under a second


class FlashError(RuntimeError):
    """Programming or verification failed; the message says why and what to do."""


@dataclass
class FlashResult:
    bitstream: Path
    persist: bool
    gateware_hash: str
    identity: link.Identity | None  # None when verification was skipped
    programmer_output: str


def find_programmer() -> str:
    path = shutil.which(PROGRAMMER)
    if path is None:
        raise FlashError(f"{PROGRAMMER} not found on PATH: it programs the board; {INSTALL_HINT}")
    return path


def program(bitstream: Path, *, board: str = "ulx3s", persist: bool = False) -> str:
    """Run openFPGALoader; returns its output. Raises FlashError when it fails."""
    programmer = find_programmer()
    cmd = [programmer, "-b", board, *(["-f"] if persist else []), str(bitstream)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PROGRAM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise FlashError(f"{' '.join(cmd)} did not finish within {PROGRAM_TIMEOUT_S} s") from None
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-4:])
        if "unable to open ftdi device" in output or "JTAG init failed" in output:
            raise FlashError(
                f"no {board} answered: {PROGRAMMER} could not open the board's FTDI JTAG port. "
                "Is the board plugged in (the US1 port) and powered? May this user open it (udev "
                f"rule or the plugdev group)? {PROGRAMMER} said:\n{tail}")
        raise FlashError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")
    return output


def verify(port: str, expected_hash: str, *, baud: int = 3_000_000,
           timeout_s: float | None = None) -> link.Identity:
    """Open the link on ``port`` and check that the running gateware has ``expected_hash``."""
    from qnode.drivers.timetagger import TimeTagger

    timeout_s = VERIFY_TIMEOUT_S if timeout_s is None else timeout_s

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        tagger = TimeTagger(port, baud=baud, timeout_s=1.0, name="board")
        try:
            identity = tagger.open()
            break
        except link.LinkError as exc:  # not configured yet, or nothing there
            last = exc
        finally:
            tagger.close()
        if time.monotonic() >= deadline:
            raise FlashError(
                f"programmed, but no board answered on the link at {port} within {timeout_s:g} s: "
                f"{last}. Check the port (--port) and that the FTDI UART is not held by another "
                "program.")
        time.sleep(0.2)
    if identity.gateware_hash != expected_hash:
        raise FlashError(
            f"the board at {port} runs gateware {identity.gateware_hash} ({identity.board}), but "
            f"the manifest says {expected_hash}: programming did not take, or another board "
            "answered on this port")
    return identity


def flash(manifest_path: Path, *, port: str | None = DEFAULT_PORT, persist: bool = False,
          baud: int | None = None) -> FlashResult:
    """Program the bitstream a manifest describes and verify it (``port`` None: no verify)."""
    manifest_path = Path(manifest_path)
    if not manifest_path.exists():
        raise FlashError(f"no manifest at {manifest_path}: build first (qnode gateware build)")
    manifest = Manifest.read(manifest_path)
    directory = manifest_path if manifest_path.is_dir() else manifest_path.parent
    bitstream = directory / manifest.bitstream
    if not bitstream.exists():
        raise FlashError(f"{bitstream} is missing: rebuild (qnode gateware build)")
    if file_sha256(bitstream) != manifest.bitstream_sha256:
        raise FlashError(f"{bitstream} is not the bitstream {manifest_path} describes: rebuild")
    output = program(bitstream, board=manifest.board, persist=persist)
    identity = None
    if port is not None:
        identity = verify(port, manifest.gateware_hash,
                          baud=baud or manifest.options.get("baud", 3_000_000))
    return FlashResult(bitstream, persist, manifest.gateware_hash, identity, output)
