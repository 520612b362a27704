"""The HDF5 recorder: layout, compression, SWMR reading, crash and disk-full behaviour, rotation,
and the queue in front of it. Real HDF5 files and real processes throughout."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from qnode.firmware.events import EVENT_DTYPE, Kind, LossReason
from qnode.host import recorder as recmod
from qnode.host.recorder import (
    LOSS_ORIGIN_RECORDER,
    LOSS_ORIGIN_STREAM,
    Recorder,
    RecorderThread,
    RecordingError,
    clear_status_flags,
    recording_files,
    sequence_path,
)

NAMES = {i: f"ch{i}" for i in range(8)}
BIN_PS = 1000


def poisson_tags(n: int, rate_hz: float, seed: int = 0, t0_ps: int = 0) -> np.ndarray:
    """n detector tags of a Poisson stream of rate_hz spread over 8 channels, on 1 ns bins."""
    rng = np.random.default_rng(seed)
    ev = np.zeros(n, EVENT_DTYPE)
    ev["time_ps"] = t0_ps + np.cumsum(rng.exponential(1e12 / rate_hz, n)).astype(np.int64) // BIN_PS * BIN_PS
    ev["channel"] = rng.integers(0, 8, n)
    ev["kind"] = Kind.TAG
    return ev


def read_tags(path, swmr=False):
    with h5py.File(path, "r", swmr=swmr) as f:
        return f["photon_data/timestamps"][:], f["photon_data/detectors"][:]


# --- layout ---------------------------------------------------------------------------------


def test_layout_photon_hdf5_and_qnode_tables(tmp_path):
    tags = poisson_tags(300_000, 5e6)  # more than two chunks: full chunks and an edge chunk
    others = np.zeros(4, EVENT_DTYPE)
    others["time_ps"] = tags["time_ps"][[10, 20, 30, 40]] + 1
    others["kind"] = [Kind.SYNC, Kind.HERALD, Kind.COINCIDENCE, Kind.LOSS]
    others["channel"] = [0, 3, 2, 5]
    others["aux"] = [17, (1 << 18) | 17, 0b110, (LossReason.CHANNEL_FIFO << 18) | 12]
    events = np.concatenate([tags, others])
    events = events[np.argsort(events["time_ps"], kind="stable")]
    path = tmp_path / "run.h5"
    manifest = {"gateware_hash": "abc123", "protocol_version": 1, "board": "ulx3s"}
    with Recorder(path, channel_names=NAMES, config_text="[node]\nname = 'a'\n", manifest=manifest,
                  loops={"phase_lock": ["phase_rad", "piezo_v"]}) as rec:
        for batch in np.array_split(events, 7):
            rec.append(batch)
            rec.flush()  # every flush rewrites the edge chunk: the data must survive that
        rec.append_instrument_readings(1.7e9, "lakeshore336", "temperature_A", 2.51, "K")
        rec.append_instrument_readings([1.7e9, 1.7e9 + 1], "sq_eos", ["bias_ch3", "bias_ch4"], [9.1, 9.2], "uA")
        rec.append_loop_trace("phase_lock", [0.001, 0.002], phase_rad=[0.1, 0.2], piezo_v=[40.0, 41.0])
        st = rec.status()
    assert st.tags == len(tags) and st.lost_events == 12 and st.files == [str(path)]

    with h5py.File(path, "r") as f:
        assert f["photon_data/timestamps_specs/timestamps_unit"][()] == 1e-12
        ts = f["photon_data/timestamps"]
        assert ts.dtype == np.int64 and (ts.compression, ts.shuffle) == ("gzip", True)  # built-in filters
        np.testing.assert_array_equal(ts[:], tags["time_ps"])
        np.testing.assert_array_equal(f["photon_data/detectors"][:], tags["channel"])
        assert f["setup/num_pixels"][()] == 8
        assert [s.decode() for s in f["setup/detectors_names"][:]][:2] == ["0:ch0", "1:ch1"]
        assert f["identity/format_name"][()] == b"Photon-HDF5"
        assert f["provenance/hostname"][()]
        assert f["acquisition_duration"][()] == pytest.approx((tags["time_ps"][-1] - tags["time_ps"][0]) * 1e-12, rel=1e-3)
        q = f["qnode"]
        assert q["sync"][:].tolist() == [(others["time_ps"][0], 0, 17)]
        assert q["heralds"][:].tolist() == [(others["time_ps"][1], 3, 1, 17)]
        assert q["coincidences"][:].tolist() == [(others["time_ps"][2], 2, 0b110)]
        assert q["loss"][:].tolist() == [(others["time_ps"][3], 5, LossReason.CHANNEL_FIFO, 12, LOSS_ORIGIN_STREAM)]
        r = q["instrument_readings"][:]
        assert r["instrument"].tolist() == [b"lakeshore336", b"sq_eos", b"sq_eos"]
        assert r["quantity"].tolist() == [b"temperature_A", b"bias_ch3", b"bias_ch4"]
        assert r["value"].tolist() == [2.51, 9.1, 9.2] and r["unit"].tolist() == [b"K", b"uA", b"uA"]
        loop = q["loops/phase_lock"][:]
        assert loop.dtype.names == ("time_s", "phase_rad", "piezo_v")
        assert loop["piezo_v"].tolist() == [40.0, 41.0]
        assert q["config"][()].decode() == "[node]\nname = 'a'\n"
        assert json.loads(q["gateware_manifest"][()]) == manifest
        assert q["recording/sequence"][()] == 0


def test_recorded_events_give_back_the_non_tag_stream(tmp_path):
    """What a replay and the file measurements read: every non-tag event as it was appended, and
    the recorder's own loss rows (counts beyond a LOSS event's 18 bits) as LOSS events that add up."""
    tags = poisson_tags(50_000, 5e6)
    rng = np.random.default_rng(3)
    others = np.zeros(400, EVENT_DTYPE)
    others["time_ps"] = np.sort(rng.choice(tags["time_ps"], 400)) + 1
    others["kind"] = rng.choice([Kind.SYNC, Kind.HERALD, Kind.COINCIDENCE, Kind.LOSS], 400)
    others["channel"] = rng.integers(0, 8, 400)
    aux = rng.integers(0, 1 << 18, 400).astype(np.uint32)
    outcome = rng.integers(0, 16, 400).astype(np.uint32)
    others["aux"] = np.select([others["kind"] == Kind.HERALD, others["kind"] == Kind.LOSS],
                              [(outcome << 18) | aux, (np.uint32(LossReason.CHANNEL_FIFO) << 18) | aux], aux)
    events = np.concatenate([tags, others])
    events = events[np.argsort(events["time_ps"], kind="stable")]
    path = tmp_path / "run.h5"
    big = np.zeros(1, recmod.LOSS_DTYPE)
    big[0] = (events["time_ps"][-1] + 5, 6, LossReason.OUTPUT, 3 * recmod.LOSS_COUNT_MAX + 7, LOSS_ORIGIN_RECORDER)
    with Recorder(path, channel_names=NAMES) as rec:
        for batch in np.array_split(events, 5):
            rec.append(batch)
        rec.record_loss(big)

    with h5py.File(path, "r") as f:
        got = recmod.recorded_events(f)
    assert got.dtype == EVENT_DTYPE and np.all(np.diff(got["time_ps"]) >= 0)
    def ordered(ev):  # equal times come back grouped by kind: compare as sets of events at each time
        return ev[np.lexsort((ev["aux"], ev["channel"], ev["kind"], ev["time_ps"]))]

    np.testing.assert_array_equal(ordered(got[:len(others)]), ordered(others))
    split = got[len(others):]
    assert split["kind"].tolist() == [Kind.LOSS] * 4 and set(split["channel"]) == {6}
    assert set(split["aux"] >> 18) == {LossReason.OUTPUT}
    assert int((split["aux"] & recmod.LOSS_COUNT_MAX).sum()) == 3 * recmod.LOSS_COUNT_MAX + 7
    empty = tmp_path / "empty.h5"
    Recorder(empty, channel_names=NAMES).close()
    with h5py.File(empty, "r") as f:
        assert recmod.recorded_events(f).shape == (0,)


def test_late_loop_and_manifest_continue_in_the_next_file(tmp_path):
    """An SWMR file cannot get new datasets, so a new loop or manifest starts the next file."""
    path = tmp_path / "run.h5"
    a, b, c = (poisson_tags(1000, 1e6, seed=s, t0_ps=s * 10**12) for s in range(3))
    with Recorder(path, channel_names=NAMES) as rec:
        rec.set_manifest({"board": "sim"})  # before any data: the first file gets it
        rec.append(a)
        rec.append_loop_trace("temperature_watch", 1.0, kelvin=2.5)
        rec.append(b)
        rec.set_manifest({"board": "ulx3s"})
        rec.append(c)
    files = recording_files(path)
    assert files == [path, sequence_path(path, 1), sequence_path(path, 2)]
    with h5py.File(files[0]) as f0, h5py.File(files[1]) as f1, h5py.File(files[2]) as f2:
        assert json.loads(f0["qnode/gateware_manifest"][()]) == {"board": "sim"}
        assert "temperature_watch" not in f0["qnode/loops"]
        assert f1["qnode/loops/temperature_watch"]["kelvin"].tolist() == [2.5]
        assert json.loads(f2["qnode/gateware_manifest"][()]) == {"board": "ulx3s"}
        assert "temperature_watch" in f2["qnode/loops"]
        got = np.concatenate([f["photon_data/timestamps"][:] for f in (f0, f1, f2)])
    np.testing.assert_array_equal(got, np.concatenate([a, b, c])["time_ps"])


def test_reading_names_that_do_not_fit_are_refused(tmp_path):
    with Recorder(tmp_path / "r.h5", channel_names=NAMES) as rec:
        with pytest.raises(ValueError, match="instrument"):
            rec.append_instrument_readings(0.0, "x" * 40, "t", 1.0, "K")


@pytest.mark.parametrize("compression", ["lzf", "none"])
def test_other_compressions_round_trip(tmp_path, compression):
    tags = poisson_tags(200_000, 1e6)
    with Recorder(tmp_path / "r.h5", channel_names=NAMES, compression=compression) as rec:
        for batch in np.array_split(tags, 3):
            rec.append(batch)
    t, ch = read_tags(tmp_path / "r.h5")
    np.testing.assert_array_equal(t, tags["time_ps"])
    np.testing.assert_array_equal(ch, tags["channel"])


# --- compression ----------------------------------------------------------------------------


@pytest.mark.parametrize("rate_hz", [1e6, 10e6])
def test_poisson_tags_take_at_most_4_bytes_each(tmp_path, rate_hz):
    """The file as a whole (timestamps, detectors, metadata) over the tags in it."""
    tags = poisson_tags(1_500_000, rate_hz, seed=3)
    path = tmp_path / "r.h5"
    with Recorder(path, channel_names=NAMES) as rec:
        for batch in np.array_split(tags, 15):
            rec.append(batch)
    assert path.stat().st_size / len(tags) <= 4.0
    t, _ = read_tags(path)
    np.testing.assert_array_equal(t, tags["time_ps"])


# --- rotation -------------------------------------------------------------------------------


def test_rotation_by_size_names_files_in_sequence(tmp_path):
    tags = poisson_tags(1_000_000, 1e6)
    path = tmp_path / "node-20261123-120000.h5"
    with Recorder(path, channel_names=NAMES, rotate_mb=0.8, config_text="cfg") as rec:
        for batch in np.array_split(tags, 20):
            rec.append(batch)
    st = rec.status()
    files = recording_files(path)
    assert len(files) >= 3 and [str(p) for p in files] == st.files
    assert files == sorted(tmp_path.glob("node-20261123-120000*.h5"))  # name order is sequence order
    assert files[1].name == "node-20261123-120000_0001.h5"
    parts = []
    for i, p in enumerate(files):
        with h5py.File(p) as f:
            assert f["qnode/recording/sequence"][()] == i
            assert f["qnode/recording/previous_file"][()].decode() == (files[i - 1].name if i else "")
            assert f["qnode/config"][()] == b"cfg"
            parts.append(f["photon_data/timestamps"][:])
    for p in files[:-1]:
        assert p.stat().st_size < 0.8e6 + 600_000  # rotated after the batch that crossed the limit
    np.testing.assert_array_equal(np.concatenate(parts), tags["time_ps"])
    assert st.bytes == sum(p.stat().st_size for p in files)


def test_rotation_by_time(tmp_path):
    path = tmp_path / "r.h5"
    batches = [poisson_tags(1000, 1e6, seed=s, t0_ps=s * 10**12) for s in range(4)]
    with Recorder(path, channel_names=NAMES, rotate_s=1e-9) as rec:  # every file is already due
        for b in batches:
            rec.append(b)
    files = recording_files(path)
    assert len(files) == 4  # one per batch, none empty
    for p, b in zip(files, batches):
        np.testing.assert_array_equal(read_tags(p)[0], b["time_ps"])


# --- SWMR and crashes (real processes) ------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_recorder import poisson_tags, NAMES
    from qnode.host.recorder import Recorder, RecorderThread
    path, mode = sys.argv[1], sys.argv[2]
    tags = poisson_tags(700_000, 2e6, seed=7)
    if mode == "steps":  # flush after each batch, say how much is durable, wait for the reader
        rec = Recorder(path, channel_names=NAMES, flush_s=3600)
        for start, end in ((0, 100_000), (100_000, 250_000), (250_000, 400_000)):
            rec.append(tags[start:end])
            rec.flush()
            print(rec.status().flushed_tags, flush=True)
            sys.stdin.readline()
        rec.close()
    else:  # the thread flushes on its own timer; then more data arrive; then SIGKILL
        rec = RecorderThread(path, channel_names=NAMES, flush_s=0.2)
        rec.put(tags[:300_000])
        deadline = time.monotonic() + 60  # never hang the test: a writer that gives up fails it
        while rec.status().flushed_tags < 300_000:  # no flush() call: the timer does it
            if time.monotonic() > deadline:
                sys.exit("the recorder thread never flushed on its timer")
            time.sleep(0.05)
        print(rec.status().flushed_tags, flush=True)
        rec.put(tags[300_000:])  # may or may not be flushed when the kill comes
        time.sleep(3600)
""")


