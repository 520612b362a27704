"""Every failing path of a routed ULX3S build, per unit: a post-route timing analysis of the SDF.

nextpnr's log names one critical path per clock; this reads the SDF every build writes beside it
(``--sdf``: the routed delay of every net and every cell arc) and the yosys netlist, walks every
register-to-register path of the core clock, and reports how many endpoints miss the period, in
which unit they end and start, and the worst path of each (start line, end line) pair. Paths from
constants, the PLL and other clocks are not timed (nextpnr does not time them either), so its
worst path is nextpnr's post-route critical path (the SDF's maximum corner; equal to the ps on
the builds checked). Read the SDF a build wrote itself: one written later from a reloaded
routed netlist came out about 1 ns pessimistic.

    .venv/bin/python bench/gateware_slack.py                       # the last build (build/ulx3s)
    .venv/bin/python bench/gateware_slack.py --build build/ulx3s/<hash> --period-ns 10 --top 30

Writes bench/results/gateware_slack.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path

from qnode.gateware.build import NAME, SYS_CLOCK_NET

ROOT = Path(__file__).resolve().parents[1]

STARTS = {"TRELLIS_FF", "DP16KD"}  # timed launch points (clocked by the core clock)
SEQUENTIAL = STARTS | {"TRELLIS_IO", "IOLOGIC", "DCCA", "EHXPLLL", "ECLKSYNCB", "CLKDIVF",
                       "TRELLIS_ECLKBUF", "TRELLIS_RAMW"}
UNTIMED = -1e9


class RoutedTiming:
    def __init__(self, sdf: Path, netlist: Path):
        self.net_in = {}  # (cell, input pin) -> (driver cell, driver pin, ns)
        self.arcs = collections.defaultdict(list)  # (cell, output pin) -> [(input pin, ns)]
        self.kind = {}
        cell = None
        unescape = lambda s: s.replace("\\", "")
        for line in sdf.open():
            line = line.strip()
            if line.startswith("(CELLTYPE"):
                kind = line.split('"')[1]
            elif line.startswith("(INSTANCE"):
                cell = unescape(line[len("(INSTANCE "):-1])
                self.kind[cell] = kind
            elif line.startswith("(INTERCONNECT"):
                m = re.match(r"\(INTERCONNECT (\S+) (\S+) \((\d+):(\d+):(\d+)\)", line)
                (a_cell, a_pin), (b_cell, b_pin) = (unescape(x).rsplit("/", 1) for x in m.group(1, 2))
                self.net_in[(b_cell, b_pin)] = (a_cell, a_pin, int(m[5]) / 1000)
            elif line.startswith("(IOPATH"):
                m = re.match(r"\(IOPATH (?:\(posedge )?(\S+?)\)? (\S+) \((\d+):(\d+):(\d+)\)", line)
                if m:
                    self.arcs[(cell, m[2])].append((m[1], int(m[5]) / 1000))
        design = json.loads(netlist.read_text())
        top = next(m for m in design["modules"].values() if m["attributes"].get("top"))
        names = {}
        for name, net in top["netnames"].items():
            for b in net["bits"]:
                names.setdefault(b, name)
        self.src, self.clock = {}, {}
        for name, c in top["cells"].items():
            lines = sorted(set(re.findall(r"gateware/(\w+\.py:\d+)", c["attributes"].get("src", ""))))
            self.src[name] = ",".join(lines)
            clk = c["connections"].get("CLK") or c["connections"].get("CLKA")
            if clk:
                self.clock[name] = names.get(clk[0], "")
        self.arrival = {}

    def _netlist_name(self, cell: str) -> str:
        return cell if cell in self.src else re.sub(r"\$[^$]*$", "", cell)

    def where(self, cell: str) -> str:
        """The source lines of a cell, else its unit's name."""
        return self.src.get(self._netlist_name(cell)) or unit(cell)

    def core_clocked(self, cell: str) -> bool:
        return (self.kind.get(cell) in STARTS and not cell.startswith("$")
                and self.clock.get(self._netlist_name(cell)) == SYS_CLOCK_NET)

    def arrive(self, cell: str, pin: str) -> float:
        """Latest arrival (ns after the clock edge) at a cell's output pin, iteratively."""
        stack = [(cell, pin)]
        opened = set()
        while stack:
            key = stack[-1]
            if key in self.arrival:
                stack.pop()
                continue
            c, p = key
            if self.kind.get(c) in SEQUENTIAL or c.startswith("$PACKER"):
                t = max((ns for _, ns in self.arcs[key]), default=0.0)
                self.arrival[key] = (t if self.core_clocked(c) else UNTIMED, None)
                stack.pop()
                continue
            inputs = [(i, ns) for i, ns in self.arcs[key] if (c, i) in self.net_in]
            todo = [self.net_in[(c, i)][:2] for i, _ in inputs if self.net_in[(c, i)][:2] not in self.arrival]
            if todo and key not in opened:
                opened.add(key)
                stack.extend(todo)
                continue
            best = (UNTIMED, None)
            for i, ns in inputs:
                d_cell, d_pin, route = self.net_in[(c, i)]
                t = self.arrival.get((d_cell, d_pin), (UNTIMED,))[0] + route + ns
                if t > best[0]:
                    best = (t, i)
            self.arrival[key] = best
            stack.pop()
        return self.arrival[(cell, pin)][0]

    def endpoints(self):
        """(arrival ns, cell, pin) of every data input of a core-clocked register."""
        for (c, p), (d_cell, d_pin, route) in self.net_in.items():
            if self.core_clocked(c) and not p.startswith("CLK"):
                t = self.arrive(d_cell, d_pin) + route
                if t > 0:
                    yield t, c, p

    def path(self, cell: str, pin: str) -> list[tuple[str, float, float]]:
        """(cell, routing ns into it, arrival ns) from the launching register to the endpoint."""
        d_cell, d_pin, route = self.net_in[(cell, pin)]
        steps = [(cell, route, self.arrive(d_cell, d_pin) + route)]
        key = (d_cell, d_pin)
        while True:
            t, via = self.arrival[key]
            if via is None:
                steps.append((key[0], 0.0, t))
                break
            d_cell, d_pin, route = self.net_in[(key[0], via)]
            steps.append((key[0], route, t))
            key = (d_cell, d_pin)
        return steps[::-1]


