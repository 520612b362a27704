"""bench/gateware_slack.py's timing analysis on a hand-written routed netlist (no build needed).

Three core-clock registers and a LUT, and one register of the capture clock: the worst path's
arrival is clock-to-Q + routing + the LUT + routing, the capture clock's register launches
nothing that is timed, and each endpoint is charged to the unit its name says.
"""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gateware_slack", ROOT / "bench/gateware_slack.py")
slack = importlib.util.module_from_spec(spec)
spec.loader.exec_module(slack)

A = "linked.core.merger.n1_0_s0_TRELLIS_FF_Q"
B = "linked.core.packer.pending_3_TRELLIS_FF_Q"
C = "linked.core.coincidence.seen_1_TRELLIS_FF_Q"
X = "capture.ring_0_TRELLIS_FF_Q"  # the 200 MHz capture domain: its paths are not timed here
LUT = "linked.core.packer.pending_3_LUT4_Z"


def cell_sdf(kind, name, arcs):
    paths = "\n".join(f"        (IOPATH {a} {b} ({ps}:{ps}:{ps}) ({ps}:{ps}:{ps}))" for a, b, ps in arcs)
    return f'  (CELL\n    (CELLTYPE "{kind}")\n    (INSTANCE {name})\n    (DELAY\n      (ABSOLUTE\n{paths}\n      )\n    )\n  )\n'


def wire(a, b, ps):
    return f"        (INTERCONNECT {a} {b} ({ps}:{ps}:{ps}) ({ps}:{ps}:{ps}))"


def write_build(tmp_path: Path) -> Path:
    nets = [wire(f"{A}/Q", f"{LUT}/A", 3000), wire(f"{X}/Q", f"{LUT}/B", 9000),
            wire(f"{LUT}/Z", f"{B}/DI", 6500), wire(f"{A}/Q", f"{C}/DI", 1000)]
    sdf = ('(DELAYFILE\n  (SDFVERSION "3.0")\n  (CELL\n    (CELLTYPE "top")\n    (INSTANCE )\n'
           "    (DELAY\n      (ABSOLUTE\n" + "\n".join(nets) + "\n      )\n    )\n  )\n")
    for ff in (A, B, C, X):
        sdf += cell_sdf("TRELLIS_FF", ff, [("(posedge CLK)", "Q", 525)])
    sdf += cell_sdf("LUT4", LUT, [("A", "Z", 400), ("B", "Z", 400)]) + ")\n"
    (tmp_path / f"{slack.NAME}.sdf").write_text(sdf)

    def ff(src, clk):
        return {"type": "TRELLIS_FF", "attributes": {"src": f"/x/gateware/{src}"},
                "connections": {"CLK": [clk], "DI": [10], "Q": [11]}}
    cells = {A: ff("merger.py:113", 2), B: ff("packer.py:151", 2), C: ff("coincidence.py:84", 2),
             X: ff("capture.py:130", 3),
             LUT: {"type": "LUT4", "attributes": {"src": "/x/gateware/packer.py:154"}, "connections": {}}}
    netnames = {slack.SYS_CLOCK_NET: {"bits": [2]}, "capture.capture_clk": {"bits": [3]}}
    design = {"modules": {"top": {"attributes": {"top": "1"}, "cells": cells, "netnames": netnames}}}
    (tmp_path / f"{slack.NAME}.json").write_text(json.dumps(design))
    return tmp_path


def test_the_worst_path_is_the_sum_of_its_arcs_and_nets_and_other_clocks_are_untimed(tmp_path):
    r = slack.analyse(write_build(tmp_path), period_ns=10.0, top=5)
    assert r["endpoints"] == 2  # B and C; X is in the capture domain
    assert r["worst_ns"] == round(0.525 + 3.0 + 0.4 + 6.5, 2)  # through A, not the 9 ns from X
    assert r["failing"] == 1
    assert r["units"] == {"packer": {"failing": 1, "worst_ns": 10.43}}
    (pair,) = r["pairs"]
    assert (pair["start"], pair["end"], pair["nets"]) == ("merger.py:113", "packer.py:151", 2)
    assert pair["routing_ns"] == 9.5
    assert pair["path"][0].startswith("merger.py:113") and "[6.5 ns net]" in pair["path"][-1]


def test_a_tighter_period_fails_both_endpoints(tmp_path):
    r = slack.analyse(write_build(tmp_path), period_ns=1.0, top=5)
    assert r["failing"] == 2
    assert r["units"]["coincidence"] == {"failing": 1, "worst_ns": 1.52}


def test_a_build_without_an_sdf_says_how_to_get_one(tmp_path, capsys):
    assert slack.main(["--build", str(tmp_path), "--out", str(tmp_path / "r.json")]) == 2
    assert "rebuild" in capsys.readouterr().err
