"""SCPI over a line protocol, with the error queue polled after every setting.

A set command has no reply, so the only way to know it was accepted is to ask. After each
``write`` the protocol reads the instrument's error queue (``:SYST:ERR?`` for SCPI-1999
instruments, ``*ESR?`` for IEEE-488.2-only ones such as Lake Shore controllers) and raises
:class:`InstrumentReportedError` with what the instrument said.
"""

from __future__ import annotations

from .errors import InstrumentReportedError, ReplyError
from .line import LineProtocol

# Standard event status register bits that mean a command was not carried out (IEEE 488.2).
ESR_QUERY_ERROR = 1 << 2
ESR_DEVICE_ERROR = 1 << 3
ESR_EXECUTION_ERROR = 1 << 4
ESR_COMMAND_ERROR = 1 << 5
_ESR_NAMES = {ESR_QUERY_ERROR: "query error", ESR_DEVICE_ERROR: "device error",
              ESR_EXECUTION_ERROR: "execution error", ESR_COMMAND_ERROR: "command error"}


def parse_float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ReplyError("expected a number", text) from None


def parse_int(text: str) -> int:
    try:
        return int(text.strip().lstrip("+"))
    except ValueError:
        raise ReplyError("expected an integer", text) from None


def parse_floats(text: str, count: int) -> list[float]:
    parts = text.split(",")
    if len(parts) != count:
        raise ReplyError(f"expected {count} comma-separated numbers", text)
    return [parse_float(p) for p in parts]


class ScpiProtocol(LineProtocol):
    """``error_check`` is "syst_err" (``:SYST:ERR?`` until 0), "esr" (``*ESR?`` bits) or "none"."""

    MAX_QUEUED_ERRORS = 20  # an error queue that never empties is itself broken

    def __init__(self, transport, *, error_check: str = "syst_err", error_query: str = ":SYST:ERR?", **kwargs):
        super().__init__(transport, **kwargs)
        if error_check not in ("syst_err", "esr", "none"):
            raise ValueError(f"unknown error_check {error_check!r}")
        self.error_check = error_check
        self.error_query = error_query

    def query(self, command: str) -> str:
        return self.ask(command)

    def write(self, command: str) -> None:
        self.send(command)
        self.check_errors()

    def check_errors(self) -> None:
        if self.error_check == "syst_err":
            errors = []
            for _ in range(self.MAX_QUEUED_ERRORS):
                reply = self.ask(self.error_query)
                code_text, _, message = reply.partition(",")
                code = parse_int(code_text)
                if code == 0:
                    break
                errors.append(f"{code},{message.strip()}")
            else:
                raise ReplyError(f"error queue did not empty after {self.MAX_QUEUED_ERRORS} reads", reply)
            if errors:
                raise InstrumentReportedError("instrument reported " + "; ".join(errors), "; ".join(errors))
        elif self.error_check == "esr":
            reply = self.ask("*ESR?")
            esr = parse_int(reply)
            bad = [name for bit, name in _ESR_NAMES.items() if esr & bit]
            if bad:
                raise InstrumentReportedError("instrument reported " + ", ".join(bad) + f" (*ESR? = {esr})", reply)
