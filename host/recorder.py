"""HDF5 recordings: Photon-HDF5 layout for detector tags, qnode's own groups for the rest.

Layout of every file (docs/formats.md, "Recordings", has the full table)::

    /photon_data/timestamps                 int64 ps, one per detector tag (plain values)
    /photon_data/timestamps_specs/timestamps_unit   1e-12
    /photon_data/detectors                  uint8, the channel of each tag
    /setup, /identity, /provenance          Photon-HDF5 metadata
    /acquisition_duration                   s of lab time in this file
    /qnode/sync, heralds, coincidences      the non-tag events, aux unpacked
    /qnode/loss                             loss records (stream's and the recorder's own)
    /qnode/instrument_readings              (time_s, instrument, quantity, value, unit)
    /qnode/loops/<name>                     one table per loop: time_s + named float columns
    /qnode/config, /qnode/gateware_manifest TOML text, JSON text
    /qnode/recording/...                    sequence number, first and previous file names

Why it is built this way:

* Files are opened in SWMR mode (single writer, multiple readers) with the HDF5 1.10 file
  format, so a notebook reads a file while it grows, Debian's h5dump 1.10 reads it, and a
  writer killed with SIGKILL leaves a file that holds everything up to its last flush.
* Tags are written chunk by chunk with HDF5's own filters (timestamps: shuffle + deflate;
  channels: scaleoffset, 4 bits), but the chunks are encoded here, by a thread pool (deflate:
  ISA-L when the ``isal`` package is installed, else zlib), and handed to HDF5 with
  ``write_direct_chunk``: ISA-L deflates ~8x faster than zlib, and the stored data stay plain
  int64 ps that every HDF5 reader decodes without a plugin.
* Disk full: a 1 MB reserve file beside the recording is freed on ENOSPC so HDF5 can close the
  file properly; below ``min_free_mb`` the recorder stops before the disk is full at all.
* A file is rotated by size and age (``rotate_mb``, ``rotate_s``) into ``<stem>_0001.h5``,
  ``<stem>_0002.h5``, ... so one file never grows without bound.
* A write that fails (a full disk) stops the recording with ``RecordingError``; the file keeps
  what was flushed before. ``RecorderThread`` puts the recorder behind a bounded queue so the
  data path never waits for the disk; batches it cannot queue become loss records.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import errno
import getpass
import json
import os
import platform
import queue
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import h5py
import numba
import numpy as np

from qnode.firmware.events import (
    EVENT_DTYPE,
    HERALD_ATTEMPT_BITS,
    LOSS_COUNT_BITS,
    LOSS_COUNT_MAX,
    Kind,
    LossReason,
)

try:  # ISA-L: the same deflate stream (zlib format) as zlib, ~10x faster to make
    from isal import igzip_lib as _igzip

    DEFLATE_ENGINE = "isal"
    _DEFLATE_LEVEL = 1  # ISA-L levels are 0-3; 1 is as small as 2 on tag data and fastest

    def _deflate(data) -> bytes:
        # A 256-byte window: the matches in shuffled timestamps are mostly runs in the high
        # byte planes. Against the full 32 KiB window it is ~40 % faster, 2 % smaller at 1 MHz
        # and ~8 % larger at 10 MHz (3.14 B/tag): speed is the tighter of the two targets.
        return _igzip.compress(data, _DEFLATE_LEVEL, _igzip.COMP_ZLIB, _igzip.MEM_LEVEL_DEFAULT, 8)

except ImportError:  # pragma: no cover - depends on the environment
    DEFLATE_ENGINE = "zlib"
    _DEFLATE_LEVEL = 1

    def _deflate(data) -> bytes:
        return zlib.compress(data, _DEFLATE_LEVEL)

LIBVER = ("v110", "v110")  # SWMR needs >= 1.10; pinning 1.10 keeps HDF5 1.10 tools able to read

TAG_CHUNK = 1 << 17  # tags per chunk: 1 MiB of int64, the size of HDF5's default chunk cache
TABLE_CHUNK = 4096  # rows per chunk of the low-rate tables
# What a reader finds in entries never written (only after a failed write; see docs)
NOT_WRITTEN_PS = -1
NOT_WRITTEN_CHANNEL = 255

SYNC_DTYPE = np.dtype([("time_ps", "<i8"), ("channel", "u1"), ("attempt", "<u4")])
HERALD_DTYPE = np.dtype([("time_ps", "<i8"), ("channel", "u1"), ("outcome", "u1"), ("attempt", "<u4")])
COINCIDENCE_DTYPE = np.dtype([("time_ps", "<i8"), ("pattern", "u1"), ("mask", "<u4")])
LOSS_DTYPE = np.dtype(
    [("time_ps", "<i8"), ("channel", "u1"), ("reason", "u1"), ("count", "<u4"), ("origin", "u1")]
)
READING_DTYPE = np.dtype(
    [("time_s", "<f8"), ("instrument", "S32"), ("quantity", "S32"), ("value", "<f8"), ("unit", "S16")]
)

LOSS_ORIGIN_STREAM = 0  # a LOSS event that came with the stream (gateware, link, decoder)
LOSS_ORIGIN_RECORDER = 1  # the recorder's own: a batch it could not queue or could not store

# Loss reason the recorder writes for batches its queue could not take: the output (to disk)
# stalled. DECODE marks events of a kind the recorder has no table for (none today).
RECORDER_QUEUE_REASON = LossReason.OUTPUT
UNKNOWN_KIND_REASON = LossReason.DECODE


class RecordingError(RuntimeError):
    """The recording stopped: ``path`` says which file, ``bytes_written`` how much it holds."""

    def __init__(self, message: str, *, path: Path, bytes_written: int):
        super().__init__(message)
        self.path = path
        self.bytes_written = bytes_written


@dataclasses.dataclass
class RecorderStatus:
    path: str  # the file being written (the last one after close)
    files: list[str]  # every file of this recording, in sequence order
    bytes: int  # on disk, all files
    duration_s: float  # wall-clock time since the recording started
    tags: int  # detector tags written
    events: int  # non-tag events written (sync, heralds, coincidences, loss records)
    lost_events: int  # events the loss records say were lost (stream's and recorder's)
    dropped_batches: int  # batches the recorder itself could not store
    dropped_records: int  # instrument readings and loop samples it could not store
    flushed_tags: int = 0  # tags durable on disk (all a crash cannot take away)
    queue_batches: int = 0  # RecorderThread: batches waiting
    error: str | None = None  # why the recording stopped, if it did


def sequence_path(first: Path, sequence: int) -> Path:
    """File ``sequence`` of a recording whose first file is ``first``: ``<stem>_0001.h5``, ..."""
    first = Path(first)
    if sequence == 0:
        return first
    return first.with_name(f"{first.stem}_{sequence:04d}{first.suffix}")


def recording_files(first: str | Path) -> list[Path]:
    """The files of a recording in order (they sort by name too): first, _0001, _0002, ..."""
    out, seq = [], 0
    while sequence_path(Path(first), seq).exists():
        out.append(sequence_path(Path(first), seq))
        seq += 1
    return out


def recorded_events(f: h5py.File) -> np.ndarray:
    """The non-tag events of one recording file (/qnode/sync, heralds, coincidences, loss) as
    EVENT_DTYPE, time-ordered: what ``Recorder.append`` took apart, put back together, so a
    replay and the file measurements see the stream the daemon saw. A loss row whose count does
    not fit a LOSS event's count field (the recorder's own, a whole batch) becomes several LOSS
    events that add up to it; ``origin`` is not carried (it has no place in an event)."""
    parts = []
    q = f.get("qnode")

    def table(name):
        ds = q.get(name) if q is not None else None
        return ds[:] if ds is not None and ds.shape[0] else None

    if (rows := table("sync")) is not None:
        ev = np.zeros(len(rows), EVENT_DTYPE)
        ev["channel"], ev["kind"], ev["aux"] = rows["channel"], Kind.SYNC, rows["attempt"]
        ev["time_ps"] = rows["time_ps"]
        parts.append(ev)
    if (rows := table("heralds")) is not None:
        ev = np.zeros(len(rows), EVENT_DTYPE)
        ev["channel"], ev["kind"] = rows["channel"], Kind.HERALD
        ev["aux"] = (rows["outcome"].astype(np.uint32) << HERALD_ATTEMPT_BITS) | rows["attempt"]
        ev["time_ps"] = rows["time_ps"]
        parts.append(ev)
    if (rows := table("coincidences")) is not None:
        ev = np.zeros(len(rows), EVENT_DTYPE)
        ev["channel"], ev["kind"], ev["aux"] = rows["pattern"], Kind.COINCIDENCE, rows["mask"]
        ev["time_ps"] = rows["time_ps"]
        parts.append(ev)
    if (rows := table("loss")) is not None:
        pieces = np.maximum(1, -(-rows["count"].astype(np.int64) // LOSS_COUNT_MAX))
        idx = np.repeat(np.arange(len(rows)), pieces)
        first = np.cumsum(pieces) - pieces  # index of each row's first piece
        piece = np.arange(len(idx)) - first[idx]
        count = np.minimum(rows["count"][idx].astype(np.int64) - piece * LOSS_COUNT_MAX, LOSS_COUNT_MAX)
        ev = np.zeros(len(idx), EVENT_DTYPE)
        ev["time_ps"], ev["channel"], ev["kind"] = rows["time_ps"][idx], rows["channel"][idx], Kind.LOSS
        ev["aux"] = (rows["reason"][idx].astype(np.uint32) << LOSS_COUNT_BITS) | count.astype(np.uint32)
        parts.append(ev)
    if not parts:
        return np.empty(0, EVENT_DTYPE)
    events = np.concatenate(parts)
    return events[np.argsort(events["time_ps"], kind="stable")]


def _rot(x, k):
    return ((x << k) | (x >> (32 - k))) & 0xFFFFFFFF

def _lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 hashlittle, as HDF5's H5_checksum_lookup3."""
    M = 0xFFFFFFFF
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & M
    i = 0
    while length > 12:
        a = (a + data[i] + (data[i+1] << 8) + (data[i+2] << 16) + (data[i+3] << 24)) & M
        b = (b + data[i+4] + (data[i+5] << 8) + (data[i+6] << 16) + (data[i+7] << 24)) & M
        c = (c + data[i+8] + (data[i+9] << 8) + (data[i+10] << 16) + (data[i+11] << 24)) & M
        a = (a - c) & M; a ^= _rot(c, 4); c = (c + b) & M
        b = (b - a) & M; b ^= _rot(a, 6); a = (a + c) & M
        c = (c - b) & M; c ^= _rot(b, 8); b = (b + a) & M
        a = (a - c) & M; a ^= _rot(c, 16); c = (c + b) & M
        b = (b - a) & M; b ^= _rot(a, 19); a = (a + c) & M
        c = (c - b) & M; c ^= _rot(b, 4); b = (b + a) & M
        length -= 12; i += 12
    if length == 0:
        return c
    tail = data[i:i + length] + bytes(12 - length)
    a = (a + int.from_bytes(tail[0:4], "little")) & M
    b = (b + int.from_bytes(tail[4:8], "little")) & M
    c = (c + int.from_bytes(tail[8:12], "little")) & M
    c ^= b; c = (c - _rot(b, 14)) & M
    a ^= c; a = (a - _rot(c, 11)) & M
    b ^= a; b = (b - _rot(a, 25)) & M
    c ^= b; c = (c - _rot(b, 16)) & M
    a ^= c; a = (a - _rot(c, 4)) & M
    b ^= a; b = (b - _rot(a, 14)) & M
    c ^= b; c = (c - _rot(b, 24)) & M
    return c


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def clear_status_flags(path: str | Path) -> bool:
    """What ``h5clear -s`` does, for machines without hdf5-tools: clear the "open for writing"
    flags a writer that died (SIGKILL, power loss, a close that failed on a full disk) left in
    the superblock, so that every HDF5 reader opens the file again, not only SWMR readers.
    Only for files no process has open for writing. True if flags were set and are now clear.
    """
    with open(path, "r+b") as fh:
        sb = bytearray(fh.read(64))
        if sb[:8] != HDF5_SIGNATURE or sb[8] < 2:  # superblock v0/v1 keep no such flags
            return False
        n = 12 + 4 * sb[9]  # signature, version, offset/length sizes, flags, four addresses
        if _lookup3(bytes(sb[:n])) != int.from_bytes(sb[n:n + 4], "little"):
            raise ValueError(f"{path}: superblock checksum does not match; not touching it")
        if sb[11] == 0:
            return False
        sb[11] = 0
        sb[n:n + 4] = _lookup3(bytes(sb[:n])).to_bytes(4, "little")
        fh.seek(0)
        fh.write(bytes(sb[:n + 4]))
    return True


