"""Register-to-register logic paths of the synthesised ULX3S design, estimated in seconds.

Place and route of the full design takes 20-40 minutes on a 2-core machine; this reads the
netlist yosys writes (``qnode_ulx3s.json``, ECP5 cells) and walks every path from a flip-flop
or block RAM output to a flip-flop or block RAM input with a rough delay model, so a change's
effect on the logic depth shows before a build. The model (per cell, routing included):
LUT4 / LUTRAM read 1.2 ns, PFUMX / L6MUX21 1.0 ns, carry chain 0.07 ns per 2 bits after
1.2 ns into the chain, flip-flop clock-to-out 0.55 ns, block RAM 4 ns. It does not know
placement: nextpnr's figures after routing run 20-60 % above it on this design (routing
dominates), but the ranking of the paths is what the estimate is for.

    .venv/bin/python bench/gateware_paths.py                 # synthesise the default build
    .venv/bin/python bench/gateware_paths.py --netlist build/ulx3s/<hash>/qnode_ulx3s.json
    .venv/bin/python bench/gateware_paths.py --no-coincidence --no-herald --top 40

Writes bench/results/gateware_paths.json (the worst endpoints, one per source line).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROUTE_NS = 0.75  # per net hop
CELL_NS = {"LUT4": 0.45, "PFUMX": 0.25, "L6MUX21": 0.25, "TRELLIS_DPR16X4": 0.45}
START_NS = {"TRELLIS_FF": 0.55, "DP16KD": 4.0}
SEQUENTIAL = {"TRELLIS_FF", "DP16KD", "EHXPLLL", "IDDRX2F", "ECLKSYNCB", "CLKDIVF", "TRELLIS_IO",
              "DCCA", "IB", "OB", "BB"}
CARRY_NS = 0.07  # CIN -> COUT of one CCU2C (2 bits)


class Netlist:
    def __init__(self, path: Path):
        design = json.loads(path.read_text())
        top = next(m for m in design["modules"].values() if m["attributes"].get("top"))
        self.cells = top["cells"]
        self.driver = {}
        for name, cell in self.cells.items():
            for port, bits in cell["connections"].items():
                if cell["port_directions"][port] == "output":
                    for b in bits:
                        if not isinstance(b, str):
                            self.driver[b] = (name, port)
        self.arrival = {}  # bit -> (ns, the input bit it came through)
        self._expanded = set()

    def source(self, cell: str) -> str:
        src = self.cells[cell]["attributes"].get("src", "")
        return ",".join(sorted(set(re.findall(r"gateware/(\w+\.py:\d+)", src))))

    def _inputs(self, cell: str, port: str):
        c = self.cells[cell]
        for p, bits in c["connections"].items():
            if c["port_directions"][p] != "input":
                continue
            if c["type"] == "TRELLIS_DPR16X4" and p != "RAD":
                continue  # the write side is clocked
            for b in bits:
                if not isinstance(b, str):
                    yield p, b

    def time(self, bit) -> float:
        """Arrival time of a net bit (iterative depth-first walk: the netlist is deep)."""
        stack = [bit]
        while stack:
            b = stack[-1]
            if b in self.arrival:
                stack.pop()
                continue
            if b not in self.driver:
                self.arrival[b] = (0.0, None)
                stack.pop()
                continue
            cell, port = self.driver[b]
            kind = self.cells[cell]["type"]
            if kind in SEQUENTIAL:
                self.arrival[b] = (START_NS.get(kind, 0.0), None)
                stack.pop()
                continue
            pending = [i for _, i in self._inputs(cell, port) if i not in self.arrival]
            if pending:
                if b in self._expanded:  # back here with inputs still open: a loop, cut it
                    self.arrival[b] = (0.0, None)
                    stack.pop()
                    continue
                self._expanded.add(b)
                stack.extend(pending)
                continue
            best = (0.0, None)
            for p, i in self._inputs(cell, port):
                t = self.arrival[i][0]
                if kind == "CCU2C":
                    t += (CARRY_NS if port == "COUT" else 0.3) if p == "CIN" else ROUTE_NS + 0.45
                else:
                    t += ROUTE_NS + CELL_NS.get(kind, 0.45)
                if t > best[0]:
                    best = (t, i)
            self.arrival[b] = best
            stack.pop()
        return self.arrival[bit][0]

    def path(self, bit) -> list[tuple[float, str]]:
        steps = []
        while bit is not None and bit in self.driver:
            cell, _ = self.driver[bit]
            t, prev = self.arrival.get(bit, (0.0, None))
            where = self.source(cell) or self.cells[cell]["type"]
            if not steps or steps[-1][1] != where:
                steps.append((round(t, 2), where))
            if self.cells[cell]["type"] in SEQUENTIAL:
                break
            bit = prev
        return steps[::-1]

    def endpoints(self):
        for name, cell in self.cells.items():
            if cell["type"] not in ("TRELLIS_FF", "DP16KD"):
                continue
            for p, bits in cell["connections"].items():
                if cell["port_directions"][p] != "input" or p.startswith("CLK"):
                    continue
                for b in bits:
                    if not isinstance(b, str):
                        yield name, p, b


def worst_paths(netlist: Netlist, top: int) -> list[dict]:
    ends = sorted(((netlist.time(b) + ROUTE_NS + 0.1, name, p, b) for name, p, b in netlist.endpoints()),
                  key=lambda e: -e[0])
    out, seen = [], set()
    for ns, name, port, bit in ends:
        where = netlist.source(name) or name
        if (where, port) in seen:
            continue
        seen.add((where, port))
        out.append({"ns": round(ns, 2), "endpoint": f"{where} ({port})",
                    "path": [f"{t:.2f} {w}" for t, w in netlist.path(bit)]})
        if len(out) >= top:
            break
    return out


def synthesise(out_dir: Path, coincidence: bool, herald: bool) -> Path:
    from qnode.gateware.build import NAME, _tool_env, plan_ulx3s

    _, _, plan = plan_ulx3s(coincidence=coincidence, herald=herald)
    for name, content in plan.files.items():
        target = out_dir / name
        target.write_text(content) if isinstance(content, str) else target.write_bytes(content)
    start = time.monotonic()
    print(f"yosys: synthesising in {out_dir} (3-5 minutes) ...", flush=True)
    subprocess.run([_tool_env()["YOSYS"], "-q", "-l", f"{NAME}.rpt", f"{NAME}.ys"], cwd=out_dir, check=True)
    print(f"yosys: {time.monotonic() - start:.0f} s")
    return out_dir / f"{NAME}.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--netlist", type=Path, help="a yosys JSON netlist (default: synthesise)")
    parser.add_argument("--no-coincidence", action="store_true")
    parser.add_argument("--no-herald", action="store_true")
    parser.add_argument("--top", type=int, default=20, help="endpoints to list (one per source line)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gateware_paths.json"))
    args = parser.parse_args(argv)
    sys.setrecursionlimit(10000)
    with tempfile.TemporaryDirectory(dir=".") as tmp:  # yowasp tools see the working directory
        path = args.netlist or synthesise(Path(tmp), not args.no_coincidence, not args.no_herald)
        paths = worst_paths(Netlist(path), args.top)
    print(f"{'est. ns':>8}  endpoint, and the path's source lines with arrival times")
    for p in paths:
        print(f"{p['ns']:8.2f}  {p['endpoint']}\n{'':10}" + " -> ".join(p["path"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"netlist": str(path), "model": {"route_ns": ROUTE_NS, **CELL_NS},
                                    "paths": paths}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
