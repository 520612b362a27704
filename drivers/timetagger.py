"""Host driver for the qnode time tagger (the gateware, or the simulated FPGA) over its link.

Opens any pyserial URL: ``/dev/ttyUSB0`` (the ULX3S FTDI UART), ``socket://127.0.0.1:PORT``
(the simulated FPGA), ``loop://`` (tests). Opening identifies the device and refuses one that
speaks another protocol version. Registers are read and written by their names in the firmware
register map. ``read_events`` returns numpy batches of decoded events; words lost on the link
come back as LOSS records (reason LINK, channel ``LINK_LOSS_CHANNEL``) with their exact count.

Every call has a finite timeout. A broken link (device unplugged, server restarted) is reopened
with capped backoff on the next call; the words that went missing meanwhile are counted.
"""

from __future__ import annotations

import logging
import select
import time
from dataclasses import dataclass

import numpy as np
import serial

from qnode.firmware import link
from qnode.firmware.events import (
    EVENT_DTYPE, LOSS_COUNT_MAX, MAX_CHANNELS, PROTOCOL_VERSION, Kind, LossReason, ProtocolVersionError,
    StreamDecoder,
)
from qnode.firmware.registers import REGISTER_MAP

log = logging.getLogger(__name__)

LINK_LOSS_CHANNEL = MAX_CHANNELS - 1  # link losses belong to no one input: channel 63
READ_CHUNK = 1 << 16
BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


@dataclass
class LinkStats:
    frames: int = 0
    event_frames: int = 0
    words: int = 0
    lost_words: int = 0  # counted from gaps in the EVENTS word index
    crc_errors: int = 0
    bytes_skipped: int = 0
    reconnects: int = 0
    stream_restarts: int = 0  # the device started a new stream (reset, restarted server)