@numba.njit(cache=True, nogil=True)
def _shuffle8(x, out):  # 3x faster than numpy's transposed copy, and without the GIL
    n = x.shape[0]
    for i in range(n):
        v = x[i]
        out[i] = v & 0xFF
        out[n + i] = (v >> 8) & 0xFF
        out[2 * n + i] = (v >> 16) & 0xFF
        out[3 * n + i] = (v >> 24) & 0xFF
        out[4 * n + i] = (v >> 32) & 0xFF
        out[5 * n + i] = (v >> 40) & 0xFF
        out[6 * n + i] = (v >> 48) & 0xFF
        out[7 * n + i] = (v >> 56) & 0xFF


def _shuffle(values: np.ndarray) -> np.ndarray:
    """HDF5's shuffle filter: byte 0 of every element, then byte 1, ... (little-endian)."""
    size = values.dtype.itemsize
    if size == 1:
        return values
    if size == 8:
        out = np.empty(8 * len(values), np.uint8)
        _shuffle8(np.ascontiguousarray(values).view(np.uint64), out)
        return out
    return np.ascontiguousarray(values.view(np.uint8).reshape(-1, size).T)


def warm_up() -> None:
    """Compile (or load from numba's cache) the chunk encoder's kernel: a first recording
    that waits seconds for the compiler fills its queue and drops batches."""
    _shuffle(np.zeros(2, np.int64))


