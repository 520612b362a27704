"""The timestamper's registers come from REGISTER_MAP, and docs/registers.md is generated from it."""

from pathlib import Path

import numpy as np

from qnode.firmware.registers import REGISTER_MAP, registers_markdown
from qnode.gateware.core import TimeTaggerCore
from qnode.gateware.simulate import simulate_core

DOCS = Path(__file__).resolve().parents[2] / "docs" / "registers.md"


def test_committed_register_docs_match_the_map():
    assert DOCS.read_text() == registers_markdown(), (
        "docs/registers.md is stale: .venv/bin/python -m qnode.firmware.registers > docs/registers.md")


def test_identity_and_settings_read_back_through_the_register_port():
    core = TimeTaggerCore(channels=8, oversampling=4, sys_clk_hz=200_000_000)
    names = ["protocol_version", "channel_count", "bin_ps", "oversampling", "sys_clk_khz"]
    read = [REGISTER_MAP.address(n) for n in names]
    read += [REGISTER_MAP.address("ts_delay_bins", 3), REGISTER_MAP.address("ts_enable", 2),
             REGISTER_MAP.address("ts_delay_bins", 8)]  # beyond the 8 channels built: reads 0
    _, regs = simulate_core(core, np.zeros((2, 8), np.uint8),
                            settings={"ts_delay_bins": [0, 0, 0, 1234], "ts_enable": [1, 1, 0]},
                            read=read)
    assert [regs[a] for a in read] == [1, 8, 1250, 4, 200_000, 1234, 0, 0]


def test_twin_settings_come_from_the_lab_config_in_bins():
    from qnode.host.config import load_config
    from qnode.sim.twin import TwinConfig

    fpga = load_config().fpga  # lab_configs/sim.toml: 125 MHz x 8, dead time 8000 ps
    cfg = TwinConfig.from_lab(fpga)
    assert (cfg.channels, cfg.oversampling, cfg.bin_ps) == (8, 8, 1000)
    assert cfg.dead_time_bins == [8] * 8 and cfg.enable == [1] * 8


def test_fmax_and_resources_are_read_from_the_nextpnr_log():
    from qnode.gateware.build import parse_nextpnr_log

    log = """Info: Max frequency for clock '$glbnet$clk': 80.00 MHz (FAIL at 200.00 MHz)
Info: Device utilisation:
Info:             TRELLIS_IO:    21/  365     5%
Info:            TRELLIS_FF:  4834/83640     5%
Info:           TRELLIS_COMB: 12252/83640    14%
Warning: Max frequency for clock '$glbnet$clk': 69.08 MHz (FAIL at 200.00 MHz)
"""
    fmax, resources = parse_nextpnr_log(log)
    assert fmax == 69.08  # the last report is the one after routing
    assert resources["TRELLIS_COMB"] == "12252/83640" and resources["TRELLIS_FF"] == "4834/83640"
