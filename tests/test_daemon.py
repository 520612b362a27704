"""The daemon over real ZeroMQ sockets, on the simulated lab (real TCP FPGA link and instruments)."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import zmq

from qnode.firmware.events import EVENT_DTYPE, HERALD_ATTEMPT_BITS, Kind
from qnode.host.api import ApiError
from qnode.host.client import Client, Subscriber
from qnode.host.config import load_config
from qnode.host.daemon import Daemon, FileSource
from qnode.host.recorder import Recorder, clear_status_flags, recording_files
from qnode.sim.expected_rates import expected_heralds


@pytest.fixture(scope="module")
def daemon():
    # A short PUB queue so the slow-subscriber test overflows it within seconds.
    d = Daemon(load_config(), control_url="tcp://127.0.0.1:0", stream_url="tcp://127.0.0.1:0", pub_hwm=10).start()
    yield d
    d.close()


@pytest.fixture
def node(daemon):
    with Client(daemon.control_url, timeout_s=10) as c:
        yield c


def raw_request(daemon, frames):
    """Send arbitrary frames as a request; return the decoded reply header."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.control_url)
    try:
        sock.send_multipart(frames)
        assert sock.poll(10_000), "no reply"
        return json.loads(sock.recv_multipart()[0])
    finally:
        sock.close()


def test_status_names_the_source_instruments_and_rates(node):
    time.sleep(0.5)
    st = node.call("status")
    assert st["node"] == "sim-node-a" and st["simulated_lab"]
    assert st["source"]["identity"]["board"] == "sim"
    assert set(st["instruments"]) == {"cryostat", "laser", "snspd", "stretcher", "powermeter"}
    assert all(v == "ok" for v in st["instruments"].values())
    assert 0.8e6 < st["rates_hz"]["sync"] < 1.0e6  # 900 attempts a 1 ms cycle
    assert st["losses"]["link_words"] == 0 and st["losses"]["invalid_words"] == 0


@pytest.mark.parametrize(
    "frames, error_type",
    [
        ([b"{not json"], "BadRequest"),
        ([b"\xff\xfe"], "BadRequest"),
        ([b"[1, 2]"], "BadRequest"),
        ([json.dumps({"id": 1, "method": 5}).encode()], "BadRequest"),
        ([json.dumps({"id": 2, "method": "nope"}).encode()], "UnknownMethod"),
        ([json.dumps({"id": 3, "method": "measure.g2", "params": []}).encode()], "BadParams"),
        ([json.dumps({"id": 4, "method": "measure.g2", "params": {"channel_a": "one", "channel_b": 2}}).encode()],
         "BadParams"),
        ([json.dumps({"id": 5, "method": "measure.g2", "params": {"channel_a": 1}}).encode()], "BadParams"),
        ([json.dumps({"id": 6, "method": "measure.g2",
                      "params": {"channel_a": 1, "channel_b": 2, "bin_ps": 0}}).encode()], "BadParams"),
        ([json.dumps({"id": 7, "method": "registers.read", "params": {"name": "no_such"}}).encode()], "KeyError"),
        ([json.dumps({"id": 8, "method": "measure.g2",  # 2e12 bins: would need 16 TB
                      "params": {"channel_a": 1, "channel_b": 2, "bin_ps": 1, "range_ps": 10**12}}).encode()],
         "BadParams"),
        ([json.dumps({"id": 9, "method": "measure.coincidences",
                      "params": {"patterns": [[[1, 2], 1000]] * 65}}).encode()], "BadParams"),
        ([json.dumps({"id": 10, "method": "measure.coincidences", "params": {"patterns": [[[1, 99], 1000]]}}).encode()],
         "BadParams"),
        ([json.dumps({"id": 11, "method": "record.start", "params": {"path": 5}}).encode()], "BadParams"),
        ([b"{}", b"extra"], "BadRequest"),
        ([b" " * (2 << 20)], "RequestTooLarge"),
    ],
)
def test_bad_requests_get_error_replies_and_the_daemon_stays_up(daemon, node, frames, error_type):
    reply = raw_request(daemon, frames)
    assert reply["error"]["type"] == error_type, reply
    assert reply["error"]["message"]
    assert node.call("ping")["pong"]