def _compress_chunk(values: np.ndarray) -> bytes:
    """A chunk as HDF5's shuffle + deflate filters would store it."""
    return _deflate(_shuffle(values))


SCALEOFFSET_HEADER = 21  # HDF5 scaleoffset chunk: minbits (4 B LE), 8, minval (8 B LE), zeros to 21 B


def _scaleoffset_channels(values: np.ndarray) -> bytes:
    """A uint8 chunk as HDF5's scaleoffset filter (integer, fill value defined) stores it.

    The filter keeps ``value - min`` in ``minbits`` bits, most significant bit first, and
    reserves the all-ones code for the fill value (NOT_WRITTEN_CHANNEL, the edge chunk's
    padding). Channels that span at most 15 (lab setups: 8) take 4 bits: two per byte, which
    numpy packs at memory speed. Wider spans are stored at full precision (8 bits, copied),
    which the filter also defines. Deflating the channels instead costs ~8x the time for
    ~0.05 B/tag less.
    """
    valid = values != NOT_WRITTEN_CHANNEL
    real = values if valid.all() else values[valid]
    header = bytearray(SCALEOFFSET_HEADER)
    header[4] = 8
    if len(real) == 0:
        lo, hi = 0, 0
    else:
        lo, hi = int(real.min()), int(real.max())
    if hi - lo > 14:  # does not fit 4 bits beside the fill code: full precision, stored as is
        header[0] = 8
        header[5] = lo
        return bytes(header) + values.tobytes()
    header[0] = 4
    header[5] = lo
    codes = values - np.uint8(lo)
    codes[~valid] = 15
    return bytes(header) + ((codes[0::2] << 4) | codes[1::2]).tobytes() + b"\0"


class _TagColumn:
    """One 1-D dataset of tags, written whole chunks at a time (shuffle + deflate).

    Whole chunks are compressed by the worker pool while the caller goes on (the chunks are
    copies the caller never sees); they are written in order as they come back, at the latest
    at the next flush. At most MAX_PENDING chunks per column wait, which bounds the memory.
    """

    MAX_PENDING = 4  # per column: 4 MiB of timestamps in flight, enough to keep the pool busy

    def __init__(self, ds: h5py.Dataset, pool: ThreadPoolExecutor | None, codec=_compress_chunk):
        self.ds = ds
        self.codec = codec
        self.chunk = ds.chunks[0]
        self.pool = pool
        self.pad = ds.fillvalue  # what a reader finds past the written entries (-1 ps, channel 255)
        self.tail = np.full(self.chunk, self.pad, ds.dtype)  # the chunk being filled
        self.n_tail = 0
        self.n_full = 0  # elements in whole chunks handed to the pool (or written)
        self.pending: collections.deque = collections.deque()  # (offset, future or bytes)
        self.last_blob = self.chunk * ds.dtype.itemsize // 2
        self.flushed = 0  # elements durable at the last flush

    def __len__(self):
        return self.n_full + self.n_tail

    def append(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, self.ds.dtype)  # chunks are shuffled as bytes
        i = 0
        if self.n_tail:
            take = min(self.chunk - self.n_tail, len(values))
            self.tail[self.n_tail:self.n_tail + take] = values[:take]
            self.n_tail += take
            i = take
            if self.n_tail < self.chunk:
                return
            self._write_chunks([self.tail.copy()])
            self.n_tail = 0
        n_whole = (len(values) - i) // self.chunk
        if n_whole:
            self._write_chunks([values[i + k * self.chunk:i + (k + 1) * self.chunk] for k in range(n_whole)])
            i += n_whole * self.chunk
        rest = len(values) - i
        self.tail[:rest] = values[i:]
        self.n_tail = rest

    def _write_chunks(self, chunks: list[np.ndarray]) -> None:
        for c in chunks:
            job = self.pool.submit(self.codec, c) if self.pool is not None else self.codec(c)
            self.pending.append((self.n_full, job))
            self.n_full += self.chunk
        self._write_done(wait=False)

    def _write_done(self, wait: bool) -> None:
        """Write the compressed chunks at the head of the line: those done, or all if ``wait``
        (or while more than MAX_PENDING wait)."""
        while self.pending:
            offset, job = self.pending[0]
            if not isinstance(job, bytes):
                if not (wait or job.done() or len(self.pending) > self.MAX_PENDING):
                    return
                job = job.result()
            # A chunk the extent reaches already (the edge chunk, completed) is written before
            # the extent grows; a new one needs the extent first (see write_tail).
            if self.ds.shape[0] <= offset:
                self.ds.resize((offset + self.chunk,))
            self.ds.id.write_direct_chunk((offset,), job, filter_mask=0)
            if self.ds.shape[0] < offset + self.chunk:
                self.ds.resize((offset + self.chunk,))
            self.pending.popleft()
            self.last_blob = len(job)

    def pending_bytes(self) -> int:
        """An estimate of what the chunks still in the pool will add to the file."""
        return len(self.pending) * self.last_blob

    def write_tail(self) -> None:
        """Write the partly filled chunk (padded; rewritten as it grows). The file's
        _RecordingFile.flush sets the extents after every column's tail is written, so a
        failed write leaves the extents as they were, except that a chunk HDF5 has not seen
        yet needs the extent to reach into it first (HDF5 writes no chunk beyond it)."""
        self._write_done(wait=True)
        if self.n_tail:
            self.tail[self.n_tail:] = self.pad
            if self.ds.shape[0] <= self.n_full:
                self.ds.resize((self.n_full + 1,))
            self.ds.id.write_direct_chunk((self.n_full,), self.codec(self.tail), filter_mask=0)

    def flush(self) -> None:
        self.ds.resize((len(self),))

    def roll_back(self) -> None:
        """After a failed write: back to the extent of the last flush (HDF5 may refuse)."""
        self.ds.resize((self.flushed,))

    def mark_flushed(self) -> None:
        self.flushed = len(self)


