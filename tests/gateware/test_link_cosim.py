"""The linked design (core + link engine + UART) as Verilog on Verilator through cocotb, driven
by the host's framing over a bit-level UART model: identify, registers, and the event stream
word for word against the twin (tests/gateware/cocotb_link.py has the testbench).

The Verilator model is built once into build/cocotb/link_<hash of the Verilog>/ (the helpers of
test_cocotb.py) and reused while the Verilog is unchanged. The UART runs at 8 clocks per bit so
the event stream drains in simulated milliseconds, not seconds.
"""

import fcntl
import hashlib
import importlib.util
import json
import os
import random
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("qnode_test_cocotb", Path(__file__).with_name("test_cocotb.py"))
_cocotb_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cocotb_helpers)
BUILD = _cocotb_helpers.BUILD

CHANNELS, N, SYS_CLK_HZ = 4, 8, 125_000_000
DIVISOR = 8  # clocks per UART bit: 15.625 Mbaud
FIFO_DEPTH, OUTPUT_DEPTH = 8, 8
START_NOW = (1 << 32) // N - 1000  # the 2**32-bin rollover falls before the stimulus: an EPOCH
GATEWARE_HASH = "5eed0fc0ffee1234"
BOARD = "cosim"


def _build() -> Path:
    from amaranth.back import verilog
    from cocotb_tools.runner import get_runner

    from qnode.gateware.top import LinkedTimeTagger

    top = LinkedTimeTagger(board=BOARD, channels=CHANNELS, oversampling=N, sys_clk_hz=SYS_CLK_HZ,
                           baud=SYS_CLK_HZ // DIVISOR, gateware_hash=GATEWARE_HASH,
                           fifo_depth=FIFO_DEPTH, output_depth=OUTPUT_DEPTH, word_fifo_depth=512,
                           start_now=START_NOW)
    assert top.divisor == DIVISOR
    text = verilog.convert(top, name="linked_time_tagger")
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    build_dir = BUILD / f"link_n{N}_c{CHANNELS}_{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".lock", "w") as lock:  # a colleague's run may be building it too
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (build_dir / "linked_time_tagger").exists():
            source = build_dir / "linked_time_tagger.v"
            source.write_text(text)
            get_runner("verilator").build(
                sources=[source], hdl_toplevel="linked_time_tagger", build_dir=build_dir,
                build_args=["-Wno-fatal", "-Wno-lint", "-Wno-style"], always=True,
                log_file=build_dir / "build.log")
    return build_dir


@pytest.mark.slow
def test_host_framing_over_uart_identifies_writes_registers_and_streams_the_twins_words(tmp_path):
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    _cocotb_helpers._verilator_env()
    build_dir = _build()
    seed = int(os.environ.get("QNODE_COCOTB_SEED", random.randrange(1 << 20)))
    print(f"\nlink co-simulation seed {seed} (rerun with QNODE_COCOTB_SEED={seed})")
    results = tmp_path / "link.json"
    xml = get_runner("verilator").test(
        test_module="cocotb_link", hdl_toplevel="linked_time_tagger", hdl_toplevel_lang="verilog",
        build_dir=build_dir, test_dir=Path(__file__).parent, results_xml=str(tmp_path / "results.xml"),
        extra_env={
            "QNODE_CHANNELS": str(CHANNELS), "QNODE_OVERSAMPLING": str(N),
            "QNODE_SYS_CLK_HZ": str(SYS_CLK_HZ), "QNODE_DIVISOR": str(DIVISOR),
            "QNODE_FIFO_DEPTH": str(FIFO_DEPTH), "QNODE_OUTPUT_DEPTH": str(OUTPUT_DEPTH),
            "QNODE_START_NOW": str(START_NOW), "QNODE_GATEWARE_HASH": GATEWARE_HASH,
            "QNODE_BOARD": BOARD, "QNODE_SEED": str(seed), "QNODE_RESULTS": str(results),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])),
        },
        log_file=tmp_path / "sim.log")
    total, failed = get_results(Path(xml))
    summary = json.loads(results.read_text()) if results.exists() else {}
    print(f"link co-simulation {json.dumps(summary)}")
    assert failed == 0 and total == 1, f"cocotb failed; see {tmp_path / 'sim.log'} (seed {seed})"
    assert summary["equal"] and summary["words"] == summary["twin_words"] > 100
    assert summary["epoch_words"] >= 1 and summary["epochs_ok"]  # the stream crossed a rollover
    assert summary["crc_errors"] == 0 and summary["bytes_skipped"] == 0