def test_live_measurements_are_bounded_and_reset_frees_them(node):
    node.call("measure.reset")
    try:
        for k in range(64):
            node.call("measure.g2", channel_a=1, channel_b=2, bin_ps=100, range_ps=100 * (k + 1))
        with pytest.raises(ApiError, match="TooManyMeasurements"):
            node.call("measure.g2", channel_a=1, channel_b=2, bin_ps=100, range_ps=100 * 65)
        node.call("measure.g2", channel_a=1, channel_b=2, bin_ps=100, range_ps=100)  # one it fills already
    finally:
        node.call("measure.reset")
    assert node.call("measure.g2", channel_a=1, channel_b=2, bin_ps=100, range_ps=100 * 65)["bin_ps"] == 100
    node.call("measure.reset")


def test_many_concurrent_clients_each_get_their_own_replies(daemon):
    errors, done = [], []

    def client(k):
        try:
            with Client(daemon.control_url, timeout_s=20) as c:
                for i in range(20):
                    assert c.call("registers.read", name="channel_count")["value"] == 8
                    assert c.call("ping")["pong"]
            done.append(k)
        except Exception as exc:  # reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(done) == 8


def test_config_and_instruments_through_the_api(daemon, node):
    assert node.call("config")["node"]["name"] == "sim-node-a"
    listed = node.call("instruments.list")
    assert listed["open"] == ["cryostat", "laser", "powermeter", "snspd", "stretcher"] and listed["unavailable"] == {}
    assert 2.0 < node.call("instruments.snapshot", name="cryostat")["temperature_a_k"] < 3.0
    with pytest.raises(ApiError, match="NotAvailable: instrument 'oven': not in this config"):
        node.call("instruments.snapshot", name="oven")
    with Subscriber(daemon.stream_url, topics=["instruments"]) as sub:
        msg = sub.receive(timeout_s=10)  # polled every 2 s
    assert msg is not None and msg[0] == "instruments"
    assert msg[1]["readings"]["laser"]["wavelength_nm"] > 0 and isinstance(msg[1]["seq"], int)


def test_registers_through_the_api(node):
    assert node.call("registers.write", name="scratch", value=1234)["value"] == 1234
    assert node.call("registers.read", name="scratch")["value"] == 1234
    with pytest.raises(ApiError, match="READ_ONLY"):
        node.call("registers.write", name="bin_ps", value=3)
    names = {r["name"] for r in node.call("registers.list")}
    assert {"protocol_version", "bin_ps", "scratch"} <= names


def test_slow_subscriber_sees_its_gaps_and_the_recorder_loses_nothing(daemon, node, tmp_path):
    path = tmp_path / "slow.h5"
    with Subscriber(daemon.stream_url, topics=["events"], hwm=2, rcvbuf_bytes=4096) as slow:
        time.sleep(0.3)  # subscription settles
        node.call("record.start", path=str(path))
        time.sleep(3.0)  # the subscriber does not read: its queue overflows
        got = 0
        while slow.receive(timeout_s=0.5) is not None and got < 10_000:
            got += 1
        rec = node.call("record.stop")
    assert slow.missed.get("events", 0) > 0
    # The recorder's queue is not the subscriber's: it dropped nothing. (lost_events may count
    # in-band losses the simulated FPGA reports when this shared machine starves the daemon.)
    assert rec["dropped_batches"] == 0 and rec["error"] is None
    with h5py.File(path, "r") as f:
        assert f["/photon_data/timestamps"].shape[0] == rec["tags"] > 500_000


def test_a_recording_holds_the_instrument_readings_and_the_loop_trace(daemon, node, tmp_path):
    path = tmp_path / "context.h5"
    assert node.call("loops.list")["phase_lock"]["implemented"]
    node.call("loops.start", name="phase_lock")
    try:
        node.call("record.start", path=str(path))
        time.sleep(2.5)  # at least one instrument poll (every 2 s) and many loop statuses (10 Hz)
        rec = node.call("record.stop")
    finally:
        node.call("loops.stop", name="phase_lock")
    assert rec["dropped_records"] == 0 and rec["dropped_batches"] == 0
    with h5py.File(path, "r") as f:
        readings = f["/qnode/instrument_readings"][:]
        trace = f["/qnode/loops/phase_lock"][:]
    got = {(r["instrument"].decode(), r["quantity"].decode()): (r["value"], r["unit"].decode()) for r in readings}
    value, unit = got[("cryostat", "temperature_a_k")]
    assert unit == "K" and 2.0 < value < 3.0  # the SNSPDs' 2.5 K stage
    assert got[("stretcher", "voltage_v")][1] == "V"
    assert ("snspd", "bias_ua[0]") in got and got[("laser", "emission_on")][0] in (0.0, 1.0)
    assert np.all(np.abs(readings["time_s"] - time.time()) < 60)  # unix time
    assert len(trace) >= 5 and np.all(np.diff(trace["time_s"]) > 0)
    assert {"phase_error_deg", "actuator_v", "cycles", "locked"} <= set(trace.dtype.names)
    assert trace["cycles"][-1] > trace["cycles"][0]