class _Table:
    """A growable 1-D dataset written through HDF5's filter pipeline (low-rate tables)."""

    def __init__(self, group: h5py.Group, name: str, dtype, compression: str | None):
        kwargs = {}
        if compression == "gzip":
            kwargs = dict(compression="gzip", compression_opts=4, shuffle=True)
        elif compression == "lzf":
            kwargs = dict(compression="lzf", shuffle=True)
        self.ds = group.create_dataset(
            name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(TABLE_CHUNK,), **kwargs
        )
        self.n = 0
        self.flushed = 0

    def __len__(self):
        return self.n

    def append(self, rows: np.ndarray) -> None:
        if len(rows) == 0:
            return
        self.ds.resize((self.n + len(rows),))
        self.ds[self.n:] = rows
        self.n += len(rows)

    def flush(self) -> None:
        pass

    def mark_flushed(self) -> None:
        self.flushed = self.n

    def write_tail(self) -> None:
        pass

    def roll_back(self) -> None:
        self.ds.resize((self.flushed,))
        self.n = self.flushed


class _TagTable(_Table):
    """Tags through HDF5's own filter pipeline, for lzf or no compression."""

    def __init__(self, group, name, dtype, compression):
        super().__init__(group, name, dtype, compression)
        self.ds.resize((0,))


_UNCLOSABLE: list = []  # files whose close failed (see _RecordingFile.abandon)


def _open_h5(path: Path) -> h5py.File:
    """Where files are created (tests put a file object with a full disk here)."""
    return h5py.File(path, "w", libver=LIBVER)


def _text_dataset(group: h5py.Group, name: str, text: str) -> None:
    group.create_dataset(name, data=text, dtype=h5py.string_dtype("utf-8"))