class TimeTagger:
    """The time tagger behind a link URL."""

    def __init__(self, url: str, *, baud: int = 3_000_000, timeout_s: float = 1.0, name: str = "fpga"):
        self.url = url
        self.baud = baud
        self.timeout_s = timeout_s
        self.name = name
        self.identity: link.Identity | None = None
        self.stats = LinkStats()
        self.suspect = False
        self._port: serial.SerialBase | None = None
        self._parser = link.FrameParser()
        self._seq = 0
        self._replies: dict[int, link.Frame] = {}
        self._batches: list[np.ndarray] = []
        self._early_frames: list[link.Frame] = []
        self._decoder: StreamDecoder | None = None
        self._next_index: int | None = None
        self._last_time_ps = 0
        self._time_offset_ps = 0  # keeps time monotonic across device restarts

    # -- connection -------------------------------------------------------------------

    def open(self) -> link.Identity:
        """Connect and identify; raises ProtocolVersionError on a version mismatch."""
        try:
            # timeout=0: reads return what has arrived; _pump waits with select instead.
            self._port = serial.serial_for_url(self.url, baudrate=self.baud, timeout=0,
                                               write_timeout=self.timeout_s)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise link.LinkError(f"{self.name}: cannot open {self.url}: {exc}") from None
        self._parser = link.FrameParser()
        identity = link.Identity.unpack(self._request(link.FrameType.HELLO, b"").payload)
        if identity.protocol_version != PROTOCOL_VERSION:
            self.close()
            raise ProtocolVersionError(identity.protocol_version)
        if self.identity is not None and identity.gateware_hash != self.identity.gateware_hash:
            log.warning("%s: gateware changed from %s to %s", self.name,
                        self.identity.gateware_hash, identity.gateware_hash)
        self.identity = identity
        if self._decoder is None:
            self._decoder = StreamDecoder(bin_ps=identity.bin_ps, channels=identity.channels)
        self.suspect = False
        early, self._early_frames = self._early_frames, []
        for frame in early:  # events that came in while we asked who the device is
            self._take_events(frame)
        return identity

    def close(self) -> None:
        if self._port is not None:
            try:
                self._port.close()
            except (serial.SerialException, OSError):
                pass
            self._port = None

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def bin_ps(self) -> int:
        return self.identity.bin_ps

    def reconnect(self) -> link.Identity:
        """Reopen the link with capped backoff (total under ~4 s), then identify again."""
        self.close()
        self.stats.reconnects += 1
        last: Exception | None = None
        for delay in BACKOFF_S:
            time.sleep(delay)
            try:
                return self.open()
            except link.LinkError as exc:
                last = exc
                self.close()
        raise link.LinkError(f"{self.name}: {self.url} did not come back: {last}")

    # -- registers ----------------------------------------------------------------------

    def read_register(self, name: str, index: int = 0) -> int:
        address = REGISTER_MAP.address(name, index)
        reply = self._request(link.FrameType.REG_READ, link.reg_read_payload(address, 1))
        _, values = link.parse_reg_data(reply.payload)
        return values[0]

    def write_register(self, name: str, value: int, index: int = 0) -> int:
        """Write, and return the value the device reads back."""
        reg = REGISTER_MAP[name]
        if not 0 <= value <= reg.mask:
            raise ValueError(f"{name}[{index}] = {value} does not fit its {reg.width} bits")
        address = REGISTER_MAP.address(name, index)
        reply = self._request(link.FrameType.REG_WRITE, link.reg_write_payload(address, value))
        return link.struct.unpack("<HI", reply.payload)[1]

    # -- events -------------------------------------------------------------------------

    def read_events(self, timeout_s: float = 0.1) -> np.ndarray:
        """Decoded events that arrived within ``timeout_s`` (possibly none), in stream order."""
        deadline = time.monotonic() + timeout_s
        while not self._batches and time.monotonic() < deadline:
            self._pump()
        for _ in range(64):  # then take what else has arrived, up to 64 reads (4 MiB)
            if not self._pump(block=False):
                break
        batches, self._batches = self._batches, []
        if not batches:
            return np.empty(0, EVENT_DTYPE)
        return batches[0] if len(batches) == 1 else np.concatenate(batches)

    @property
    def decode_stats(self):
        return self._decoder.stats if self._decoder else None

    # -- internals ----------------------------------------------------------------------

    def _request(self, frame_type: int, payload: bytes) -> link.Frame:
        self._seq = (self._seq + 1) & 0xFF
        seq = self._seq
        self._write(link.encode_frame(frame_type, seq, payload))
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            self._pump()
            reply = self._replies.pop(seq, None)
            if reply is None:
                continue
            if reply.type == link.FrameType.ERROR:
                req, code, address = link.struct.unpack("<BBH", reply.payload)
                raise link.LinkError(
                    f"{self.name}: {link.FrameType(frame_type).name} at 0x{address:04x} refused: "
                    f"{link.ErrorCode(code).name}")
            return reply
        self.suspect = True
        raise link.LinkError(
            f"{self.name}: no reply to {link.FrameType(frame_type).name} from {self.url} within "
            f"{self.timeout_s} s")

    def _write(self, data: bytes) -> None:
        if self._port is None:
            self.reconnect()
        try:
            self._port.write(data)
        except (serial.SerialException, OSError) as exc:
            log.warning("%s: write failed (%s), reconnecting", self.name, exc)
            self.reconnect()
            self._port.write(data)

    def _pump(self, block: bool = True) -> int:
        """Read what the link has and route it: replies to waiters, events to batches.
        Returns the number of bytes read."""
        if self._port is None:
            self.reconnect()
        try:
            if block:
                self._wait_readable(0.01)
            data = self._port.read(READ_CHUNK)
        except (serial.SerialException, OSError) as exc:
            log.warning("%s: link broke (%s), reconnecting", self.name, exc)
            self.suspect = True
            self.reconnect()
            return 0
        if not data:
            return 0
        before = self._parser.stats
        frames = self._parser.feed(data)
        self.stats.crc_errors = before.crc_errors
        self.stats.bytes_skipped = before.bytes_skipped
        for frame in frames:
            self.stats.frames += 1
            if frame.type == link.FrameType.EVENTS:
                if self._decoder is None:
                    self._early_frames.append(frame)
                else:
                    self._take_events(frame)
            else:
                self._replies[frame.seq] = frame
        return len(data)

    def _wait_readable(self, timeout_s: float) -> None:
        try:
            fd = self._port.fileno()
        except (AttributeError, OSError, serial.SerialException):
            fd = None  # loop:// and other in-memory ports: poll
        if fd is None:
            if not self._port.in_waiting:
                time.sleep(min(timeout_s, 0.001))
            return
        select.select([fd], [], [], timeout_s)

    def _take_events(self, frame: link.Frame) -> None:
        try:
            index, epoch, words = link.parse_events(frame.payload)
        except link.LinkError:
            self.stats.crc_errors += 1
            return
        self.stats.event_frames += 1
        self.stats.words += len(words)
        out = []
        decoder = self._decoder
        if self._next_index is not None and index != self._next_index:
            gap = (index - self._next_index) & 0xFFFF_FFFF
            if gap < 1 << 31:  # words went missing on the link
                self.stats.lost_words += gap
                out.append(self._link_loss(gap))
            else:  # the index went back: the device started a new stream
                self.stats.stream_restarts += 1
                self._time_offset_ps = self._last_time_ps + decoder.bin_ps
                out.append(self._link_loss(0))
        self._next_index = (index + len(words)) & 0xFFFF_FFFF
        decoder.epoch = epoch
        events = decoder.decode(words)
        if self._time_offset_ps:
            events["time_ps"] += self._time_offset_ps
        if len(events):
            self._last_time_ps = int(events["time_ps"].max())
        out.append(events)
        self._batches.extend(b for b in out if len(b))

    def _link_loss(self, count: int) -> np.ndarray:
        """LOSS records for ``count`` words lost on the link (count 0: unknown, a restart)."""
        n_records = max(1, -(-count // LOSS_COUNT_MAX))
        rec = np.zeros(n_records, EVENT_DTYPE)
        rec["time_ps"] = self._last_time_ps
        rec["channel"] = LINK_LOSS_CHANNEL
        rec["kind"] = Kind.LOSS
        counts = np.full(n_records, LOSS_COUNT_MAX, np.uint32)
        counts[-1] = count - LOSS_COUNT_MAX * (n_records - 1)
        rec["aux"] = (int(LossReason.LINK) << 18) | counts
        return rec