def test_event_stream_carries_numpy_batches_in_order(daemon):
    with Subscriber(daemon.stream_url, topics=["events", "rates"]) as sub:
        batches, rates = [], None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (len(batches) < 20 or rates is None):
            msg = sub.receive(timeout_s=1.0)
            if msg is None:
                continue
            topic, header, arrays = msg
            if topic == "events":
                assert header["count"] == len(arrays["events"])
                batches.append(arrays["events"])
            else:
                rates = header["rates_hz"]
    events = np.concatenate(batches)
    assert events.dtype == EVENT_DTYPE
    tags = events[events["kind"] == Kind.TAG]
    assert np.all(np.diff(tags["time_ps"]) >= 0)
    assert rates is not None and rates["sync"] > 0


def test_g2_and_coincidences_on_the_live_stream(node):
    node.call("measure.reset")
    node.call("measure.g2", channel_a=1, channel_b=2, bin_ps=1000, range_ps=50_000)
    node.call("measure.coincidences", patterns=[[[1, 2], 10_000]])
    time.sleep(1.5)
    g2 = node.call("measure.g2", channel_a=1, channel_b=2, bin_ps=1000, range_ps=50_000, window_ps=2000)
    assert g2["counts"].shape == (100,) and g2["pairs"] > 1000
    assert 4000 <= g2["peak_ps"] <= 5500  # the true delay difference, 4700 ps, in 1 ns bins
    assert g2["car"] > 50
    coinc = node.call("measure.coincidences", patterns=[[[1, 2], 10_000]])
    assert coinc["counts"][0] > 1000


def test_a_full_disk_stops_the_recording_with_a_clear_error_and_a_readable_file(daemon, node, tmp_path):
    """A real 3 MB filesystem: below the recorder's 64 MB margin at once, so the recording stops
    and closes its file properly; the daemon says why (status, log stream) and stays up."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        path = mnt / "full.h5"
        with Subscriber(daemon.stream_url, topics=["log"]) as sub:
            sub.receive(timeout_s=0.5)  # let the subscription reach the daemon
            node.call("record.start", path=str(path))
            deadline = time.monotonic() + 30
            while node.call("record.status").get("error") is None and time.monotonic() < deadline:
                time.sleep(0.1)
            error = node.call("record.status")["error"]
            assert "recording stopped: the disk is nearly full" in error and str(path) in error
            errors = []
            for _ in range(200):
                msg = sub.receive(timeout_s=10)
                assert msg is not None, "no ERROR line on the log stream"
                if msg[1]["level"] == "ERROR":
                    errors.append(msg[1]["message"])
                    break
            assert "the disk is nearly full" in errors[0]
        final = node.call("record.stop")
        assert final["error"] and final["path"] == str(path)
        with h5py.File(path, "r") as f:  # closed properly: any reader opens it
            assert f["/photon_data/timestamps"].shape[0] == final["flushed_tags"]
        assert node.call("ping")["pong"]
    finally:
        subprocess.run(["umount", str(mnt)])


def test_record_twice_is_refused_and_stop_without_start_too(node, tmp_path):
    node.call("record.start", path=str(tmp_path / "a.h5"))
    try:
        with pytest.raises(ApiError, match="AlreadyRecording"):
            node.call("record.start", path=str(tmp_path / "b.h5"))
    finally:
        node.call("record.stop")
    with pytest.raises(ApiError, match="NotRecording"):
        node.call("record.stop")


def test_replay_plays_a_recording_through_the_same_api(node, tmp_path):
    path = tmp_path / "to_replay.h5"
    node.call("record.start", path=str(path))
    time.sleep(1.0)
    rec = node.call("record.stop")
    with h5py.File(path, "r") as f:
        channels = f["/photon_data/detectors"][:]
        n_heralds = f["/qnode/heralds"].shape[0]
    counts, heralds, _ = _replayed(path)
    assert sum(counts.values()) == rec["tags"] == len(channels)
    assert counts["sync"] == np.count_nonzero(channels == 0)
    assert heralds["total"] == n_heralds  # (the rotated-recording test below has heralds to play)


def _replayed(path):
    """Play a recording through a daemon as fast as possible: the rates and heralds its API
    measured, and its source's status. A replay has no registers: asked, it says so."""
    with Daemon(load_config(), control_url="tcp://127.0.0.1:0", stream_url="tcp://127.0.0.1:0",
                replay=path, replay_speed=None) as replay, Client(replay.control_url) as c:
        deadline = time.monotonic() + 60  # a loop bound only
        while not replay.source.finished and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(ApiError, match="NotAvailable"):
            c.call("registers.read", name="bin_ps")
        return c.call("measure.rates")["counts"], c.call("measure.heralds"), c.call("status")["source"]


