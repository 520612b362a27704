"""HDF5 recordings in Photon-HDF5 layout, plus qnode's own groups.

Layout (docs/formats.md has the full table)::

    /photon_data/timestamps                 int64, one per detector tag
    /photon_data/timestamps_specs/timestamps_unit   1e-12 (timestamps are picoseconds)
    /photon_data/detectors                  uint8, the channel of each tag
    /setup, /identity, /provenance          Photon-HDF5 metadata
    /qnode/events                           every non-tag event (SYNC, HERALD, COINCIDENCE,
                                            LOSS) as (time_ps, channel, kind, aux)
    /qnode/loss                             loss records: (time_ps, channel, reason, count)
    /qnode/config                           the lab config (TOML text) the run used

Datasets are chunked and compressed (HDF5 shuffle + gzip: every HDF5 reader decodes them
without plugins) and grow batch by batch. Nothing is held back: ``append`` writes through to
HDF5 and ``flush`` makes it durable.
"""

from __future__ import annotations

import datetime as dt
import getpass
import platform
from importlib.metadata import version as package_version
from pathlib import Path

import h5py
import numpy as np

from qnode.firmware.events import EVENT_DTYPE, LOSS_COUNT_BITS, LOSS_COUNT_MAX, Kind

LOSS_DTYPE = np.dtype([("time_ps", "<i8"), ("channel", "u1"), ("reason", "u1"), ("count", "<u4")])

CHUNK = 1 << 16


def _growable(group: h5py.Group, name: str, dtype, compression: str | None) -> h5py.Dataset:
    kwargs = {}
    if compression == "gzip":
        kwargs = dict(compression="gzip", compression_opts=4, shuffle=True)
    elif compression == "lzf":
        kwargs = dict(compression="lzf", shuffle=True)
    return group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(CHUNK,), **kwargs)


def _append(dataset: h5py.Dataset, values: np.ndarray) -> None:
    n = len(values)
    if n == 0:
        return
    start = dataset.shape[0]
    dataset.resize((start + n,))
    dataset[start:] = values


class Recorder:
    """Writes decoded event batches to one HDF5 file."""

    def __init__(
        self,
        path: str | Path,
        *,
        channel_names: dict[int, str],
        config_text: str = "",
        description: str = "",
        compression: str = "gzip",
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        comp = None if compression == "none" else compression
        self.file = h5py.File(self.path, "w", libver="latest")
        f = self.file
        f.create_dataset("description", data=description or "qnode recording")
        f.create_dataset("acquisition_duration", data=0.0)

        pd = f.create_group("photon_data")
        self._timestamps = _growable(pd, "timestamps", np.int64, comp)
        self._detectors = _growable(pd, "detectors", np.uint8, comp)
        specs = pd.create_group("timestamps_specs")
        specs.create_dataset("timestamps_unit", data=1e-12)

        setup = f.create_group("setup")
        for key, value in dict(
            num_pixels=len(channel_names), num_spots=1, num_spectral_ch=1,
            num_polarization_ch=1, num_split_ch=1, modulated_excitation=False,
            excitation_alternated=[False], lifetime=False,
        ).items():
            setup.create_dataset(key, data=value)
        setup.create_dataset("detectors_names", data=[f"{ch}:{name}" for ch, name in sorted(channel_names.items())])

        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        identity = f.create_group("identity")
        identity.create_dataset("creation_time", data=now)
        identity.create_dataset("software", data="qnode")
        identity.create_dataset("software_version", data=package_version("qnode"))
        identity.create_dataset("format_name", data="Photon-HDF5")
        identity.create_dataset("format_version", data="0.5")
        prov = f.create_group("provenance")
        prov.create_dataset("hostname", data=platform.node())
        prov.create_dataset("user", data=getpass.getuser())

        q = f.create_group("qnode")
        self._events = _growable(q, "events", EVENT_DTYPE, comp)
        self._loss = _growable(q, "loss", LOSS_DTYPE, comp)
        q.create_dataset("config", data=config_text)
        self.tags = 0
        self.lost_events = 0
        self.first_ps: int | None = None
        self.last_ps: int | None = None

    def append(self, events: np.ndarray) -> None:
        """Write one batch of decoded events (EVENT_DTYPE)."""
        is_tag = events["kind"] == Kind.TAG
        tags = events[is_tag]
        _append(self._timestamps, tags["time_ps"])
        _append(self._detectors, tags["channel"])
        others = events[~is_tag]
        _append(self._events, others)
        loss = others[others["kind"] == Kind.LOSS]
        if len(loss):
            rec = np.empty(len(loss), LOSS_DTYPE)
            rec["time_ps"] = loss["time_ps"]
            rec["channel"] = loss["channel"]
            rec["reason"] = loss["aux"] >> LOSS_COUNT_BITS
            rec["count"] = loss["aux"] & LOSS_COUNT_MAX
            _append(self._loss, rec)
            self.lost_events += int(rec["count"].sum())
        self.tags += len(tags)
        if len(events):
            if self.first_ps is None:
                self.first_ps = int(events["time_ps"][0])
            self.last_ps = int(events["time_ps"][-1])

    def record_duration(self, seconds: float) -> None:
        self.file["acquisition_duration"][()] = seconds

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        if self.file.id.valid:
            self.file.flush()
            self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
