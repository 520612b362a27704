"""What every driver shares: open without touching outputs, name errors, reconnect with backoff.

A driver calls :meth:`Instrument._call` around each exchange with the instrument. That is
where failures become errors that say which instrument, which command and what came back,
and where a timeout or a broken link marks the driver *suspect*: late replies are flushed,
the link is closed, and the next call reconnects (and re-identifies the instrument) first.
A reconnect that fails is not retried on every call: the next attempt waits
``backoff_initial_s`` doubled per failure up to ``backoff_max_s``; calls in between fail at
once with :class:`InstrumentSuspect` instead of hammering a dead instrument.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

from .errors import (InstrumentConnectionError, InstrumentError, InstrumentReportedError, InstrumentSuspect,
                     InstrumentTimeout, ReplyError, ValueOutOfRange)
from .transport import Transport, TransportTimeout

T = TypeVar("T")


class Instrument:
    """Base of every driver. Subclasses set ``model`` and implement ``_identify``."""

    model = "instrument"

    def __init__(self, name: str, transport: Transport, *, timeout_s: float = 1.0,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive: every exchange needs a finite timeout")
        self.name = name
        self.transport = transport
        self.timeout_s = timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._clock = clock
        self.identity: str = ""
        self.suspect = False
        self.last_error: InstrumentError | None = None
        self.reconnects = 0  # successful reconnects since open()
        self.failed_reconnects = 0  # consecutive failures of the current outage
        self.next_reconnect_at: float = 0.0
        # Called with the driver after each successful reconnect: the instrument may have
        # rebooted, and whoever owns its settings (a loop, the daemon) may want to re-apply them.
        self.on_reconnect: list[Callable[["Instrument"], None]] = []
        # One exchange at a time: a loop thread and an API thread may share a driver.
        self._lock = threading.RLock()

    # --- naming ----------------------------------------------------------------------
    @property
    def label(self) -> str:
        return f"{self.name} ({self.model} @ {self.transport.address})"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}{' suspect' if self.suspect else ''}>"

    # --- life cycle -------------------------------------------------------------------
    def open(self):
        """Connect and identify. Reads only; never changes an output."""
        self.suspect = False
        self.failed_reconnects = 0
        try:
            self.transport.open(self.timeout_s)
        except (TransportTimeout, OSError) as exc:
            raise InstrumentConnectionError(self.label, None, f"cannot connect: {exc}") from None
        self._configure_protocol()
        self._call("identify", self._identify)
        return self

    def close(self) -> None:
        self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def snapshot(self) -> dict:
        """What the instrument is doing now, for the record (read-only queries; units in keys)."""
        return {"name": self.name, "model": self.model, "address": self.transport.address,
                "identity": self.identity, "suspect": self.suspect, **self._readings()}

    def _readings(self) -> dict:
        return {}

    def _configure_protocol(self) -> None:
        """Push ``timeout_s`` into the protocol (subclasses own a ``protocol`` attribute)."""
        protocol = getattr(self, "protocol", None)
        if protocol is not None:
            protocol.timeout_s = self.timeout_s

    def _identify(self) -> None:
        """Ask who is there (read-only) and refuse the wrong model."""
        raise NotImplementedError

    # --- checks -----------------------------------------------------------------------
    def _check_range(self, name: str, value: float, low: float, high: float, unit: str = "") -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueOutOfRange(self.label, name, value, low, high, unit) from None
        if not (low <= number <= high):  # also rejects NaN
            raise ValueOutOfRange(self.label, name, value, low, high, unit)
        return number

    # --- every exchange goes through here ----------------------------------------------
    def _call(self, command: str, exchange: Callable[[], T]) -> T:
        with self._lock:
            return self._call_locked(command, exchange)

    def _call_locked(self, command: str, exchange: Callable[[], T]) -> T:
        self._ensure_connected(command)
        try:
            return exchange()
        except TransportTimeout as exc:
            late = self._flush()
            reply = exc.partial or late or None
            self._mark_suspect(InstrumentTimeout(self.label, command, f"no reply within {self.timeout_s} s", reply))
            raise self.last_error from None
        except (ConnectionError, OSError) as exc:
            self._mark_suspect(InstrumentConnectionError(self.label, command, f"link failed: {exc}"))
            raise self.last_error from None
        except ReplyError as exc:
            # Garbage may mean we are out of step with the instrument: drop what is pending.
            self._flush()
            raise InstrumentError(self.label, command, exc.problem, exc.reply) from None
        except InstrumentReportedError as exc:
            raise InstrumentError(self.label, command, exc.problem, exc.reply) from None

    def _flush(self) -> bytes:
        try:
            return self.transport.discard_input()
        except OSError:
            return b""

    def _mark_suspect(self, error: InstrumentError) -> None:
        self.suspect = True
        self.last_error = error
        self.failed_reconnects = 0
        self.next_reconnect_at = self._clock()  # the first reconnect is tried straight away
        self.transport.close()

    def _ensure_connected(self, command: str) -> None:
        if not self.suspect:
            return
        now = self._clock()
        if now < self.next_reconnect_at:
            raise InstrumentSuspect(self.label, command,
                                    f"instrument is suspect ({self.last_error.problem}); next reconnect in "
                                    f"{self.next_reconnect_at - now:.2f} s")
        try:
            self.transport.open(self.timeout_s)
            self._configure_protocol()
            self._identify()  # straight through the protocol: failures land in the except below
            self.suspect = False
        except Exception as exc:  # anything at all: the instrument is still not back
            self.transport.close()
            self.suspect = True
            delay = min(self.backoff_initial_s * 2 ** self.failed_reconnects, self.backoff_max_s)
            self.failed_reconnects += 1
            self.next_reconnect_at = now + delay
            raise InstrumentConnectionError(self.label, command,
                                            f"reconnect failed ({exc}); next attempt in {delay:.2f} s") from None
        self.reconnects += 1
        self.failed_reconnects = 0
        self.last_error = None
        for callback in list(self.on_reconnect):
            callback(self)


class ScpiInstrument(Instrument):
    """An instrument spoken to in SCPI (or IEEE-488.2) lines. Subclasses set the class attributes."""

    write_termination = "\n"
    read_termination = "\n"
    error_check = "syst_err"  # or "esr", "none"
    error_query = ":SYST:ERR?"
    idn_must_contain: tuple[str, ...] = ()

    def __init__(self, name: str, transport: Transport, **kwargs):
        from .scpi import ScpiProtocol

        options = kwargs.pop("options", None) or {}
        super().__init__(name, transport, **kwargs)
        self.options = dict(options)
        self.protocol = ScpiProtocol(transport, error_check=self.error_check, error_query=self.error_query,
                                     write_termination=self.write_termination,
                                     read_termination=self.read_termination)

    def _query(self, command: str) -> str:
        return self._call(command, lambda: self.protocol.query(command))

    def _query_float(self, command: str) -> float:
        from .scpi import parse_float

        return self._call(command, lambda: parse_float(self.protocol.query(command)))

    def _query_int(self, command: str) -> int:
        from .scpi import parse_int

        return self._call(command, lambda: parse_int(self.protocol.query(command)))

    def _write(self, command: str) -> None:
        self._call(command, lambda: self.protocol.write(command))

    def _identify(self) -> None:
        from .errors import ReplyError

        idn = self.protocol.query("*IDN?")
        if not any(token in idn for token in self.idn_must_contain):
            raise ReplyError(f"not a {self.model} (expected *IDN? to contain one of {list(self.idn_must_contain)})",
                             idn)
        self.identity = idn
        self._read_limits()

    def _read_limits(self) -> None:
        """Read-only queries a driver needs at open (limits, units). Default: none."""
