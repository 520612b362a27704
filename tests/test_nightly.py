"""The nightly calibration job on the simulated lab: its three exit codes, its report, and drift."""

import json

import pytest

from qnode.host.config import load_config
from qnode.host.nightly import EXIT_COULD_NOT_RUN, EXIT_OK, EXIT_OUT_OF_TOLERANCE, run_nightly


def variant(config, *, cable_delay_ps=None, **calibration):
    sim = config.sim
    if cable_delay_ps is not None:
        sim = sim.model_copy(update={"cable_delay_ps": {**sim.cable_delay_ps, **cable_delay_ps}})
    cal = config.calibration.model_copy(update=calibration)
    return config.model_copy(update={"sim": sim, "calibration": cal})


@pytest.fixture(scope="module")
def first_night(tmp_path_factory):
    out = tmp_path_factory.mktemp("nightly")
    config = variant(load_config(), delay_seconds=1.0)
    code, report, report_dir = run_nightly(config, out_dir=out, history_path=out / "history.json")
    return code, report, report_dir, out


def test_reference_lab_is_within_tolerance_and_reported(first_night):
    code, report, report_dir, out = first_night
    assert code == EXIT_OK, report["failures"] + report["errors"]
    saved = json.loads((report_dir / "report.json").read_text())
    for key in ("exit_code", "delay_error_bins", "car", "g2_zero", "bias_fraction", "phase_rms_deg", "relock_ms",
                "wall_s", "drift"):
        assert key in saved, key
    assert saved["exit_code"] == 0
    assert set(saved["delay_error_bins"]) == {"1-2", "0-3", "0-4"}
    assert all(abs(v) <= 1.0 for v in saved["delay_error_bins"].values())
    # the simulation's truth, recorded beside the result: every pair within one bin of it
    truth = saved["details"]["sim_truth"]["delay_error_vs_truth_bins"]
    assert all(abs(v) < 1.0 for v in truth.values()), truth
    assert saved["car"] > 100 and saved["g2_zero"] == pytest.approx(saved["car"] + 1)
    assert saved["bias_fraction"] == pytest.approx(0.85, abs=0.01)
    assert saved["phase_rms_deg"] <= 10 and saved["relock_ms"] <= 10
    html = (report_dir / "report.html").read_text()
    for plot in ("delays", "window", "bias", "phase", "drift"):
        assert (report_dir / f"{plot}.png").stat().st_size > 1000
        assert f'src="{plot}.png"' in html
    assert json.loads((out / "history.json").read_text())["nights"][-1]["exit_code"] == 0


def test_a_changed_cable_delay_is_reported_as_drift(first_night):
    _, first, _, out = first_night
    # tonight spdc_b's fibre is 2 ns longer than last night
    config = variant(load_config(), cable_delay_ps={2: 7900 + 2000}, delay_seconds=1.0, bias_instrument=None,
                     phase_seconds=0.3, phase_kicks=False)
    code, report, _ = run_nightly(config, out_dir=out, history_path=out / "history.json")
    assert code == EXIT_OUT_OF_TOLERANCE
    drift = {d["quantity"]: d for d in report["drift"]}
    assert not drift["delay 1-2"]["ok"]
    assert drift["delay 1-2"]["change"] == pytest.approx(2.0, abs=0.2)  # bins
    assert drift["delay 0-3"]["ok"] and drift["delay 0-4"]["ok"]
    assert any("delay 1-2 drifted" in f and "+2" in f for f in report["failures"])
    # the calibration itself still worked: the peak was put back at zero
    assert abs(report["delay_error_bins"]["1-2"]) <= 1.0


def test_no_lab_and_no_daemon_is_could_not_run(tmp_path):
    config = load_config()
    config = config.model_copy(update={"fpga": config.fpga.model_copy(update={"link": "/dev/ttyUSB7"})})
    code, report, report_dir = run_nightly(config, out_dir=tmp_path, history_path=tmp_path / "history.json")
    assert code == EXIT_COULD_NOT_RUN
    assert "--daemon" in report["errors"][0]
    assert json.loads((report_dir / "report.json").read_text())["exit_code"] == 2


def test_an_unreadable_history_is_could_not_run_and_left_alone(tmp_path):
    history = tmp_path / "history.json"
    history.write_text("{not json")
    config = variant(load_config(), delay_seconds=0.3, delay_pairs=[], window_pair=None, bias_instrument=None,
                     phase_seconds=0.1, phase_kicks=False)
    code, report, _ = run_nightly(config, out_dir=tmp_path, history_path=history)
    assert code == EXIT_COULD_NOT_RUN
    assert "move it away" in report["errors"][0]
    assert history.read_text() == "{not json"