def test_replay_plays_every_file_of_a_rotated_recording(tmp_path):
    rng = np.random.default_rng(7)
    events = np.zeros(600_000, EVENT_DTYPE)
    events["time_ps"] = np.cumsum(rng.exponential(1e6, len(events))).astype(np.int64) // 1000 * 1000
    events["channel"] = rng.integers(0, 8, len(events))
    events["kind"] = np.where(rng.random(len(events)) < 0.01, Kind.HERALD, Kind.TAG)
    events["aux"][events["kind"] == Kind.HERALD] = 1 << HERALD_ATTEMPT_BITS  # outcome 1
    first = tmp_path / "rotated.h5"
    with Recorder(first, channel_names={i: f"ch{i}" for i in range(8)}, rotate_mb=0.3) as rec:
        for batch in np.array_split(events, 3):
            rec.append(batch)
    assert len(recording_files(first)) == 3
    counts, heralds, source = _replayed(first)
    is_tag = events["kind"] == Kind.TAG
    assert sum(counts.values()) == source["tags_played"] == source["tags_total"] == np.count_nonzero(is_tag)
    assert heralds["total"] == heralds["by_outcome"][1] == np.count_nonzero(~is_tag)
    assert source["files"] == [str(p) for p in recording_files(first)]


@pytest.mark.parametrize("speed", [1.0, 4.0])
def test_replay_keeps_the_recorded_pace(tmp_path, speed):
    """At ``speed`` x real time each batch is handed over when its last event is due: on a
    clock that only the replay's own sleeps move, the whole file takes span / speed."""
    rng = np.random.default_rng(11)
    events = np.zeros(20_000, EVENT_DTYPE)
    events["time_ps"] = np.cumsum(rng.exponential(1e8, len(events))).astype(np.int64)  # 10 kHz: 2 s
    events["channel"], events["kind"] = 1, Kind.TAG
    path = tmp_path / "paced.h5"
    with Recorder(path, channel_names={1: "a"}) as rec:
        rec.append(events)
    now = [100.0]
    source = FileSource(path, speed=speed, chunk_tags=1000, clock=lambda: now[0],
                        sleep=lambda s: now.__setitem__(0, now[0] + s))
    handed = []
    while not source.finished:
        batch = source.read(0.05)
        if len(batch):
            handed.append((now[0], int(batch["time_ps"][-1])))
    source.close()
    span_s = (events["time_ps"][-1] - events["time_ps"][0]) * 1e-12
    wall = np.array([w for w, _ in handed]) - 100.0
    due = (np.array([t for _, t in handed]) - events["time_ps"][0]) * 1e-12 / speed
    np.testing.assert_allclose(wall, due, atol=1e-9)  # never early, never later than due
    assert wall[-1] == pytest.approx(span_s / speed) and len(handed) == 20


