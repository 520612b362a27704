"""From a lab config to open drivers, and `qnode sim lab` serving the config's instruments."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from qnode.drivers.registry import DRIVERS, make_instrument, open_instrument
from qnode.host.config import Instrument, load_config
from qnode.sim.instruments.rack import SIMULATORS, InstrumentRack


def test_every_config_driver_name_has_a_driver_and_a_simulator():
    assert set(DRIVERS) == set(SIMULATORS) == {
        "lakeshore336", "lakeshore372", "santec_tsl570", "singlequantum_eos", "gs200", "mdt694b",
        "keysight33500b", "pm100"}


def test_unknown_driver_is_named_with_its_key():
    with pytest.raises(ValueError, match=r"instruments\.cryostat\.driver: unknown driver 'lakeshore999'"):
        make_instrument("cryostat", Instrument(driver="lakeshore999", resource="127.0.0.1:1"))


def test_config_timeout_and_options_reach_the_driver():
    entry = Instrument(driver="lakeshore336", resource="127.0.0.1:7777", timeout_s=0.3,
                       options={"max_setpoint_k": 4.0, "backoff_max_s": 5.0})
    driver = make_instrument("cryostat", entry)
    assert driver.timeout_s == 0.3 and driver.max_setpoint_k == 4.0 and driver.backoff_max_s == 5.0
    assert driver.transport.address == "127.0.0.1:7777"


def test_every_sim_instrument_of_the_reference_lab_opens(lab):
    config = load_config()
    with InstrumentRack(config, lab, any_free_port=True) as rack:
        assert set(rack.slots) == {n for n, e in config.instruments.items() if e.sim}
        for name in rack.slots:
            driver = open_instrument(name, rack.config_entry(name))
            assert driver.identity and not driver.suspect
            driver.close()
        assert rack.slots["stretcher"].address.startswith("/dev/")


def test_sim_lab_command_prints_the_table_and_stops(tmp_path):
    from qnode.sim.cli import sim

    result = CliRunner().invoke(sim, ["lab", "--seconds", "0.3", "--any-port"])
    assert result.exit_code == 0, result.output
    for name, driver in [("cryostat", "lakeshore336"), ("laser", "santec_tsl570"), ("snspd", "singlequantum_eos"),
                         ("stretcher", "mdt694b"), ("powermeter", "pm100")]:
        assert re.search(rf"{name}\s*│\s*{driver}", result.output), result.output
    assert re.search(r"/dev/pts/\d+", result.output)
    fpga_row = r"fpga\s*│\s*timetagger\s*│\s*tcp\s*│\s*socket://127\.0\.0\.1:\d+"
    assert re.search(fpga_row, result.output), result.output
    assert "stopped" in result.output


def test_sim_lab_without_the_fpga_serves_instruments_only():
    from qnode.sim.cli import sim

    result = CliRunner().invoke(sim, ["lab", "--seconds", "0.1", "--any-port", "--no-fpga"])
    assert result.exit_code == 0, result.output
    assert "cryostat" in result.output and "socket://" not in result.output


def test_sim_lab_serves_the_fpga_at_the_port_of_a_socket_link(tmp_path):
    from qnode.sim.cli import _fpga_port

    config = load_config()
    assert _fpga_port(config, any_port=False, fpga_port=None) == 0  # sim://: any free port
    config.fpga = config.fpga.model_copy(update={"link": "socket://127.0.0.1:7000"})
    assert _fpga_port(config, any_port=False, fpga_port=None) == 7000
    assert _fpga_port(config, any_port=True, fpga_port=None) == 0
    assert _fpga_port(config, any_port=True, fpga_port=7100) == 7100


def test_sim_lab_says_why_the_fpga_port_is_taken():
    import socket

    from qnode.sim.cli import sim

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(sim, ["lab", "--seconds", "0.1", "--any-port", "--fpga-port", str(port)])
    assert result.exit_code == 1
    assert "cannot start the simulated FPGA" in result.output and str(port) in result.output


def test_sim_lab_command_reports_a_bad_config(tmp_path):
    from qnode.sim.cli import sim

    bad = tmp_path / "bad.toml"
    bad.write_text("[fpga]\nchannels = 'none'\n")
    result = CliRunner().invoke(sim, ["lab", "--config", str(bad), "--seconds", "0.1"])
    assert result.exit_code == 1
    assert "bad.toml" in result.output


def test_snapshot_reads_every_instrument_without_changing_it(lab):
    config = load_config()
    with InstrumentRack(config, lab, any_free_port=True) as rack:
        before = (lab.cryostat.setpoint_k, lab.cryostat.heater_range, lab.laser.emission_on,
                  lab.interferometer.target_voltage_v(), [lab.bias_ua(c) for c in lab.snspd_channels])
        snapshots = {}
        for name in rack.slots:
            driver = open_instrument(name, rack.config_entry(name))
            snapshots[name] = driver.snapshot()
            driver.close()
        after = (lab.cryostat.setpoint_k, lab.cryostat.heater_range, lab.laser.emission_on,
                 lab.interferometer.target_voltage_v(), [lab.bias_ua(c) for c in lab.snspd_channels])
    assert before == after
    assert snapshots["cryostat"]["temperature_a_k"] == pytest.approx(2.5)
    assert snapshots["snspd"]["bias_ua"] == [10.0] * 4
    assert snapshots["stretcher"]["voltage_v"] == 0.0
    assert snapshots["laser"]["emission_on"] is False
    assert "power_w" in snapshots["powermeter"]


def test_sim_pty_needs_the_rack_to_say_where_it_is():
    with pytest.raises(ValueError, match="sim-pty"):
        make_instrument("stretcher", Instrument(driver="mdt694b", transport="serial", resource="sim-pty"))


def test_a_fixed_serial_path_is_linked_to_the_pty(tmp_path, lab):
    config = load_config()
    link = tmp_path / "qnode-stretcher"
    config.instruments = {"stretcher": config.instruments["stretcher"].model_copy(update={"resource": str(link)})}
    with InstrumentRack(config, lab) as rack:
        assert link.is_symlink()
        # a process that only has the config opens the instrument at the configured path
        stretcher = open_instrument("stretcher", config.instruments["stretcher"])
        stretcher.set_voltage_v(3.0)
        assert lab.piezo_voltage_v == 3.0
        stretcher.close()
    assert not link.exists() and not link.is_symlink()


def test_rack_will_not_replace_a_real_file(tmp_path, lab):
    config = load_config()
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    config.instruments = {"stretcher": config.instruments["stretcher"].model_copy(update={"resource": str(precious)})}
    with pytest.raises(FileExistsError):
        InstrumentRack(config, lab).start()
    assert precious.read_text() == "keep me"


def test_sim_lab_process_serves_another_process_and_stops_on_ctrl_c():
    """`qnode sim lab` in its own process; this test process drives its cryostat, then presses Ctrl-C."""
    import os
    import select
    import signal
    import subprocess
    import sys
    import time

    from qnode.drivers.lakeshore import LakeShore336
    from qnode.drivers.timetagger import TimeTagger
    from qnode.drivers.transport import TcpTransport

    # Ctrl-C reaches it even when the tests run as a background job (which ignores SIGINT).
    process = subprocess.Popen([sys.executable, "-m", "qnode.host.cli", "sim", "lab", "--any-port"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        output = ""
        # generous: the machine is shared and the FPGA loads its kernels; not a timing assertion
        deadline = time.monotonic() + 90.0
        while "running" not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(process.stdout.fileno(), 65536)  # unbuffered: select sees what is left
                if not chunk:
                    break
                output += chunk.decode("utf-8", "replace")
        match = re.search(r"cryostat\s*│\s*lakeshore336\s*│\s*tcp\s*│\s*(127\.0\.0\.1:\d+)", output)
        assert match, output
        host, port = match.group(1).split(":")
        cryostat = LakeShore336("cryostat", TcpTransport(host, int(port)), timeout_s=2.0).open()
        assert cryostat.temperature_k("A") == pytest.approx(2.5, abs=0.01)
        cryostat.close()
        # ... and the simulated FPGA it serves on the same lab, through the host's link driver
        url = re.search(r"fpga\s*│\s*timetagger\s*│\s*tcp\s*│\s*(socket://127\.0\.0\.1:\d+)", output)
        assert url, output
        with TimeTagger(url.group(1), timeout_s=5.0) as tagger:
            assert tagger.identity.board == "sim" and tagger.identity.channels == 8
            assert tagger.read_register("bin_ps") == 1000
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=20)
        rest = rest.decode("utf-8", "replace")
        assert process.returncode == 0, output + rest
        assert "stopped" in rest
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def test_config_options_shape_the_simulated_lab():
    from qnode.sim.clock import SimClock
    from qnode.sim.lab import LabModel

    config = load_config()
    eos = config.instruments["snspd"]
    config.instruments["snspd"] = eos.model_copy(update={"options": {"channels": [3, 4]}})
    config.instruments["bias"] = Instrument(driver="gs200", resource="127.0.0.1:7655", sim=True,
                                            options={"channel": 1})
    config.instruments["stretcher"] = config.instruments["stretcher"].model_copy(
        update={"options": {"voltage_limit_v": 75.0}})
    lab = LabModel(config, clock=SimClock())
    assert lab.snspd_channels == (3, 4)
    with InstrumentRack(config, lab, any_free_port=True) as rack:
        assert rack.slots["bias"].instrument.channel == 1
        stretcher = open_instrument("stretcher", rack.config_entry("stretcher"))
        assert stretcher.voltage_limit_v == 75.0
        stretcher.close()
        snspd = open_instrument("snspd", rack.config_entry("snspd"))
        assert snspd.number_of_detectors == 2
        snspd.close()
