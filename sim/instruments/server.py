"""Serving a simulated instrument over a real TCP socket or a real pseudo-terminal.

A :class:`SimulatedInstrument` turns one incoming message into zero or more replies; the
servers here move bytes. Both servers can misbehave on purpose, for fault tests:

- ``mute = True``: read commands, answer nothing (the driver times out);
- ``garbage_replies = n``: the next n replies are replaced by line noise;
- ``power_cycle()``: the instrument resets to its power-on state; TCP connections drop;
- ``stop()``: stop listening (TCP: the next connect is refused).
"""

from __future__ import annotations

import os
import select
import socket
import threading
import tty

class SimulatedInstrument:
    """One instrument's command set. Subclasses implement ``handle`` and ``reset_state``."""

    driver = "?"
    read_separator = b"\n"
    write_separator = b"\n"
    strip = b"\r\n "
    garbage_reply = b"\xff\xfe#@!"  # what a fault-injected reply looks like (separator added)

    def __init__(self, lab=None):
        self.lab = lab
        self.lock = threading.RLock()
        self.reset_state()

    def reset_state(self) -> None:
        """Power-on state."""

    def handle(self, message: str) -> list[bytes]:
        """Replies (without separators) to one message."""
        raise NotImplementedError

    def replies(self, message: str) -> list[bytes]:
        with self.lock:
            out = self.handle(message)
        if out is None:
            return []
        if isinstance(out, (str, bytes)):
            out = [out]
        return [o.encode("ascii") if isinstance(o, str) else o for o in out]


class _Faults:
    def __init__(self):
        self.mute = False
        self.garbage_replies = 0
        self.messages_seen = 0


def _respond(instrument: SimulatedInstrument, faults: _Faults, message: bytes) -> bytes:
    faults.messages_seen += 1
    text = message.strip(instrument.strip).decode("ascii", "replace")
    if not text:
        return b""
    replies = instrument.replies(text)
    if faults.mute:
        return b""
    out = b""
    for reply in replies:
        if faults.garbage_replies > 0:
            faults.garbage_replies -= 1
            reply = instrument.garbage_reply
        out += reply + instrument.write_separator
    return out


class TcpInstrumentServer(_Faults):
    """Listens on ``host:port`` (port 0: the OS picks) and serves each connection in a thread."""

    def __init__(self, instrument: SimulatedInstrument, host: str = "127.0.0.1", port: int = 0):
        super().__init__()
        self.instrument = instrument
        self.host = host
        self._requested_port = port
        self.port = 0
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "TcpInstrumentServer":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self._requested_port or self.port))
        listener.listen(8)
        listener.settimeout(0.1)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._stop.clear()
        thread = threading.Thread(target=self._accept_loop, name=f"sim-{self.instrument.driver}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def _accept_loop(self) -> None:
        listener = self._listener
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            conn.settimeout(0.1)
            self._connections.add(conn)
            self.on_connect(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()

    def on_connect(self, conn: socket.socket) -> None:
        """Hook for servers that talk first (none of the SCPI ones do)."""

    def _serve(self, conn: socket.socket) -> None:
        separator = self.instrument.read_separator
        buffer = b""
        try:
            while not self._stop.is_set() and conn in self._connections:
                try:
                    chunk = conn.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    break
                buffer += chunk
                while separator in buffer:
                    message, buffer = buffer.split(separator, 1)
                    out = _respond(self.instrument, self, message)
                    if out:
                        conn.sendall(out)
        except OSError:
            pass
        finally:
            self._connections.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def drop_connections(self) -> None:
        for conn in list(self._connections):
            self._connections.discard(conn)
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def power_cycle(self) -> None:
        """The instrument reboots: every connection drops and its settings return to power-on values."""
        self.drop_connections()
        with self.instrument.lock:
            self.instrument.reset_state()

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept()
            except OSError:
                pass
            for thread in self._threads:
                thread.join(timeout=1.0)  # then nothing holds the listening socket open
            self._threads.clear()
            self._listener.close()
            self._listener = None
        self.drop_connections()

    def __enter__(self):
        return self.start() if self._listener is None else self

    def __exit__(self, *exc):
        self.stop()


class PtyInstrumentServer(_Faults):
    """Serves the instrument on a pseudo-terminal; a serial driver opens ``device_path``."""

    def __init__(self, instrument: SimulatedInstrument):
        super().__init__()
        self.instrument = instrument
        self._master = -1
        self._slave = -1
        self.device_path = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return self.device_path

    def start(self) -> "PtyInstrumentServer":
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # bytes pass untouched: no echo, no CR/LF translation
        self.device_path = os.ttyname(self._slave)
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name=f"sim-{self.instrument.driver}", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        separator = self.instrument.read_separator
        buffer = b""
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.05)
            except (OSError, ValueError):
                break
            if not ready:
                continue
            try:
                chunk = os.read(self._master, 65536)
            except OSError:
                continue  # no reader on the other side right now
            buffer += chunk
            while separator in buffer:
                message, buffer = buffer.split(separator, 1)
                out = _respond(self.instrument, self, message)
                if out:
                    try:
                        os.write(self._master, out)
                    except OSError:
                        pass

    def power_cycle(self) -> None:
        with self.instrument.lock:
            self.instrument.reset_state()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        for fd in (self._master, self._slave):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = -1

    def __enter__(self):
        return self.start() if self._master < 0 else self

    def __exit__(self, *exc):
        self.stop()


def split_command(message: str) -> tuple[str, list[str]]:
    """'SETP 1,2.5' -> ('SETP', ['1', '2.5']); 'KRDG? A' -> ('KRDG?', ['A'])."""
    header, _, rest = message.strip().partition(" ")
    args = [a.strip() for a in rest.split(",")] if rest.strip() else []
    return header.upper(), args
