"""The `qnode` command as a user runs it: run, doctor, --version."""

import re
import subprocess
import sys
from importlib.metadata import version

import h5py
import numpy as np


def qnode(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "qnode.host.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_version():
    out = qnode("--version")
    assert out.returncode == 0 and version("qnode") in out.stdout


def test_run_records_the_simulated_lab_and_prints_rates(tmp_path):
    out = qnode("run", "--seconds", "0.2", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "sync" in out.stdout and "spdc_a" in out.stdout and "/s" in out.stdout
    files = list(tmp_path.glob("*.h5"))
    assert len(files) == 1 and str(files[0].name) in out.stdout.replace("\n", "")

    with h5py.File(files[0], "r") as f:
        t = f["/photon_data/timestamps"][:]
        ch = f["/photon_data/detectors"][:]
        assert f["/photon_data/timestamps_specs/timestamps_unit"][()] == 1e-12
        assert t.dtype == np.int64 and ch.dtype == np.uint8
        assert f["/acquisition_duration"][()] == 0.2
        assert "[fpga]" in f["/qnode/config"][()].decode()
    assert np.all(np.diff(t) >= 0)
    assert np.count_nonzero(ch == 0) == 200_000  # 1 MHz sync for 0.2 s
    assert np.all(t % 1000 == 0)  # quantised to the 1000 ps bins of the gateware
    # The printed sync count is the recorded one.
    assert re.search(r"sync\s+│\s+200,000", out.stdout)


def test_run_with_a_broken_config_says_what_is_wrong(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[fpga]\nboard = 'sim'\n")
    out = qnode("run", "--config", str(path), "--out", str(tmp_path))
    assert out.returncode == 2
    assert f"{path}: fpga.channels: Field required" in out.stderr
    assert not list(tmp_path.glob("*.h5"))


def test_doctor_names_every_tool_and_how_to_install_missing_ones():
    out = qnode("doctor")
    assert out.returncode == 0, out.stdout
    for tool in ("python", "amaranth", "verilator", "yosys", "nextpnr-ecp5", "openFPGALoader"):
        assert tool in out.stdout
    if "missing" in out.stdout:
        assert "install" in out.stdout
