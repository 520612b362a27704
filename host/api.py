"""The daemon's ZeroMQ message format, shared by the daemon and its clients.

Control (REQ/DEALER -> ROUTER)::

    request:  [JSON {"id": any, "method": str, "params": {...}}]
    reply:    [JSON {"id": ..., "result": ...,  "arrays": [descriptor, ...]}, array frames...]
          or  [JSON {"id": ..., "error": {"type": str, "message": str}}]

Streams (SUB <- PUB), one message per publication::

    [topic, JSON {"seq": n, "time_s": wall time, ..., "arrays": [descriptor, ...]}, array frames...]

``seq`` counts the messages of each topic from 0, so a subscriber sees exactly how many it
missed (a slow subscriber loses messages at its high-water mark; the daemon never waits).

An array travels as one raw frame; its descriptor names it: ``{"name": "events", "dtype":
numpy dtype description, "shape": [...]}`` (structured dtypes as ``np.dtype.descr`` lists).
Topics: ``events``, ``rates``, ``heralds``, ``loops.<name>``, ``instruments``, ``log``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

MAX_REQUEST_BYTES = 1 << 20  # a control request larger than this gets an error reply
TOPICS = ("events", "rates", "heralds", "instruments", "log")


class ApiError(Exception):
    """An error reply from the daemon, raised by the client: ``type`` and message."""

    def __init__(self, type_: str, message: str):
        super().__init__(f"{type_}: {message}")
        self.type = type_
        self.message = message


def _dtype_to_json(dtype: np.dtype):
    return dtype.descr if dtype.fields else dtype.str


def _dtype_from_json(spec) -> np.dtype:
    if isinstance(spec, str):
        return np.dtype(spec)
    return np.dtype([tuple(field) if len(field) == 2 else (field[0], field[1], tuple(field[2])) for field in spec])


def pack(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> list[bytes]:
    """A JSON header plus one raw frame per array, with descriptors in the header."""
    frames = []
    descriptors = []
    for name, array in (arrays or {}).items():
        array = np.ascontiguousarray(array)
        descriptors.append({"name": name, "dtype": _dtype_to_json(array.dtype), "shape": list(array.shape)})
        frames.append(array.data)
    if descriptors:
        header = {**header, "arrays": descriptors}
    return [json.dumps(header, default=_json_default).encode(), *frames]


def unpack(frames: list[bytes]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    header = json.loads(frames[0])
    arrays = {}
    for desc, frame in zip(header.get("arrays", []), frames[1:]):
        dtype = _dtype_from_json(desc["dtype"])
        arrays[desc["name"]] = np.frombuffer(frame, dtype=dtype).reshape(desc["shape"])
    return header, arrays


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