def start_writer(tmp_path, mode):
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(Path(__file__).parent)))
    path = tmp_path / "live.h5"
    proc = subprocess.Popen([sys.executable, str(script), str(path), mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    return proc, path


def test_a_reader_in_another_process_sees_the_file_grow(tmp_path):
    proc, path = start_writer(tmp_path, "steps")
    expected = poisson_tags(700_000, 2e6, seed=7)["time_ps"]
    try:
        n1 = int(proc.stdout.readline())
        with h5py.File(path, "r", swmr=True) as f:  # opened while the writer holds the file
            ds = f["photon_data/timestamps"]
            seen = [ds.shape[0]]
            np.testing.assert_array_equal(ds[:], expected[:n1])
            for _ in range(2):
                proc.stdin.write("\n")
                proc.stdin.flush()
                n = int(proc.stdout.readline())
                ds.refresh()
                seen.append(ds.shape[0])
                assert seen[-1] == n
                np.testing.assert_array_equal(ds[:], expected[:n])  # edge chunks rewritten in place
        assert seen == [100_000, 250_000, 400_000]
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()


def test_sigkill_loses_at_most_what_was_not_flushed(tmp_path):
    """Read with h5py (swmr=True: the writer never closed the file, so its superblock still says
    it is open for writing). h5dump is checked too where it is installed (apt hdf5-tools); it
    needs `h5clear -s` first. Without h5dump the h5py part still runs, so CI without it passes."""
    proc, path = start_writer(tmp_path, "timer")
    expected = poisson_tags(700_000, 2e6, seed=7)["time_ps"]
    try:
        flushed = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    t, ch = read_tags(path, swmr=True)
    assert flushed == 300_000 and len(t) >= flushed
    np.testing.assert_array_equal(t, expected[:len(t)])
    assert len(ch) == len(t)

    # Without hdf5-tools: clear_status_flags does what h5clear -s does, then any reader opens it
    cleared = tmp_path / "cleared.h5"
    shutil.copy(path, cleared)
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(cleared, "r")
    assert clear_status_flags(cleared)
    np.testing.assert_array_equal(read_tags(cleared)[0], t)

    if shutil.which("h5dump") and shutil.which("h5clear"):
        copy = tmp_path / "copy.h5"
        shutil.copy(path, copy)
        subprocess.run(["h5clear", "-s", str(copy)], check=True)
        out = subprocess.run(["h5dump", "-d", "/photon_data/timestamps", "-s", str(flushed - 2), "-c", "2",
                              str(copy)], check=True, capture_output=True, text=True).stdout
        data = out.split("DATA {")[1].split("}")[0]
        values = [int(v) for v in data.replace("\n", " ").split(":")[-1].replace(",", " ").split()]
        assert values == expected[flushed - 2:flushed].tolist()


# --- disk full ------------------------------------------------------------------------------


_KEEP_OPEN = []  # h5py's file-object driver must outlive HDF5's handle (closed at exit if a close failed)


class DiskWithQuota(io.FileIO):
    """A real file on a simulated disk of ``budget`` bytes that it shares with the recorder's
    reserve file: writes past that fail with ENOSPC, as a full disk's do.

    Used when no small filesystem can be mounted (CI without root): HDF5 writes through
    h5py's file-object driver, so the failure reaches HDF5 exactly where a full disk's would.
    What is simulated is only the disk's size."""

    def __init__(self, path, budget):
        super().__init__(path, "w+")
        self.budget = budget
        _KEEP_OPEN.append(self)

    def write(self, b):
        # The disk is shared with the recorder's reserve file beside the recording.
        reserve = Path(self.name).with_name(f".{Path(self.name).name}.reserve")
        used = reserve.stat().st_size if reserve.exists() else 0
        if self.tell() + len(b) > self.budget - used:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(b)


def record_until_stopped(path, **kwargs):
    tags = poisson_tags(1_000_000, 1e6, seed=5)
    rec = Recorder(path, channel_names=NAMES, **kwargs)
    with pytest.raises(RecordingError) as info:
        for batch in np.array_split(tags, 100):
            rec.append(batch)
            rec.flush()
    flushed = rec.status().flushed_tags
    with pytest.raises(RecordingError):  # stays stopped
        rec.append(tags[:10])
    rec.close()
    return info.value, flushed, tags["time_ps"]


def check_stopped_file(err, flushed, expected, path, swmr):
    assert str(path) in str(err) and "bytes written" in str(err) and err.path == path
    assert err.bytes_written == path.stat().st_size > 0
    t, ch = read_tags(path, swmr=swmr)
    assert len(t) == len(ch) >= flushed > 0
    np.testing.assert_array_equal(t, expected[:len(t)])


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 3 MB tmpfs: a real full disk. Needs root (mount); skipped without it."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root; test_disk_full_simulated covers ENOSPC")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)])


