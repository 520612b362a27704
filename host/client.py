"""Python client of the qnode daemon, for notebooks and scripts.

    from qnode.host.client import Client, Subscriber
    node = Client()                        # tcp://127.0.0.1:5555
    node.call("status")["rates_hz"]
    g2 = node.call("measure.g2", channel_a=1, channel_b=2, bin_ps=100, range_ps=20_000)
    g2["counts"], g2["delays_ps"]          # numpy arrays
    for topic, header, arrays in Subscriber(topics=["rates"]):
        print(header["rates_hz"])

Every call has a timeout; an error reply raises :class:`~qnode.host.api.ApiError` with the
daemon's error type and message.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable, Iterator

import zmq

from . import api
from .daemon import DEFAULT_CONTROL, DEFAULT_STREAM


class Client:
    def __init__(self, url: str = DEFAULT_CONTROL, timeout_s: float = 5.0):
        self.url = url
        self.timeout_s = timeout_s
        self._ctx = zmq.Context.instance()
        self._socket = self._ctx.socket(zmq.DEALER)  # DEALER: a late reply cannot wedge us
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(url)
        self._ids = itertools.count(1)

    def call(self, method: str, **params):
        """Send one request and return its result (arrays merged into a dict result)."""
        request_id = next(self._ids)
        self._socket.send(json.dumps({"id": request_id, "method": method, "params": params}).encode())
        deadline = time.monotonic() + self.timeout_s
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not self._socket.poll(left_ms):
                raise TimeoutError(f"no reply to {method!r} from the daemon at {self.url} within "
                                   f"{self.timeout_s} s (is `qnode daemon` running?)")
            header, arrays = api.unpack(self._socket.recv_multipart())
            if header.get("id") != request_id:
                continue  # the reply to an earlier call that timed out
            if "error" in header:
                raise api.ApiError(header["error"]["type"], header["error"]["message"])
            result = header.get("result")
            if arrays:
                result = {**(result or {}), **arrays}
            return result

    def close(self) -> None:
        self._socket.close(0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Subscriber:
    """Iterate over (topic, header, arrays) from the daemon's streams; ``missed[topic]`` counts
    messages that never arrived (gaps in ``seq``)."""

    def __init__(self, url: str = DEFAULT_STREAM, topics: Iterable[str] = api.TOPICS, hwm: int = 1000,
                 rcvbuf_bytes: int | None = None):
        self._socket = zmq.Context.instance().socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVHWM, hwm)
        if rcvbuf_bytes is not None:
            self._socket.setsockopt(zmq.RCVBUF, rcvbuf_bytes)
        for topic in topics:
            self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._socket.connect(url)
        self.missed: dict[str, int] = {}
        self.received: dict[str, int] = {}
        self._next_seq: dict[str, int] = {}

    def receive(self, timeout_s: float | None = None):
        """The next message, or None after ``timeout_s``."""
        if timeout_s is not None and not self._socket.poll(int(timeout_s * 1000)):
            return None
        topic, *frames = self._socket.recv_multipart()
        topic = topic.decode()
        header, arrays = api.unpack(frames)
        seq = header["seq"]
        expected = self._next_seq.get(topic)
        if expected is not None and seq > expected:
            self.missed[topic] = self.missed.get(topic, 0) + seq - expected
        self._next_seq[topic] = seq + 1
        self.received[topic] = self.received.get(topic, 0) + 1
        return topic, header, arrays

    def __iter__(self) -> Iterator:
        while True:
            yield self.receive()

    def close(self) -> None:
        self._socket.close(0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