def test_against_a_running_daemon_delays_go_to_its_fpga(tmp_path):
    from qnode.host.client import Client
    from qnode.host.daemon import Daemon

    config = variant(load_config(), delay_seconds=1.0)
    with Daemon(config, control_url="tcp://127.0.0.1:0", stream_url="tcp://127.0.0.1:0") as daemon:
        code, report, _ = run_nightly(config, daemon_url=daemon.control_url, stream_url=daemon.stream_url,
                                      out_dir=tmp_path, history_path=tmp_path / "history.json")
        client = Client(daemon.control_url)
        written = {ch: client.call("registers.read", name="ts_delay_bins", index=ch)["value"] for ch in range(5)}
        client.close()
    assert code == EXIT_OK, report["failures"] + report["errors"]
    assert written == {int(k): v for k, v in report["delays_bins"].items()}
    assert all(abs(v) <= 1.0 for v in report["delay_error_bins"].values())
    # the simulated SNSPD controller lives inside the daemon's lab; the phase loop was not started
    assert len(report["skipped"]) == 2


def test_cli_one_shot_window_and_argument_errors(tmp_path, monkeypatch):
    from pathlib import Path

    from click.testing import CliRunner

    from qnode.host.cli import main

    text = (Path(__file__).parents[1] / "lab_configs" / "sim.toml").read_text()
    config = tmp_path / "lab.toml"
    config.write_text(text.replace("delay_seconds = 2.0", "delay_seconds = 0.5"))
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)  # the config's report_directory and history are relative
    result = runner.invoke(main, ["calibrate", "window", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "car:" in result.output and "window_ps: 2000" in result.output
    assert list((tmp_path / "runs/calibration").glob("*/report.json"))
    assert not (tmp_path / "runs/calibration/history.json").exists()  # one-shots keep no history
    both = runner.invoke(main, ["calibrate", "window", "--nightly", "--config", str(config)])
    assert both.exit_code == 2 and "either --nightly or one of" in both.output


def test_the_command_exits_0_then_1_on_drift_then_2_without_a_lab(tmp_path):
    # The real `qnode calibrate --nightly` process, as cron and systemd see it: its exit status.
    import subprocess
    import sys
    from pathlib import Path

    reference = (Path(__file__).parents[1] / "lab_configs" / "sim.toml").read_text()
    assert "delay_seconds = 2.0" in reference and "\n2 = 7900\n" in reference and 'link = "sim://"' in reference
    quick = reference.replace("delay_seconds = 2.0", "delay_seconds = 1.0").replace(
        "phase_seconds = 1.0", "phase_seconds = 0.3\nphase_kicks = false")
    configs = {"tonight": quick, "drifted": quick.replace("\n2 = 7900\n", "\n2 = 9900\n"),
               "no_lab": quick.replace('link = "sim://"', 'link = "/dev/ttyUSB7"')}
    for name, text in configs.items():
        (tmp_path / f"{name}.toml").write_text(text)

    def nightly(name):
        return subprocess.run(
            [sys.executable, "-m", "qnode.host.cli", "calibrate", "--nightly", "--config", str(tmp_path / f"{name}.toml"),
             "--out", str(tmp_path / "reports"), "--history", str(tmp_path / "history.json")],
            capture_output=True, text=True, timeout=600)

    first = nightly("tonight")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "exit 0: all within tolerance" in first.stdout
    drifted = nightly("drifted")
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    assert "out of tolerance: delay 1-2 drifted since last night" in drifted.stdout and "+2 bins" in drifted.stdout
    no_lab = nightly("no_lab")
    assert no_lab.returncode == 2, no_lab.stdout + no_lab.stderr
    assert "--daemon" in no_lab.stderr
    reports = sorted((tmp_path / "reports").glob("*/report.json"), key=lambda p: p.stat().st_mtime)
    assert [json.loads(p.read_text())["exit_code"] for p in reports] == [0, 1, 2]
    # a night that could not run leaves the history alone: tomorrow compares with the drifted night
    nights = json.loads((tmp_path / "history.json").read_text())["nights"]
    assert [n["exit_code"] for n in nights] == [0, 1]


def test_two_runs_in_the_same_second_keep_both_reports(tmp_path):
    from qnode.host.nightly import _new_directory

    first = _new_directory(tmp_path / "reports", "sim-node-a-20261201-030000")
    (first / "report.json").write_text("{}")
    second = _new_directory(tmp_path / "reports", "sim-node-a-20261201-030000")
    assert second != first and second.name == "sim-node-a-20261201-030000-2"
    assert (first / "report.json").read_text() == "{}"