def test_disk_full_on_a_real_small_filesystem(small_tmpfs):
    path = small_tmpfs / "r.h5"
    err, flushed, expected = record_until_stopped(path, min_free_mb=0)  # no margin: real ENOSPC
    assert "disk is full" in str(err)
    check_stopped_file(err, flushed, expected, path, swmr=False)  # any reader opens it


def test_low_disk_space_stops_early_with_a_complete_file(small_tmpfs):
    path = small_tmpfs / "r.h5"
    err, flushed, expected = record_until_stopped(path, min_free_mb=1.0)
    assert "nearly full" in str(err)
    check_stopped_file(err, flushed, expected, path, swmr=False)  # closed properly: any reader opens it
    assert len(read_tags(path)[0]) == flushed


def test_disk_full_simulated(tmp_path, monkeypatch):
    """ENOSPC from a file object (see DiskWithQuota): runs everywhere, root or not."""
    monkeypatch.setattr(recmod, "_open_h5", lambda p: h5py.File(DiskWithQuota(p, 1_500_000), "w", libver=recmod.LIBVER))
    path = tmp_path / "r.h5"
    err, flushed, expected = record_until_stopped(path, min_free_mb=0)
    assert "disk is full" in str(err)
    check_stopped_file(err, flushed, expected, path, swmr=False)  # any reader opens it


