"""Lab configs: the shipped ones load, bad ones fail with file, key and what was expected."""

import subprocess
import sys
from pathlib import Path

import pytest

from qnode.host.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
SIM = ROOT / "lab_configs" / "sim.toml"


def test_shipped_configs_load():
    sim = load_config(SIM)
    assert sim.fpga.bin_ps == 1000
    assert [c.name for c in sim.fpga.channels][:5] == ["sync", "spdc_a", "spdc_b", "bsm_plus", "bsm_minus"]
    assert sim.sim.cable_delay_ps == {1: 3200, 2: 7900, 3: 12400, 4: 12900}
    real = load_config(ROOT / "lab_configs" / "example_lab.toml")
    assert real.fpga.bin_ps == 1250 and real.sim is None


def test_default_config_is_the_packaged_sim_toml():
    assert load_config(None).model_dump() == load_config(SIM).model_dump()


def _broken(old: str, new: str) -> str:
    text = SIM.read_text()
    assert old in text, old
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("dead_time_ps = 8000\n[[fpga.channels]]\nindex = 3",
         "dead_time_ps = 'soon'\n[[fpga.channels]]\nindex = 3",
         "fpga.channels[2].dead_time_ps: Input should be a valid integer"),
        ("oversampling = 8", "oversampling = 6", "fpga.oversampling: Input should be 4 or 8"),
        ("rate_hz = 1e6          # one", "rate_hz = -5   # one", "sim.sync.rate_hz: Input should be greater than 0"),
        ("transmission_a = 0.10", "transmision_a = 0.10", "sim.pair_source.transmision_a: Extra inputs are not permitted"),
        ("sys_clk_hz = 125_000_000", "sys_clk_hz = 300_000_000", "whole number of ps per bin"),
        ("channel_a = 1", "channel_a = 9", "sim.pair_source.channel_a = 9 is not one of fpga.channels"),
        ('driver = "lakeshore336"\ntransport = "tcp"', 'driver = "lakeshore336"\ntransport = "usb"',
         "instruments.cryostat.transport: Input should be 'visa', 'serial' or 'tcp'"),
        ("index = 7", "index = 6", "channel index 6 appears twice"),
        ('rule = "single_click"', 'rule = "one_click"',
         "fpga.herald.rule: Input should be 'off', 'single_click' or 'two_click'"),
        ('detectors = ["bsm_plus", "bsm_minus"]', 'detectors = ["bsm_plus", "bsm_minos"]',
         "fpga: herald.detectors[1]: 'bsm_minos' is not one of fpga.channels"),
        ('sync_channel = "sync"', "sync_channel = 9", "fpga: herald.sync_channel: 9 is not one of fpga.channels"),
        ("length_ps = 10_000", "length_ps = 70_000_000",
         "fpga: herald.length_ps: 70000000 ps is more than the register holds (65535 bins of 1000 ps"),
        ("length_ps = 10_000", "length_ps = 400", "fpga: herald.length_ps: 400 ps rounds to 0 bins of 1000 ps"),
        ('detectors = ["bsm_plus", "bsm_minus"]', "detectors = []",
         "fpga.herald: rule 'single_click' needs detectors"),
        ('rule = "single_click"', 'rule = "two_click"', "fpga.herald: two_click: late_ps (0) must be at least"),
        ('rule = "single_click"', 'rule = "two_click"\nlate_ps = 70_000_000',
         "fpga: herald.late_ps: 70000000 ps is more than the register holds (65535 bins of 1000 ps"),
        ("offset_ps = 49_012_000", "offset_ps = -1",
         "fpga.herald.offset_ps: Input should be greater than or equal to 0"),
        ('channels = ["spdc_a", "spdc_b"]', 'channels = ["spdc_a", "spdc_c"]',
         "fpga: coincidence[0].channels[1]: 'spdc_c' is not one of fpga.channels"),
        ('channels = ["spdc_a", "spdc_b"]', 'channels = ["spdc_a", 1]',
         "coincidence[0].channels: a channel appears twice"),
        ("window_ps = 10_000\nemit", "window_ps = 10_000\nmin_fold = 3\nemit",
         "fpga.coincidence[0]: min_fold 3 is more than the pattern's 2 channels"),
        ("window_ps = 10_000\nemit", "window_ps = 10_000\nwindow = 3\nemit",
         "fpga.coincidence[0].window: Extra inputs are not permitted"),
    ],
)
def test_bad_config_names_file_key_and_expectation(tmp_path, old, new, expected):
    path = tmp_path / "broken.toml"
    path.write_text(_broken(old, new))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_not_toml_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        parse_config("[fpga\n", "bad.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="fpga: Field required"):
        parse_config("[node]\nname = 'x'\n", "nofpga.toml")


def test_detector_overrides_merge_with_defaults():
    from qnode.sim.source import detector_models

    cfg = load_config(SIM)
    models = detector_models(cfg.sim, [0, 1])
    assert models[0].dark_rate_hz == 0 and models[0].jitter_ps == 5
    assert models[1].efficiency == 0.85 and models[1].dead_time_ps == 20_000


def _qnode(*args):
    return subprocess.run([sys.executable, "-m", "qnode.host.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_config_check(tmp_path):
    ok = _qnode("config", "check", str(SIM))
    assert ok.returncode == 0 and ok.stdout.strip() == "ok"
    path = tmp_path / "broken.toml"
    path.write_text(_broken("oversampling = 8", "oversampling = 6"))
    bad = _qnode("config", "check", str(path))
    assert bad.returncode == 1
    assert f"{path}: fpga.oversampling" in bad.stderr


def test_every_config_key_is_documented():
    from qnode.host import config as schema

    doc = (ROOT / "docs" / "configuration.md").read_text()
    models = [schema.Node, schema.Fpga, schema.Channel, schema.Instrument, schema.Loop, schema.Recording,
              schema.SimLab, schema.SyncSource, schema.PairSource, schema.Heralding, schema.ReferenceLight,
              schema.DetectorModel, schema.Herald, schema.Coincidence]
    missing = [f"{m.__name__}.{key}" for m in models for key in m.model_fields
               if f"`{key}`" not in doc and f".{key}" not in doc]  # keys, or sub-tables [a.key]
    assert not missing, f"docs/configuration.md does not describe: {missing}"


def test_an_fpga_without_channels_is_refused_at_load(tmp_path):
    path = tmp_path / "no_channels.toml"
    path.write_text("[fpga]\nboard = 'sim'\nchannels = []\n")
    with pytest.raises(ConfigError, match=rf"^{path}: fpga.channels: List should have at least 1 item"):
        load_config(path)


def test_herald_and_coincidence_settings_in_bins_for_the_reference_lab():
    """sim.toml: single click on D+ / D- (3, 4) after sync 0, 49 us + 12 ns, 10 ns; A & B."""
    fpga = load_config(SIM).fpga
    assert fpga.herald.rule == "single_click"
    assert fpga.herald_channels() == {"sync_channel": 0, "detectors": [3, 4], "veto": []}
    assert (fpga.herald.offset_ps, fpga.herald.length_ps) == (49_012_000, 10_000)
    assert fpga.pin_clocks() == 1  # 8 ns of a 125 MHz clock
    assert fpga.coincidence_channels(0) == [1, 2] and not fpga.coincidence[0].emit
    real = load_config(ROOT / "lab_configs" / "example_lab.toml").fpga
    assert real.herald_channels()["detectors"] == [1, 2] and real.pin_clocks() == 4  # 20 ns at 200 MHz


def test_times_round_to_the_nearest_bin_ties_to_even():
    from qnode.host.config import to_bins

    assert [to_bins(v, 1000) for v in (1_400, 1_500, 2_500, 2_501, 49_012_400)] == [1, 2, 2, 3, 49_012]
    assert to_bins(10_000, 1250) == 8


def test_a_config_without_herald_or_coincidence_leaves_both_units_off():
    text = _broken('rule = "single_click"', 'rule = "off"')
    fpga = parse_config(text.replace("[[fpga.coincidence]]\nchannels = [\"spdc_a\", \"spdc_b\"]\nwindow_ps = 10_000\n"
                                     "emit = false\n", ""), "x.toml").fpga
    assert fpga.herald.rule == "off" and fpga.coincidence == []
    minimal = parse_config("[fpga]\n[[fpga.channels]]\nindex = 0\nname = 'a'\n").fpga
    assert minimal.herald.rule == "off" and minimal.coincidence == []
