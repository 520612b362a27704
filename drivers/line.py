"""Line-based ASCII: one command per line, one reply per line (or none for a set)."""

from __future__ import annotations

from .errors import ReplyError
from .transport import Transport


class LineProtocol:
    """Commands end with ``write_termination``; replies end with ``read_termination``."""

    def __init__(self, transport: Transport, *, write_termination: str = "\n", read_termination: str = "\n",
                 encoding: str = "ascii"):
        self.transport = transport
        self.write_termination = write_termination
        self.read_termination = read_termination.encode(encoding)
        self.encoding = encoding
        self.timeout_s = 1.0

    def send(self, command: str) -> None:
        self.transport.write((command + self.write_termination).encode(self.encoding), self.timeout_s)

    def read_line(self) -> str:
        raw = self.transport.read_until(self.read_termination, self.timeout_s)
        try:
            return raw[: -len(self.read_termination)].decode(self.encoding)
        except UnicodeDecodeError:
            raise ReplyError("reply is not ASCII text", raw) from None

    def ask(self, command: str) -> str:
        self.send(command)
        return self.read_line().strip()