# --- the queue in front of the recorder -----------------------------------------------------


def test_queue_overflow_becomes_loss_records(tmp_path):
    path = tmp_path / "r.h5"
    rt = RecorderThread(path, channel_names=NAMES, queue_batches=2)
    gate = threading.Event()
    real_append = rt.recorder.append

    def slow_disk(events):  # the writer thread stalls, as on a slow disk
        gate.wait(timeout=60)
        real_append(events)

    rt.recorder.append = slow_disk
    batches = [poisson_tags(5000, 1e6, seed=s, t0_ps=s * 10**12) for s in range(8)]
    batches[5][100] = (batches[5][100]["time_ps"], 4, Kind.LOSS, (LossReason.CHANNEL_FIFO << 18) | 9)
    accepted = [rt.put(b) for b in batches]
    assert accepted.count(False) >= 8 - 3  # one in the writer's hands, two queued
    st = rt.status()
    assert st.dropped_batches == accepted.count(False)
    dropped = [b for b, ok in zip(batches, accepted) if not ok]
    gate.set()
    st = rt.close()

    kept = np.concatenate([b for b, ok in zip(batches, accepted) if ok])
    kept_tags = kept[kept["kind"] == Kind.TAG]
    np.testing.assert_array_equal(read_tags(path)[0], kept_tags["time_ps"])
    with h5py.File(path) as f:
        loss = f["qnode/loss"][:]
    mine = loss[loss["origin"] == LOSS_ORIGIN_RECORDER]
    assert set(mine["reason"]) == {LossReason.OUTPUT}
    dropped_tags = np.concatenate([b[b["kind"] == Kind.TAG] for b in dropped])
    per_channel = np.bincount(dropped_tags["channel"], minlength=8)
    got = np.zeros(8, int)
    np.add.at(got, mine["channel"], mine["count"])
    np.testing.assert_array_equal(got, per_channel)  # every dropped tag counted, on its channel
    # the gateware's own loss record survives the drop of the batch that carried it
    assert (loss[loss["origin"] == LOSS_ORIGIN_STREAM]["count"] == 9).sum() == 1
    assert st.lost_events == len(dropped_tags) + 9
    assert st.tags == len(kept_tags) and st.dropped_batches == len(dropped)