def unit(cell: str) -> str:
    """The gateware unit a cell belongs to, from its hierarchical name (linked.core.merger...)."""
    parts = re.sub(r"(_TRELLIS|_LUT4|_PFUMX|_L6MUX|_CCU2|\$).*", "", cell).split(".")
    if parts[:2] == ["linked", "core"] and len(parts) > 3:
        return re.sub(r"\d+$", "", parts[2])  # timestamper3 -> timestamper
    if parts[0] == "linked" and len(parts) > 2:
        return parts[1]
    return parts[0] or cell


def analyse(build: Path, period_ns: float, top: int) -> dict:
    timing = RoutedTiming(build / f"{NAME}.sdf", build / f"{NAME}.json")
    ends = sorted(timing.endpoints(), reverse=True)
    failing = [e for e in ends if e[0] > period_ns]
    by_unit = collections.defaultdict(lambda: {"failing": 0, "worst_ns": 0.0})
    pairs = collections.Counter()
    worst = {}
    for t, c, p in failing:
        steps = timing.path(c, p)
        u = by_unit[unit(c)]
        u["failing"] += 1
        u["worst_ns"] = max(u["worst_ns"], round(t, 2))
        key = (timing.where(steps[0][0]), timing.where(c))
        pairs[key] += 1
        if key not in worst:
            routing = sum(r for _, r, _ in steps)
            worst[key] = {"ns": round(t, 2), "routing_ns": round(routing, 2), "nets": len(steps) - 1,
                          "path": _runs(timing, steps)}
    return {
        "build": str(build), "period_ns": period_ns, "endpoints": len(ends),
        "failing": len(failing), "worst_ns": round(ends[0][0], 2) if ends else None,
        "fmax_mhz": round(1000 / ends[0][0], 1) if ends else None,
        "failing_at_ns": {f"{x:.1f}": sum(1 for e in ends if e[0] > x)
                          for x in (period_ns * 0.9, period_ns, period_ns * 1.2, period_ns * 1.4)},
        "units": dict(sorted(by_unit.items(), key=lambda kv: -kv[1]["failing"])),
        "pairs": [{"start": a, "end": b, "failing": n, **worst[(a, b)]} for (a, b), n in pairs.most_common(top)],
    }


def _runs(timing: RoutedTiming, steps) -> list[str]:
    """The path as runs of cells from one source line (a carry chain is one run): each run's
    arrival time, and the routing into it when a net took more than 2 ns."""
    runs = []
    for cell, route, arrival in steps:
        label = timing.where(cell)
        if runs and runs[-1][0] == label and route <= 2.0:
            runs[-1][2] = arrival
        else:
            runs.append([label, route, arrival])
    return [(f"[{r:.1f} ns net] " if r > 2.0 else "") + f"{label} @{a:.2f}" for label, r, a in runs]


def last_build(build_dir: Path) -> Path:
    manifest = json.loads((build_dir / "manifest.json").read_text())
    return build_dir / manifest["gateware_hash"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", type=Path, help="a build's directory (default: the last build)")
    parser.add_argument("--period-ns", type=float, default=10.0, help="the core clock's period")
    parser.add_argument("--top", type=int, default=25, help="(start, end) pairs to list")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/gateware_slack.json")
    args = parser.parse_args(argv)
    build = args.build or last_build(ROOT / "build/ulx3s")
    if not (build / f"{NAME}.sdf").exists():
        print(f"no {NAME}.sdf in {build}: builds write it since the SDF option was added; "
              f"rebuild with `qnode gateware build --force`", file=sys.stderr)
        return 2
    r = analyse(build, args.period_ns, args.top)
    print(f"{build}: worst {r['worst_ns']} ns ({r['fmax_mhz']} MHz); "
          f"{r['failing']} of {r['endpoints']} endpoints miss {args.period_ns} ns")
    print("failing endpoints beyond " + ", ".join(f"{k} ns: {v}" for k, v in r["failing_at_ns"].items()))
    print(f"\n{'unit':<20}{'failing':>8}{'worst ns':>10}")
    for name, u in r["units"].items():
        print(f"{name:<20}{u['failing']:>8}{u['worst_ns']:>10.2f}")
    print(f"\n{'failing':>7} {'worst':>6} {'route':>6}  start -> end (the worst path's arrival times)")
    for p in r["pairs"]:
        print(f"{p['failing']:>7} {p['ns']:>6.2f} {p['routing_ns']:>6.2f}  {p['start']} -> {p['end']}")
        print(f"{'':23}" + " > ".join(p["path"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
