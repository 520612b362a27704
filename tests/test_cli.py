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
    out = qnode("run", "--seconds", "1.5", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    text = out.stdout.replace("\n", "")
    for expected in ("sync", "spdc_a", "/s", "g2 peak at", "CAR", "heralds:", "losses: 0 events in band",
                     "dashboard http://127.0.0.1:"):
        assert expected in text, expected
    heralds = re.search(r"heralds:\s*(\d+)\s*\(([\d.]+)\s*/s", text)
    assert heralds and int(heralds[1]) > 0 and float(heralds[2]) > 0  # the config's herald rule, written and run
    assert re.search(r"the\s*lab's\s*physics\s*gives", text)
    files = list(tmp_path.glob("*.h5"))
    assert len(files) == 1 and files[0].name in text

    with h5py.File(files[0], "r") as f:
        t = f["/photon_data/timestamps"][:]
        ch = f["/photon_data/detectors"][:]
        assert f["/photon_data/timestamps_specs/timestamps_unit"][()] == 1e-12
        assert t.dtype == np.int64 and ch.dtype == np.uint8
        assert "[fpga]" in f["/qnode/config"][()].decode()
    assert len(t) > 500_000
    assert np.all(np.diff(t) >= 0)
    assert np.all(t % 1000 == 0)  # quantised to the 1000 ps bins of the gateware
    sync = t[ch == 0]
    assert abs(len(sync) / ((sync[-1] - sync[0]) * 1e-12) - 0.9e6) < 2e3  # 900 attempts a 1 ms cycle
    # The g2 peak the demo prints sits at the true delay difference (4700 ps) in 1 ns bins.
    peak = float(re.search(r"g2 peak at ([+-][\d,]+) ps", text).group(1).replace(",", ""))
    assert 4000 <= peak <= 5100


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