def test_recorder_thread_reports_a_stopped_recording(small_tmpfs):
    """On the real small filesystem (h5py's file-object driver, used from the recorder's
    thread, crashed the interpreter at garbage collection now and then; the disk-full
    behaviour itself is the synchronous Recorder's, tested with DiskWithQuota everywhere)."""
    path = small_tmpfs / "r.h5"
    rt = RecorderThread(path, channel_names=NAMES, min_free_mb=0, flush_s=0.05, queue_batches=100)
    gate = threading.Event()
    real_append = rt.recorder.append

    def gated(events):  # hold the writer until all batches are queued: the disk fills with many waiting
        gate.wait(timeout=60)
        real_append(events)

    rt.recorder.append = gated
    tags = poisson_tags(1_500_000, 1e6, seed=5)  # ~5 MB for a 3 MB disk
    assert all(rt.put(batch) for batch in np.array_split(tags, 50))
    gate.set()
    with pytest.raises(RecordingError, match="disk is full"):
        rt.close()
    st = rt.status()
    assert st.error and str(path) in st.error
    assert not rt.put(tags[:10])  # refused, and counted
    written = len(read_tags(path)[0])
    assert written >= st.flushed_tags
    assert st.dropped_batches > 0  # what was queued when it stopped is counted, not forgotten
    assert st.tags + st.lost_events == len(tags)  # every tag: handed to the file, or counted lost


