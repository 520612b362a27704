"""A transport that plays a script of exact exchanges, for driver tests.

Each step is ``(sent, reply)``: the bytes the driver must write next, and what the
instrument answers (bytes), or :data:`SILENCE` (no answer: the read times out), or
:data:`HANG_UP` (the instrument drops the link). A write that differs from the script
fails at once and shows both; :meth:`ScriptedTransport.assert_done` fails if any expected
exchange was never used, so a test cannot pass by sending less than it should.

    script = [(b"*IDN?\\r\\n", b"LSCI,MODEL336,1234,1.0\\r\\n"), (b"KRDG? A\\r\\n", b"+2.5000\\r\\n")]
    with expected_exchanges(LakeShore336, script) as cryostat:
        assert cryostat.temperature_k("A") == 2.5
"""

from __future__ import annotations

from contextlib import contextmanager

from .transport import Transport, TransportTimeout

SILENCE = object()
HANG_UP = object()


class ScriptMismatch(AssertionError):
    pass


class ScriptedTransport(Transport):
    def __init__(self, script, address: str = "scripted", refuse_open: bool = False):
        self.script = list(script)
        self.address = address
        self.refuse_open = refuse_open
        self.position = 0
        self.pending = b""  # reply bytes not yet read
        self.sent: list[bytes] = []
        self.opens = 0
        self._open = False

    @property
    def is_open(self) -> bool:
        return self._open

    def open(self, timeout_s: float) -> None:
        if self.refuse_open:
            raise ConnectionRefusedError(f"{self.address} refused the connection")
        self._open = True
        self.opens += 1
        self.pending = b""

    def close(self) -> None:
        self._open = False

    def write(self, data: bytes, timeout_s: float) -> None:
        assert timeout_s is not None and timeout_s > 0, "every write needs a finite timeout"
        if not self._open:
            raise ConnectionError(f"{self.address} is not open")
        self.sent.append(data)
        if self.position >= len(self.script):
            raise ScriptMismatch(f"unexpected write {data!r}: the script has ended")
        expected, reply = self.script[self.position]
        if data != expected:
            raise ScriptMismatch(f"exchange {self.position}: expected {expected!r}, driver sent {data!r}")
        self.position += 1
        if reply is HANG_UP:
            self._open = False
            raise ConnectionResetError(f"{self.address} closed the connection")
        if reply is SILENCE or reply is None:
            return
        self.pending += reply

    def read_until(self, terminator: bytes, timeout_s: float) -> bytes:
        assert timeout_s is not None and timeout_s > 0, "every read needs a finite timeout"
        if not self._open:
            raise ConnectionError(f"{self.address} is not open")
        index = self.pending.find(terminator)
        if index < 0:
            partial, self.pending = self.pending, b""
            raise TransportTimeout(f"scripted: no {terminator!r} within {timeout_s} s", partial)
        end = index + len(terminator)
        message, self.pending = self.pending[:end], self.pending[end:]
        return message

    def discard_input(self) -> bytes:
        dropped, self.pending = self.pending, b""
        return dropped

    def assert_done(self) -> None:
        if self.position < len(self.script):
            unused = [sent for sent, _ in self.script[self.position:]]
            raise ScriptMismatch(f"{len(unused)} expected exchange(s) never happened, first {unused[0]!r}")
        if self.pending:
            raise ScriptMismatch(f"reply bytes never read: {self.pending!r}")


@contextmanager
def expected_exchanges(driver_class, script, *, name: str = "dut", open_driver: bool = True, **kwargs):
    """Yield ``driver_class(name, ScriptedTransport(script), **kwargs)``, opened; check the script was used up."""
    transport = ScriptedTransport(script)
    driver = driver_class(name, transport, **kwargs)
    if open_driver:
        driver.open()
    yield driver
    transport.assert_done()