class _RecordingFile:
    """One file of a recording: creates the layout, then switches to SWMR mode."""

    def __init__(self, path: Path, rec: "Recorder", sequence: int):
        self.path = path
        self.opened = time.monotonic()
        self.first_ps: int | None = None
        self.last_ps: int | None = None
        self.duration_override: float | None = None
        f = self.file = _open_h5(path)
        comp = rec.compression
        f.create_dataset("description", data=rec.description or "qnode recording")
        self.duration = f.create_dataset("acquisition_duration", data=0.0)

        pd = f.create_group("photon_data")
        tag_kwargs = dict(shape=(0,), maxshape=(None,), chunks=(TAG_CHUNK,))
        if comp == "gzip":
            # The filters the chunks are compressed with (by us): shuffle, then deflate. Entries
            # never written read as -1 ps and channel 255 (see abandon()).
            ts = pd.create_dataset("timestamps", dtype="<i8", fillvalue=NOT_WRITTEN_PS,
                                   compression="gzip", compression_opts=_DEFLATE_LEVEL, shuffle=True, **tag_kwargs)
            # channels: HDF5's scaleoffset filter, 4 bits a tag (see _scaleoffset_channels)
            det = pd.create_dataset("detectors", dtype="u1", fillvalue=NOT_WRITTEN_CHANNEL,
                                    scaleoffset=0, **tag_kwargs)
            self.timestamps = _TagColumn(ts, rec._pool)
            self.detectors = _TagColumn(det, rec._pool, _scaleoffset_channels)
        else:
            self.timestamps = _TagTable(pd, "timestamps", "<i8", comp)
            self.detectors = _TagTable(pd, "detectors", "u1", comp)
        specs = pd.create_group("timestamps_specs")
        specs.create_dataset("timestamps_unit", data=1e-12)

        setup = f.create_group("setup")
        for key, value in dict(
            num_pixels=len(rec.channel_names), num_spots=1, num_spectral_ch=1,
            num_polarization_ch=1, num_split_ch=1, modulated_excitation=False,
            excitation_alternated=[False], lifetime=False,
        ).items():
            setup.create_dataset(key, data=value)
        setup.create_dataset(
            "detectors_names", data=[f"{ch}:{name}" for ch, name in sorted(rec.channel_names.items())]
        )
        identity = f.create_group("identity")
        identity.create_dataset("creation_time", data=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        identity.create_dataset("software", data="qnode")
        identity.create_dataset("software_version", data=package_version("qnode"))
        identity.create_dataset("format_name", data="Photon-HDF5")
        identity.create_dataset("format_version", data="0.5")
        identity.create_dataset("filename", data=path.name)
        prov = f.create_group("provenance")
        prov.create_dataset("hostname", data=platform.node())
        prov.create_dataset("user", data=getpass.getuser())

        q = f.create_group("qnode")
        self.sync = _Table(q, "sync", SYNC_DTYPE, comp)
        self.heralds = _Table(q, "heralds", HERALD_DTYPE, comp)
        self.coincidences = _Table(q, "coincidences", COINCIDENCE_DTYPE, comp)
        self.loss = _Table(q, "loss", LOSS_DTYPE, comp)
        self.readings = _Table(q, "instrument_readings", READING_DTYPE, comp)
        loops = q.create_group("loops")
        self.loops = {name: _Table(loops, name, dtype, comp) for name, dtype in rec._loop_dtypes.items()}
        _text_dataset(q, "config", rec.config_text)
        if rec.manifest is not None:
            _text_dataset(q, "gateware_manifest", json.dumps(rec.manifest, indent=2, sort_keys=True, default=str))
        r = q.create_group("recording")
        r.create_dataset("sequence", data=sequence)
        r.create_dataset("first_file", data=rec.first_path.name)
        r.create_dataset("previous_file", data=sequence_path(rec.first_path, sequence - 1).name if sequence else "")
        r.create_dataset("deflate_engine", data=DEFLATE_ENGINE)
        self.flushed_at: float | None = None  # wall clock of the last flush
        self.tables = [self.sync, self.heralds, self.coincidences, self.loss, self.readings, *self.loops.values()]
        f.flush()
        if rec.swmr:
            f.swmr_mode = True

    @property
    def empty(self) -> bool:
        return len(self.timestamps) == 0 and not any(len(t) for t in self.tables)

    @property
    def size(self) -> int:
        """Bytes in the file, counting the tag chunks still being compressed."""
        if not self.file.id.valid:
            return self.path.stat().st_size
        pending = sum(c.pending_bytes() for c in (self.timestamps, self.detectors) if isinstance(c, _TagColumn))
        return self.file.id.get_filesize() + pending

    def flush(self) -> None:
        self.timestamps.write_tail()
        self.detectors.write_tail()
        self.timestamps.flush()
        self.detectors.flush()
        for table in self.tables:
            table.flush()
        if self.duration_override is not None:
            self.duration[()] = self.duration_override
        elif self.first_ps is not None:
            self.duration[()] = (self.last_ps - self.first_ps) * 1e-12
        self.file.flush()
        for column in (self.timestamps, self.detectors, *self.tables):
            column.mark_flushed()
        self.flushed_at = time.time()

    def close(self) -> None:
        if self.file.id.valid:
            self.flush()
            self.file.close()

    def abandon(self) -> None:
        """After a failed write: close, asking HDF5 for no more than it must write. (Shrinking
        the datasets back to their flushed length is tried, but HDF5 refuses it when the failed
        write was an edge chunk's: it rereads that chunk.)"""
        for column in (self.timestamps, self.detectors):
            try:
                if column.ds.shape[0] != column.flushed:
                    column.roll_back()
            except Exception:
                pass
        try:
            if self.file.id.valid:
                self.file.close()
        except Exception:  # HDF5 could not write its last metadata even with the reserve freed
            # Keep the h5py objects: their deallocation would retry the close at an arbitrary
            # moment (garbage collection, another thread).
            _UNCLOSABLE.append(self)
        # A close that could not finish leaves the superblock saying "open for writing", which
        # every reader refuses (SWMR readers too, once HDF5 cleared the SWMR bit). The data are
        # consistent up to the last flush; clear the flags as h5clear -s would.
        try:
            clear_status_flags(self.path)
        except (OSError, ValueError):
            pass


class Recorder:
    """Writes decoded event batches, instrument readings and loop traces to HDF5 files.

    Synchronous: every call writes through (the tags' partly filled chunk is kept until the
    next flush). A flush happens when ``flush_s`` has passed since the last one at the end of
    any call, and at ``flush()``/``close()``; ``RecorderThread`` also flushes on a timer.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        channel_names: Mapping[int, str],
        config_text: str = "",
        description: str = "",
        compression: str = "gzip",
        min_free_mb: float = 64.0,
        reserve_mb: float = 1.0,
        manifest: Mapping | None = None,
        loops: Mapping[str, Sequence[str]] | None = None,
        flush_s: float = 1.0,
        rotate_mb: float | None = None,
        rotate_s: float | None = None,
        swmr: bool = True,
        workers: int = min(4, os.cpu_count() or 1),
    ):
        if compression not in ("gzip", "lzf", "none"):
            raise ValueError(f"compression must be gzip, lzf or none, not {compression!r}")
        self.first_path = Path(path)
        self.first_path.parent.mkdir(parents=True, exist_ok=True)
        self.channel_names = dict(channel_names)
        self.config_text = config_text
        self.description = description
        self.compression = None if compression == "none" else compression
        self.manifest = dict(manifest) if manifest is not None else None
        self.flush_s = flush_s
        self.rotate_bytes = int(rotate_mb * 1e6) if rotate_mb else None
        self.rotate_s = rotate_s
        self.swmr = swmr
        self.min_free_bytes = int(min_free_mb * 1e6)
        self._loop_dtypes: dict[str, np.dtype] = {}
        for name, columns in (loops or {}).items():
            self._declare_loop(name, columns)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="qnode-deflate") if workers > 1 else None
        self.started = time.monotonic()
        self.files: list[Path] = []
        self._closed_tags: list[int] = []  # tags in each file already closed
        self.closed_bytes = 0  # bytes in files already closed
        self.tags = 0
        self.events = 0
        self.lost_events = 0
        self.dropped_batches = 0
        self.dropped_records = 0
        self.error: RecordingError | None = None
        self._file: _RecordingFile | None = None
        self._last_flush = time.monotonic()
        # Disk space held back so that a file can still be closed properly when the disk fills
        # up (HDF5 needs a little room for its last metadata): freed when a write fails.
        self.reserve_path = self.first_path.with_name(f".{self.first_path.name}.reserve")
        self._make_reserve(int(reserve_mb * 1e6))
        self._guarded(self._open_next)

    # --- the layout ------------------------------------------------------------------------

    def _declare_loop(self, name: str, columns: Iterable[str]) -> bool:
        if not name.isidentifier():
            raise ValueError(f"loop name {name!r}: use letters, digits and underscores")
        dtype = np.dtype([("time_s", "<f8")] + [(c, "<f8") for c in columns])
        if self._loop_dtypes.get(name) == dtype:
            return False
        self._loop_dtypes[name] = dtype
        return True

    def _open_next(self) -> None:
        seq = len(self.files)
        if self._file is not None:
            self._file.close()
            self.closed_bytes += self._file.path.stat().st_size
            self._closed_tags.append(len(self._file.timestamps))
        path = sequence_path(self.first_path, seq)
        self.files.append(path)
        self._file = None
        self._file = _RecordingFile(path, self, seq)
        self._last_flush = time.monotonic()

    def _layout_changed(self) -> None:
        """A loop or a manifest that the open file has no place for: continue in the next file
        (an HDF5 file in SWMR mode cannot get new datasets)."""
        self._guarded(self._open_next)

    # --- writing ---------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self.files[-1]

    def _guarded(self, fn, *args):
        """Run a write; an OSError (disk full, I/O error) stops the recording with RecordingError."""
        try:
            return fn(*args)
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        exc = exc.with_traceback(None)  # keep no frames (and the HDF5 objects they hold) alive
        f = self._file
        path = f.path if f is not None else self.path
        self._drop_reserve()  # room for HDF5 to close the file properly
        if f is not None:
            f.abandon()
            self._closed_tags.append(f.timestamps.flushed)
        self._file = None
        written = self.closed_bytes + (path.stat().st_size if path.exists() else 0)
        full = exc.errno == errno.ENOSPC or "No space" in str(exc) or "disk" in str(exc)
        what = "the disk is full" if full else f"a write failed ({exc})"
        kept = f"the tags flushed at {dt.datetime.fromtimestamp(f.flushed_at).isoformat(timespec='seconds')}" \
            if f is not None and f.flushed_at else "its layout, no data"
        self.error = RecordingError(
            f"recording stopped: {what} while writing {path} ({written:,} bytes written in "
            f"{len(self.files)} file(s), {self.flushed_tags:,} tags flushed); the file keeps {kept}",
            path=path, bytes_written=written,
        )
        raise self.error from exc

    def _make_reserve(self, nbytes: int) -> None:
        if nbytes <= 0:
            return
        try:
            with open(self.reserve_path, "wb") as fh:
                block = bytes(1 << 16)  # real blocks, not a sparse file
                for _ in range(0, nbytes, len(block)):
                    fh.write(block)
        except OSError:  # no room even for the reserve: recording will stop at the first write
            self._drop_reserve()

    def _drop_reserve(self) -> None:
        try:
            self.reserve_path.unlink()
        except FileNotFoundError:
            pass

    def _check_free_space(self) -> None:
        """Stop while the disk still has room to close the file properly (min_free_mb): the
        file is flushed and closed as usual, and every reader opens it."""
        if not self.min_free_bytes or self._file is None:
            return
        st = os.statvfs(self.path.parent)
        free = st.f_bavail * st.f_frsize
        if free >= self.min_free_bytes:
            return
        f = self._file
        self._drop_reserve()
        try:
            f.close()
        except OSError as exc:
            self._fail(exc)
        self._file = None
        self._closed_tags.append(len(f.timestamps))
        self.closed_bytes += f.path.stat().st_size
        self.error = RecordingError(
            f"recording stopped: the disk is nearly full ({free:,} bytes free, below min_free_mb = "
            f"{self.min_free_bytes / 1e6:g} MB) while writing {f.path} ({self.closed_bytes:,} bytes "
            f"written in {len(self.files)} file(s), {self.flushed_tags:,} tags); the file is closed "
            f"and complete", path=f.path, bytes_written=self.closed_bytes,
        )
        raise self.error

    @property
    def flushed_tags(self) -> int:
        f = self._file  # status() runs in other threads: read the attribute once
        return sum(self._closed_tags) + (f.timestamps.flushed if f is not None else 0)

    def append(self, events: np.ndarray) -> None:
        """Write one batch of decoded events (EVENT_DTYPE)."""
        self._check()
        self._guarded(self._append, events)
        self._after_write()

    def _append(self, events: np.ndarray) -> None:
        if len(events) == 0:
            return
        f = self._file
        kind = events["kind"]
        is_tag = kind == Kind.TAG
        n_tags = int(np.count_nonzero(is_tag))
        if n_tags == len(events):
            tags = events
        else:
            tags = events[is_tag]
            self._append_others(events[~is_tag])
        if n_tags:
            f.timestamps.append(tags["time_ps"])
            f.detectors.append(tags["channel"])
            self.tags += n_tags
        if f.first_ps is None:
            f.first_ps = int(events["time_ps"][0])
        f.last_ps = int(events["time_ps"][-1])

    def _append_others(self, others: np.ndarray) -> None:
        f = self._file
        kind = others["kind"]
        handled = np.zeros(len(others), bool)
        for k in (Kind.SYNC, Kind.HERALD, Kind.COINCIDENCE, Kind.LOSS):
            sel = kind == k
            if not sel.any():
                continue
            handled |= sel
            ev = others[sel]
            if k == Kind.SYNC:
                rows = np.empty(len(ev), SYNC_DTYPE)
                rows["channel"], rows["attempt"] = ev["channel"], ev["aux"]
                table = f.sync
            elif k == Kind.HERALD:
                rows = np.empty(len(ev), HERALD_DTYPE)
                rows["channel"] = ev["channel"]
                rows["outcome"] = ev["aux"] >> HERALD_ATTEMPT_BITS
                rows["attempt"] = ev["aux"] & ((1 << HERALD_ATTEMPT_BITS) - 1)
                table = f.heralds
            elif k == Kind.COINCIDENCE:
                rows = np.empty(len(ev), COINCIDENCE_DTYPE)
                rows["pattern"], rows["mask"] = ev["channel"], ev["aux"]
                table = f.coincidences
            else:
                rows = np.empty(len(ev), LOSS_DTYPE)
                rows["channel"] = ev["channel"]
                rows["reason"] = ev["aux"] >> LOSS_COUNT_BITS
                rows["count"] = ev["aux"] & LOSS_COUNT_MAX
                rows["origin"] = LOSS_ORIGIN_STREAM
                self.lost_events += int(rows["count"].sum())
                table = f.loss
            rows["time_ps"] = ev["time_ps"]
            table.append(rows)
            self.events += len(rows)
        if not handled.all():  # a kind with no table: say so in the loss table, never drop silently
            self._write_loss(_loss_rows(others[~handled], UNKNOWN_KIND_REASON))

    def _write_loss(self, rows: np.ndarray) -> None:
        if len(rows):
            self._file.loss.append(rows)
            self.events += len(rows)
            self.lost_events += int(rows["count"].sum())

    def record_loss(self, rows: np.ndarray) -> None:
        """Write loss records (LOSS_DTYPE) the recorder's owner made (RecorderThread's drops)."""
        self._check()
        self._guarded(self._write_loss, rows)
        self._after_write()

    def append_instrument_readings(self, time_s, instrument, quantity, value, unit) -> None:
        """Instrument readings; each argument a scalar or an array (broadcast together).

        ``time_s`` is unix time in seconds (the daemon's clock when the reading was taken).
        Names longer than the table's fields (32, 32 and 16 bytes) are refused, not cut.
        """
        self._check()
        cols = np.broadcast_arrays(
            np.asarray(time_s, float), np.asarray(instrument, "U"), np.asarray(quantity, "U"),
            np.asarray(value, float), np.asarray(unit, "U"),
        )
        n = cols[0].size
        rows = np.empty(n, READING_DTYPE)
        for name, col in zip(READING_DTYPE.names, cols):
            flat = col.ravel()
            if flat.dtype.kind == "U":
                width = READING_DTYPE[name].itemsize
                enc = np.char.encode(flat, "utf-8")
                if enc.dtype.itemsize > width:
                    raise ValueError(f"instrument reading: {name} longer than {width} bytes: {flat.tolist()}")
                flat = enc
            rows[name] = flat
        self._guarded(self._file.readings.append, rows)
        self._after_write()

    def append_loop_trace(self, name: str, time_s, **columns) -> None:
        """Samples of one loop: ``time_s`` and named float columns (scalars or equal-length arrays).

        The first call for a loop the open file has no table for continues the recording in
        the next file (SWMR files cannot get new datasets); declare loops up front with
        ``loops={name: [columns]}`` to avoid that.
        """
        self._check()
        if self._declare_loop(name, columns):
            self._layout_changed()
        dtype = self._loop_dtypes[name]
        t = np.atleast_1d(np.asarray(time_s, float))
        rows = np.empty(len(t), dtype)
        rows["time_s"] = t
        for c in dtype.names[1:]:
            rows[c] = columns[c]
        self._guarded(self._file.loops[name].append, rows)
        self._after_write()

    def set_manifest(self, manifest: Mapping) -> None:
        """The gateware manifest (any JSON-able dict), stored as JSON text in every file from now
        on; an open file that has data already is closed and the recording goes on in the next."""
        self._check()
        self.manifest = dict(manifest)
        if self._file.empty:  # nothing written yet: start this file again with the manifest in it
            self._guarded(self._restart_empty_file)
        else:
            self._layout_changed()

    def _restart_empty_file(self) -> None:
        f = self._file
        f.file.close()
        self._file = _RecordingFile(f.path, self, len(self.files) - 1)

    def record_duration(self, seconds: float) -> None:
        """Set /acquisition_duration of the open file (else: the span of its events' times)."""
        if self._file is not None:
            self._file.duration_override = seconds

    def _check(self) -> None:
        """Before a write: refuse if stopped; continue in the next file if this one is due."""
        if self.error is not None:
            raise self.error
        f = self._file
        if f is None:
            raise RecordingError(f"recording {self.first_path} is closed", path=self.path, bytes_written=self.bytes)
        if not f.empty and ((self.rotate_bytes and f.size >= self.rotate_bytes) or (
            self.rotate_s and time.monotonic() - f.opened >= self.rotate_s
        )):
            self._guarded(self._open_next)

    def _after_write(self) -> None:
        self._check_free_space()
        if time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Make everything written so far durable and visible to SWMR readers."""
        if self.error is not None:
            raise self.error
        if self._file is None:
            return
        self._guarded(self._file.flush)
        self._last_flush = time.monotonic()

    def maybe_flush(self) -> None:
        """Flush if ``flush_s`` has passed; rotate if the file is due (for timers)."""
        if self._file is not None and self.error is None:
            self._check()
            self._after_write()

    def close(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            try:
                f.close()
            except OSError as exc:
                self._file = f
                self._fail(exc)
            self.closed_bytes += f.path.stat().st_size
            self._closed_tags.append(len(f.timestamps))
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._drop_reserve()

    @property
    def bytes(self) -> int:
        f = self._file  # status() runs in other threads: read the attribute once
        try:
            open_bytes = f.size if f is not None else 0
        except (OSError, ValueError, RuntimeError):  # closed under our feet by the writer thread
            open_bytes = 0
        return self.closed_bytes + open_bytes

    def status(self) -> RecorderStatus:
        return RecorderStatus(
            path=str(self.path), files=[str(p) for p in self.files], bytes=self.bytes,
            duration_s=time.monotonic() - self.started, tags=self.tags, events=self.events,
            lost_events=self.lost_events, dropped_batches=self.dropped_batches,
            dropped_records=self.dropped_records, flushed_tags=self.flushed_tags, error=str(self.error) if self.error else None,
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _loss_rows(events: np.ndarray, reason: int) -> np.ndarray:
    """Loss records for events that were not stored: one per channel, count = events on it,
    time = the first of them. LOSS events among them keep their own counts (they are losses
    already), so the loss table never loses a loss."""
    is_loss = events["kind"] == Kind.LOSS
    carried = events[is_loss]
    rest = events[~is_loss]
    rows = []
    if len(rest):
        ch = rest["channel"]
        channels, first = np.unique(ch, return_index=True)
        counts = np.bincount(ch, minlength=int(channels.max()) + 1)[channels]
        r = np.empty(len(channels), LOSS_DTYPE)
        r["time_ps"] = rest["time_ps"][first]
        r["channel"] = channels
        r["reason"] = reason
        r["count"] = counts
        r["origin"] = LOSS_ORIGIN_RECORDER
        rows.append(r)
    if len(carried):
        r = np.empty(len(carried), LOSS_DTYPE)
        r["time_ps"] = carried["time_ps"]
        r["channel"] = carried["channel"]
        r["reason"] = carried["aux"] >> LOSS_COUNT_BITS
        r["count"] = carried["aux"] & LOSS_COUNT_MAX
        r["origin"] = LOSS_ORIGIN_STREAM
        rows.append(r)
    return np.concatenate(rows) if rows else np.empty(0, LOSS_DTYPE)


class RecorderThread:
    """A Recorder in its own thread behind a bounded queue: ``put`` never waits for the disk.

    A batch that finds the queue full is dropped and becomes loss records (reason OUTPUT,
    origin 1 = recorder, one per channel) in the file and in ``status()``. Instrument readings
    and loop samples that find it full are counted in ``status().dropped_records``. The
    thread flushes every ``flush_s`` whether or not data arrive. After a write fails (disk
    full) ``put`` returns False, ``status().error`` says why, and ``close()`` raises the
    RecordingError.
    """

    def __init__(self, path: str | Path, *, queue_batches: int = 64, **recorder_kwargs):
        self._queue: queue.Queue = queue.Queue(maxsize=queue_batches)
        self._drops: collections.deque = collections.deque()  # loss-row arrays, thread-safe appends
        self._lock = threading.Lock()
        self._dropped_batches = 0
        self._dropped_records = 0
        self._dropped_events = 0
        self._unrecorded_events = 0  # events in batches still queued when the recording stopped
        self.recorder = Recorder(path, **recorder_kwargs)
        self._thread = threading.Thread(target=self._run, name="qnode-recorder", daemon=True)
        self._stop = False
        self._thread.start()

    def put(self, events: np.ndarray) -> bool:
        """Queue a batch. False if it was dropped (and counted as loss records) or recording stopped."""
        if self.recorder.error is None and not self._stop:
            try:
                self._queue.put_nowait(("events", events))
                return True
            except queue.Full:
                pass
        rows = _loss_rows(events, RECORDER_QUEUE_REASON)
        with self._lock:
            self._dropped_batches += 1
            self._dropped_events += int(rows["count"][rows["origin"] == LOSS_ORIGIN_RECORDER].sum())
        self._drops.append(rows)
        return False

    append = put

    def _put_record(self, item) -> bool:
        if self.recorder.error is None and not self._stop:
            try:
                self._queue.put_nowait(item)
                return True
            except queue.Full:
                pass
        with self._lock:
            self._dropped_records += 1
        return False

    def append_instrument_readings(self, *args) -> bool:
        return self._put_record(("readings", args))

    def append_loop_trace(self, name: str, time_s, **columns) -> bool:
        return self._put_record(("loop", (name, time_s), columns))

    def set_manifest(self, manifest: Mapping) -> None:
        if self.recorder.error is not None:
            raise self.recorder.error
        self._queue.put(("manifest", dict(manifest)), timeout=10)  # rare: waits for room, never lost

    def _run(self) -> None:
        rec = self.recorder
        while True:
            timeout = max(0.0, rec.flush_s - (time.monotonic() - rec._last_flush))
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            try:
                while self._drops:
                    rec.record_loss(self._drops.popleft())
                if item is None:
                    if self._stop:
                        return
                    rec.maybe_flush()
                    continue
                kind = item[0]
                if kind == "events":
                    tags_before = rec.tags
                    try:
                        rec.append(item[1])
                    except RecordingError:
                        if rec.tags == tags_before:  # the batch that met the failure: not in the file
                            with self._lock:
                                self._dropped_batches += 1
                                self._unrecorded_events += len(item[1])
                        raise
                elif kind == "readings":
                    rec.append_instrument_readings(*item[1])
                elif kind == "loop":
                    rec.append_loop_trace(*item[1], **item[2])
                elif kind == "manifest":
                    rec.set_manifest(item[1])
                elif kind == "stop":
                    return
            except RecordingError as exc:
                exc.with_traceback(None)
                del exc
                self._drain_after_error()
                return
            except Exception as exc:  # bad input must not kill the thread silently
                with self._lock:
                    self._dropped_records += 1
                self._last_exception = exc

    def _drain_after_error(self) -> None:
        """Count what was queued when the recording stopped; nothing vanishes uncounted."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item[0] == "events":
                with self._lock:
                    self._dropped_batches += 1
                    self._unrecorded_events += len(item[1])
            elif item[0] != "stop":
                with self._lock:
                    self._dropped_records += 1

    def status(self) -> RecorderStatus:
        rec = self.recorder
        st = rec.status()
        with self._lock:
            st.dropped_batches += self._dropped_batches
            st.dropped_records += self._dropped_records
            pending = sum(int(r["count"].sum()) for r in list(self._drops))
        st.lost_events += pending + self._unrecorded_events  # not in the file: lost all the same
        st.queue_batches = self._queue.qsize()
        return st

    def close(self) -> RecorderStatus:
        """Write what is queued, flush, close; raises RecordingError if the recording stopped."""
        self._stop = True
        if self._thread.is_alive():
            self._queue.put(("stop",))
            self._thread.join()
        rec = self.recorder
        if rec.error is None:
            try:
                while self._drops:
                    rec.record_loss(self._drops.popleft())
                rec.close()
            except RecordingError:
                pass
        st = self.status()
        if rec.error is not None:
            raise rec.error
        return st

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
