"""The link protocol: framed packets over any byte pipe (USB-UART, TCP, a cocotb UART model).

docs/link.md describes it for humans; this module is the definition both sides use.

Frame (all integers little-endian)::

    magic 0x51 0xAE | type u8 | seq u8 | length u16 | payload (length bytes) | crc32 u32

``crc32`` is CRC-32/ISO-HDLC (zlib.crc32, amaranth.lib.crc catalog CRC32_ISO_HDLC) over
type, seq, length and payload. A receiver that loses sync (garbage, a cut stream, a bad CRC)
drops one byte and searches for the next magic: it resynchronises within one frame and
counts every byte it skipped.

Requests go host -> device and carry a host sequence number; the reply echoes it. EVENTS
frames go device -> host unsolicited and carry the index of their first word and the epoch in
force before it, so each frame decodes on its own and a lost frame costs exactly the words
in it, which the host counts from the index gap.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from .events import PROTOCOL_VERSION

MAGIC = b"\x51\xae"
HEADER = struct.Struct("<2sBBH")  # magic, type, seq, length
CRC = struct.Struct("<I")
MAX_PAYLOAD = 8 + 8 * 1024  # one EVENTS frame carries at most 1024 words
MAX_EVENT_WORDS = 1024
FRAME_OVERHEAD = HEADER.size + CRC.size


class FrameType(enum.IntEnum):
    HELLO = 0x01  # host: who are you? payload empty
    REG_READ = 0x02  # host: addr u16, count u8
    REG_WRITE = 0x03  # host: addr u16, value u32
    IDENTIFY = 0x81  # device: see Identity
    REG_DATA = 0x82  # device: addr u16, count u8, values u32 x count
    REG_ACK = 0x83  # device: addr u16, value u32 (as read back after the write)
    ERROR = 0x8F  # device: request type u8, code u8 (ErrorCode), addr u16
    EVENTS = 0x90  # device: first word index u32, epoch u32, words u64 x n


class ErrorCode(enum.IntEnum):
    BAD_ADDRESS = 1  # no register there
    READ_ONLY = 2  # write to a read-only register
    BAD_REQUEST = 3  # unknown type or malformed payload


class LinkError(IOError):
    """The link failed in a way the caller must hear about (timeout, device error reply)."""


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes


def encode_frame(frame_type: int, seq: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    head = HEADER.pack(MAGIC, frame_type, seq & 0xFF, len(payload))
    return head + payload + CRC.pack(zlib.crc32(head[2:] + payload))


# --- payloads --------------------------------------------------------------------------

IDENTITY = struct.Struct("<HBBHI8s16s")


@dataclass(frozen=True)
class Identity:
    """What the device says it is (IDENTIFY payload)."""

    protocol_version: int
    channels: int
    oversampling: int
    bin_ps: int
    sys_clk_khz: int
    gateware_hash: str  # 16 hex digits: the first 8 bytes of the bitstream's content hash
    board: str

    def pack(self) -> bytes:
        return IDENTITY.pack(
            self.protocol_version, self.channels, self.oversampling, self.bin_ps, self.sys_clk_khz,
            bytes.fromhex(self.gateware_hash), self.board.encode()[:16],
        )

    @classmethod
    def unpack(cls, payload: bytes) -> "Identity":
        if len(payload) < 2:
            raise LinkError(f"IDENTIFY payload of {len(payload)} bytes is too short")
        version = struct.unpack_from("<H", payload)[0]
        if version != PROTOCOL_VERSION or len(payload) != IDENTITY.size:
            # Another version may lay the rest out differently: report only what is certain.
            return cls(version, 0, 0, 0, 0, "0" * 16, "?")
        v, ch, ovs, bin_ps, clk, ghash, board = IDENTITY.unpack(payload)
        return cls(v, ch, ovs, bin_ps, clk, ghash.hex(), board.rstrip(b"\0").decode(errors="replace"))


def reg_read_payload(address: int, count: int = 1) -> bytes:
    return struct.pack("<HB", address, count)


def reg_write_payload(address: int, value: int) -> bytes:
    return struct.pack("<HI", address, value & 0xFFFF_FFFF)


def reg_data_payload(address: int, values: list[int]) -> bytes:
    return struct.pack("<HB", address, len(values)) + struct.pack(f"<{len(values)}I", *values)


def parse_reg_data(payload: bytes) -> tuple[int, list[int]]:
    address, count = struct.unpack_from("<HB", payload)
    if len(payload) != 3 + 4 * count:
        raise LinkError(f"REG_DATA for {count} registers has {len(payload)} bytes")
    return address, list(struct.unpack_from(f"<{count}I", payload, 3))


def error_payload(request_type: int, code: ErrorCode, address: int = 0) -> bytes:
    return struct.pack("<BBH", request_type, int(code), address)


def events_payload(first_index: int, epoch: int, words: np.ndarray) -> bytes:
    return struct.pack("<II", first_index & 0xFFFF_FFFF, epoch) + np.ascontiguousarray(words, "<u8").tobytes()


def parse_events(payload: bytes) -> tuple[int, int, np.ndarray]:
    if len(payload) < 8 or (len(payload) - 8) % 8:
        raise LinkError(f"EVENTS payload of {len(payload)} bytes is not 8 + 8n")
    first_index, epoch = struct.unpack_from("<II", payload)
    return first_index, epoch, np.frombuffer(payload, "<u8", offset=8)


# --- receiving -------------------------------------------------------------------------


@dataclass
class ParserStats:
    frames: int = 0
    bytes_skipped: int = 0  # garbage between frames, and bytes of frames that failed
    crc_errors: int = 0
    bad_lengths: int = 0


@dataclass
class FrameParser:
    """Incremental frame parser: feed bytes as they come, take complete, valid frames."""

    stats: ParserStats = field(default_factory=ParserStats)
    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames = []
        buf = self._buffer
        pos = 0
        while True:
            start = buf.find(MAGIC, pos)
            if start < 0:
                # Keep a trailing first magic byte: the second may come in the next read. Only
                # one not yet consumed: the last byte of a frame just taken may be 0x51 too.
                keep = 1 if len(buf) > pos and buf[-1] == MAGIC[0] else 0
                self.stats.bytes_skipped += len(buf) - pos - keep
                pos = len(buf) - keep
                break
            self.stats.bytes_skipped += start - pos
            pos = start
            if len(buf) - pos < HEADER.size:
                break
            _, ftype, seq, length = HEADER.unpack_from(buf, pos)
            if length > MAX_PAYLOAD:
                self.stats.bad_lengths += 1
                self.stats.bytes_skipped += 1
                pos += 1
                continue
            end = pos + HEADER.size + length + CRC.size
            if len(buf) < end:
                break
            body = bytes(buf[pos + 2 : end - CRC.size])
            (crc,) = CRC.unpack_from(buf, end - CRC.size)
            if zlib.crc32(body) != crc:
                self.stats.crc_errors += 1
                self.stats.bytes_skipped += 1
                pos += 1
                continue
            frames.append(Frame(ftype, seq, body[4:]))
            self.stats.frames += 1
            pos = end
        del buf[:pos]
        return frames

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)