def test_replay_of_a_file_that_is_not_a_recording_says_so(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.arange(3)
    with pytest.raises(ValueError, match="other.h5 is not a qnode recording"):
        Daemon(load_config(), control_url="tcp://127.0.0.1:0", stream_url="tcp://127.0.0.1:0",
               replay=path).start()


def test_daemon_killed_while_recording_leaves_a_readable_file(tmp_path):
    control, stream = "tcp://127.0.0.1:25755", "tcp://127.0.0.1:25756"
    config = Path(__file__).resolve().parents[1] / "lab_configs" / "sim.toml"
    proc = subprocess.Popen([sys.executable, "-m", "qnode.host.cli", "daemon", "--config", str(config),
                             "--control", control, "--stream", stream],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "control tcp://127.0.0.1:25755" in proc.stdout.readline()
        path = tmp_path / "killed.h5"
        with Client(control, timeout_s=20) as c:
            c.call("record.start", path=str(path))
            time.sleep(2.5)
            flushed = c.call("record.status")["flushed_tags"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert flushed > 0
    with h5py.File(path, "r", swmr=True) as f:
        t = f["/photon_data/timestamps"][:]
    assert len(t) >= flushed  # at most the last flush interval is lost
    assert np.all(np.diff(t) >= 0)
    # Non-SWMR readers need the writer's "open" flag cleared first (h5clear -s does the same).
    assert clear_status_flags(path)
    with h5py.File(path, "r") as f:
        assert f["/photon_data/timestamps"].shape[0] == len(t)
    if _has("h5dump"):  # where hdf5-tools is installed, the C tools read it too
        h5dump = subprocess.run(["h5dump", "-H", str(path)], capture_output=True, text=True)
        assert h5dump.returncode == 0, h5dump.stderr


def _has(tool):
    from shutil import which

    return which(tool) is not None


# --- the command line against the running daemon ------------------------------------------------


def qnode(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "qnode.host.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def test_qnode_status_record_and_watch(daemon, tmp_path):
    out = qnode("status", "--control", daemon.control_url)
    assert out.returncode == 0, out.stderr
    assert "sim-node-a" in out.stdout and "sync" in out.stdout and "recording: off" in out.stdout
    st = json.loads(qnode("status", "--json", "--control", daemon.control_url).stdout)
    assert st["node"] == "sim-node-a" and st["rates_hz"]["sync"] > 0

    path = tmp_path / "cli.h5"
    out = qnode("record", "start", "--control", daemon.control_url, "--path", str(path))
    assert out.returncode == 0 and f"recording to {path}" in out.stdout, out.stderr
    again = qnode("record", "start", "--control", daemon.control_url)
    assert again.returncode == 1 and "AlreadyRecording" in again.stderr
    time.sleep(0.5)
    out = qnode("record", "stop", "--control", daemon.control_url)
    assert out.returncode == 0 and f"stopped {path}:" in out.stdout, out.stderr
    with h5py.File(path, "r") as f:
        tags = f["/photon_data/timestamps"].shape[0]
    assert tags > 0 and f"{tags:,} tags" in out.stdout
    out = qnode("record", "stop", "--control", daemon.control_url)
    assert out.returncode == 1 and "NotRecording: no recording is running" in out.stderr

    out = qnode("watch", "rates", "--stream", daemon.stream_url, "--count", "2")
    assert out.returncode == 0, out.stderr
    assert "sync" in out.stdout and "missed updates" in out.stdout


def test_qnode_status_without_a_daemon_says_so():
    with socket.socket() as s:  # a port nobody serves
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = qnode("status", "--control", f"tcp://127.0.0.1:{port}")
    assert out.returncode == 1
    assert f"no reply to 'status' from the daemon at tcp://127.0.0.1:{port}" in out.stderr
    assert "is `qnode daemon` running?" in out.stderr


def test_qnode_replay_plays_a_file_and_ends(daemon, node, tmp_path):
    path = tmp_path / "for-cli.h5"
    node.call("record.start", path=str(path))
    time.sleep(1.0)
    rec = node.call("record.stop")
    out = qnode("replay", str(path), "--max", "--control", "tcp://127.0.0.1:0", "--stream", "tcp://127.0.0.1:0")
    assert out.returncode == 0, out.stderr
    assert f"replaying {path}: control tcp://127.0.0.1:" in out.stdout
    assert f"replayed {rec['tags']:,} tags over" in out.stdout

    other = tmp_path / "not-a-recording.h5"
    with h5py.File(other, "w") as f:
        f["x"] = [1]
    out = qnode("replay", str(other), "--max", "--control", "tcp://127.0.0.1:0", "--stream", "tcp://127.0.0.1:0")
    assert out.returncode == 2 and "is not a qnode recording" in out.stderr


def test_the_daemon_writes_the_configs_fpga_settings_to_the_time_tagger(daemon, node):
    """The simulated FPGA starts at the registers' reset values, like the gateware: what it
    holds now, the daemon wrote from the config (channels, herald rule, coincidence patterns)."""
    applied = node.call("status")["source"]["applied"]
    assert applied["herald"] == {"rule": "single_click", "sync_channel": 0, "detectors": [3, 4], "veto": [],
                                 "offset_ps": 49_012_000, "length_ps": 10_000, "late_ps": 0, "pin_clocks": 1}
    assert applied["coincidence"] == [{"channels": [1, 2], "window_ps": 10_000, "min_fold": 0, "emit": False}]
    assert applied["channels"]["3"] == {"delay_ps": 0, "dead_time_ps": 8000, "edge": "rising", "enabled": True}

    def reg(name, index=0):
        return node.call("registers.read", name=name, index=index)["value"]

    assert [reg("ts_dead_time_bins", c) for c in range(8)] == [8] * 8  # 8000 ps in 1000 ps bins
    assert (reg("herald_rule"), reg("herald_detector_mask"), reg("herald_offset_bins"), reg("herald_length_bins")) \
        == (1, 0b11000, 49_012, 10)
    assert (reg("coinc_mask", 0), reg("coinc_window_bins", 0), reg("coinc_emit"), reg("coinc_mask", 1)) \
        == (0b110, 10, 0, 0)


def within_poisson(observed: int, expected: float, sigmas: float = 4.0) -> None:
    assert abs(observed - expected) <= sigmas * np.sqrt(expected), (observed, expected)


def test_heralds_reach_the_heralds_topic_at_the_labs_rate_and_the_recording(tmp_path):
    """Single-click heralds of the reference lab on the `heralds` PUB topic, at the rate its
    physics gives (sim/expected_rates.py: 2 alpha eta per attempt; the lab makes no attempt whose
    window would fall in a reference burst), and the same heralds in the recording.
    Its own daemon: the shared one's 10-message PUB queue is for the slow-subscriber test; the
    lab runs at half speed so that a busy machine keeps up (rates are per lab second)."""
    with Daemon(load_config(), control_url="tcp://127.0.0.1:0", stream_url="tcp://127.0.0.1:0",
                sim_speed=0.5) as daemon, Client(daemon.control_url, timeout_s=10) as node:
        _heralds_on_topic_and_file(daemon, node, tmp_path)


def _heralds_on_topic_and_file(daemon, node, tmp_path):
    expected = expected_heralds(daemon.config)
    assert 700 < expected.rate_hz < 850 and 8.4e-4 < expected.per_attempt < 8.7e-4
    path = tmp_path / "heralds.h5"
    batches = []
    with Subscriber(daemon.stream_url, topics=["heralds"]) as sub:
        time.sleep(0.3)  # subscription settles
        node.call("record.start", path=str(path))
        lab_s = 0.0
        until = time.monotonic() + 120.0  # a loop bound only: listen for 3 s of lab time
        while lab_s < 3.0 and time.monotonic() < until:
            msg = sub.receive(timeout_s=0.5)
            if msg is not None:
                topic, header, arrays = msg
                assert topic == "heralds" and header["count"] == len(arrays["heralds"])
                batches.append(arrays["heralds"])
                lab_s = (batches[-1]["time_ps"].max() - batches[0]["time_ps"].min()) * 1e-12
        rec = node.call("record.stop")
        with h5py.File(path, "r") as f:
            recorded = f["/qnode/heralds"][:]
            attempts = int(np.count_nonzero(f["/photon_data/detectors"][:] == 0))  # sync tags: one attempt each
        last_ps = int(recorded["time_ps"].max()) if len(recorded) else 0
        until = time.monotonic() + 30.0  # the recording's last heralds, still on their way
        while time.monotonic() < until and max((int(b["time_ps"].max()) for b in batches), default=0) <= last_ps:
            msg = sub.receive(timeout_s=0.5)
            if msg is not None:
                batches.append(msg[2]["heralds"])
    assert sub.missed.get("heralds", 0) == 0
    heralds = np.concatenate(batches)
    assert heralds.dtype == EVENT_DTYPE and np.all(heralds["kind"] == Kind.HERALD)
    assert set(heralds["channel"].tolist()) == {3, 4}
    assert set((heralds["aux"] >> HERALD_ATTEMPT_BITS).tolist()) == {1, 2}  # psi+ on D+, psi- on D-
    span_s = (heralds["time_ps"].max() - heralds["time_ps"].min()) * 1e-12
    assert span_s > 2.9
    within_poisson(len(heralds) - 1, expected.rate_hz * span_s)

    assert rec["error"] is None and rec["dropped_batches"] == 0
    assert attempts > 1_000_000
    within_poisson(len(recorded), expected.per_attempt * attempts)
    published = set(zip(heralds["time_ps"].tolist(), heralds["channel"].tolist()))
    assert set(zip(recorded["time_ps"].tolist(), recorded["channel"].tolist())) <= published
    attempt_mod = (1 << HERALD_ATTEMPT_BITS) - 1
    assert np.array_equal(recorded["attempt"], (heralds["aux"] & attempt_mod)[np.isin(heralds["time_ps"],
                                                                                       recorded["time_ps"])])
