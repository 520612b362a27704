"""What goes wrong talking to an instrument, said so a person can act on it.

Every error names the instrument, the command that was being sent and what came back, e.g.::

    cryostat (lakeshore336 @ 127.0.0.1:7777): 'KRDG? A' -> no reply within 0.2 s
"""

from __future__ import annotations


class InstrumentError(RuntimeError):
    """An instrument did something other than what its manual says."""

    def __init__(self, instrument: str, command: str | None, problem: str, reply: bytes | str | None = None):
        self.instrument = instrument
        self.command = command
        self.problem = problem
        self.reply = reply
        text = f"{instrument}: "
        if command is not None:
            text += f"{command!r} -> "
        text += problem
        if reply is not None:
            text += f" (got {reply!r})"
        super().__init__(text)


class InstrumentTimeout(InstrumentError):
    """No (complete) reply within the driver's timeout. The driver is now suspect."""


class InstrumentConnectionError(InstrumentError):
    """The link itself failed: refused, reset, closed by the instrument."""


class InstrumentSuspect(InstrumentError):
    """The driver lost the instrument and waits for its next reconnect attempt."""


class ValueOutOfRange(ValueError):
    """A requested setting outside what the instrument (or the lab) allows. Nothing was sent."""

    def __init__(self, instrument: str, name: str, value, low, high, unit: str = ""):
        self.instrument = instrument
        self.name = name
        self.value = value
        self.low = low
        self.high = high
        u = f" {unit}" if unit else ""
        super().__init__(f"{instrument}: {name}={value}{u} is outside [{low}, {high}]{u}; nothing was sent")


class ReplyError(Exception):
    """Raised by protocols for a reply that does not parse; the driver adds who and what."""

    def __init__(self, problem: str, reply: bytes | str | None = None):
        super().__init__(problem)
        self.problem = problem
        self.reply = reply


class InstrumentReportedError(Exception):
    """Raised by protocols when the instrument's own error queue reports a problem."""

    def __init__(self, problem: str, reply: bytes | str | None = None):
        super().__init__(problem)
        self.problem = problem
        self.reply = reply
