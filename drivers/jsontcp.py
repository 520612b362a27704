"""JSON messages over TCP, each message followed by a separator byte.

Single Quantum's controllers (Eos, Atlas) end each JSON message with ASCII ETB (0x17) on
the control port and stream counts as comma-separated text lines on a second port.
"""

from __future__ import annotations

import json

from .errors import ReplyError
from .transport import Transport

ETB = b"\x17"


class JsonMessageProtocol:
    def __init__(self, transport: Transport, *, separator: bytes = ETB):
        self.transport = transport
        self.separator = separator
        self.timeout_s = 1.0

    @staticmethod
    def encode(message: dict) -> bytes:
        return json.dumps(message).encode("utf-8")

    def send(self, message: dict) -> None:
        self.transport.write(self.encode(message) + self.separator, self.timeout_s)

    def read_message(self) -> dict:
        raw = self.transport.read_until(self.separator, self.timeout_s)
        body = raw[: -len(self.separator)]
        try:
            message = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ReplyError("reply is not JSON", raw) from None
        if not isinstance(message, dict):
            raise ReplyError("reply is not a JSON object", raw)
        return message
