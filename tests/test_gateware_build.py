"""What `qnode gateware build` reads back from nextpnr's log: fmax per clock and the critical path."""

from qnode.gateware.build import (
    CAPTURE_CLOCK_NET, SYS_CLOCK_NET, clock_fmax, critical_path, parse_nextpnr_log,
)

LOG = """Info: Max frequency for clock         '$glbnet$capture.clk': 59.99 MHz (FAIL at 100.00 MHz)
Info: Max frequency for clock '$glbnet$capture.capture_clk': 144.93 MHz (FAIL at 200.00 MHz)
Info: Critical path report for clock '$glbnet$capture.clk' (posedge -> posedge):
Info:       type curr  total name
Info:   clk-to-q  0.52  0.52 Source linked.core.regs.ts_enable_0_TRELLIS_FF_Q.Q
Info:    routing  1.68  2.20 Net linked.core.regs.ts_enable_0 (51,33) -> (51,50)
Info:                          Sink linked.core.timestamper0.dl_near_LUT4_C.D
Info:                          Defined in:
Info:                               /work/main/gateware/timestamper.py:36
Info:      logic  0.40  12.56 Source linked.core.timestamper0.a_gap_LUT4_Z.OFX
Info:    routing  0.38  12.94 Net linked.core.timestamper0.a_gap_DI (55,38) -> (55,38)
Info:                          Sink linked.core.timestamper0.a_gap_TRELLIS_FF_Q_2.M
Info:      setup  0.00  12.94 Source linked.core.timestamper0.a_gap_TRELLIS_FF_Q_2.M
Info: 4.03 ns logic, 8.92 ns routing
Info: Critical path report for clock '$glbnet$capture.capture_clk' (posedge -> posedge):
Info:       type curr  total name
Info:   clk-to-q  0.52  0.52 Source capture.ring_1_TRELLIS_FF_Q.Q
Info:      setup  0.00  4.74 Source capture.now4_TRELLIS_FF_Q.M
Info: 1.20 ns logic, 3.54 ns routing
Warning: Max frequency for clock         '$glbnet$capture.clk': 77.26 MHz (FAIL at 100.00 MHz)
Info: Max frequency for clock '$glbnet$capture.capture_clk': 210.97 MHz (PASS at 200.00 MHz)
"""


def test_each_clock_gets_its_post_route_fmax_and_the_system_clock_is_the_core_domain():
    assert clock_fmax(LOG) == {"$glbnet$capture.clk": 77.26, "$glbnet$capture.capture_clk": 210.97}
    fmax, _ = parse_nextpnr_log(LOG, SYS_CLOCK_NET)
    assert fmax == 77.26  # not the 200 MHz capture domain's 210.97, whose name also ends in "clk"
    assert parse_nextpnr_log(LOG, CAPTURE_CLOCK_NET)[0] == 210.97


def test_the_critical_path_names_its_ends_its_delay_and_the_source_lines():
    path = critical_path(LOG, SYS_CLOCK_NET)
    assert path == {"from": "linked.core.regs.ts_enable_0_TRELLIS_FF_Q.Q",
                    "to": "linked.core.timestamper0.a_gap_TRELLIS_FF_Q_2.M", "ns": 12.94,
                    "logic_ns": 4.03, "routing_ns": 8.92, "source_lines": ["gateware/timestamper.py:36"]}
    assert critical_path(LOG, CAPTURE_CLOCK_NET)["ns"] == 4.74
    assert critical_path(LOG, "no_such_clock") is None


def test_the_core_can_be_built_without_its_coincidence_and_herald_units():
    from qnode.gateware.build import plan_ulx3s, ulx3s_content_hash

    _, full, plan_full = plan_ulx3s()
    _, bare, plan_bare = plan_ulx3s(coincidence=False, herald=False)
    assert (full.core.coincidence, full.core.herald) == (True, True)
    assert (bare.core.coincidence, bare.core.herald) == (False, False)
    rtlil = "qnode_ulx3s.il"
    assert "linked.core.herald" in plan_full.files[rtlil]
    assert "linked.core.herald" not in plan_bare.files[rtlil]
    assert ulx3s_content_hash() != ulx3s_content_hash(coincidence=False, herald=False)