def test_recorder_thread_carries_readings_loops_and_manifest(tmp_path):
    path = tmp_path / "r.h5"
    tags = poisson_tags(50_000, 1e6)
    rt = RecorderThread(path, channel_names=NAMES, loops={"phase_lock": ["phase_rad"]})
    rt.set_manifest({"gateware_hash": "f00d"})  # before data: stays in the first file
    assert rt.put(tags)
    assert rt.append_instrument_readings(1.7e9, "lakeshore336", "temperature_A", 2.5, "K")
    assert rt.append_loop_trace("phase_lock", [1.0, 2.0], phase_rad=[0.5, 0.25])
    st = rt.close()
    assert st.tags == st.flushed_tags == len(tags) and st.error is None and st.lost_events == 0
    assert st.files == [str(path)] and st.bytes == path.stat().st_size
    assert not path.with_name(f".{path.name}.reserve").exists()  # the disk reserve is given back
    with h5py.File(path) as f:
        assert json.loads(f["qnode/gateware_manifest"][()]) == {"gateware_hash": "f00d"}
        assert f["qnode/instrument_readings"]["value"].tolist() == [2.5]
        assert f["qnode/loops/phase_lock"]["phase_rad"].tolist() == [0.5, 0.25]
        np.testing.assert_array_equal(f["photon_data/timestamps"][:], tags["time_ps"])
