"""The SCPI error queue that SCPI-1999 simulators share (``:SYST:ERR?``)."""

from __future__ import annotations

from collections import deque

UNDEFINED_HEADER = (-113, "Undefined header")
DATA_OUT_OF_RANGE = (-222, "Data out of range")
DATA_TYPE_ERROR = (-104, "Data type error")
SETTINGS_CONFLICT = (-221, "Settings conflict")


class ErrorQueue:
    def __init__(self, no_error: str = '0,"No error"', template: str = '{code},"{message}"'):
        self.queue: deque[tuple[int, str]] = deque(maxlen=20)
        self.no_error = no_error
        self.template = template

    def push(self, error: tuple[int, str]) -> None:
        self.queue.append(error)

    def pop(self) -> str:
        if not self.queue:
            return self.no_error
        code, message = self.queue.popleft()
        return self.template.format(code=code, message=message)

    def clear(self) -> None:
        self.queue.clear()


def normalise_header(header: str, long_forms: dict[str, str]) -> str:
    """Upper-case, one leading colon, SCPI long forms shortened (':WAVELENGTH' -> ':WAV')."""
    header = header.upper()
    query = header.endswith("?")
    parts = header.rstrip("?").lstrip(":").split(":")
    parts = [long_forms.get(p, p) for p in parts]
    return ":" + ":".join(parts) + ("?" if query else "")
