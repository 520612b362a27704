"""Byte transports: a TCP socket, a serial port (pyserial) or a VISA resource (pyvisa).

A transport moves bytes and keeps time. It knows nothing of commands or instruments; the
protocol above it frames messages and the driver above that names what went wrong. Every
read and write takes a finite ``timeout_s``; running out raises :class:`TransportTimeout`.
A link that breaks raises :class:`ConnectionError` (refused, reset, closed by the peer).
"""

from __future__ import annotations

import socket
import time


class TransportTimeout(TimeoutError):
    """Nothing (or not a whole message) arrived within the timeout."""

    def __init__(self, message: str, partial: bytes = b""):
        super().__init__(message)
        self.partial = partial


class Transport:
    """The interface every transport provides."""

    address: str = "?"

    def open(self, timeout_s: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @property
    def is_open(self) -> bool:
        raise NotImplementedError

    def write(self, data: bytes, timeout_s: float) -> None:
        raise NotImplementedError

    def read_until(self, terminator: bytes, timeout_s: float) -> bytes:
        """Bytes up to and including ``terminator``."""
        raise NotImplementedError

    def discard_input(self) -> bytes:
        """Drop whatever has arrived but was not read (a late reply after a timeout); return it."""
        raise NotImplementedError


def parse_host_port(resource: str) -> tuple[str, int]:
    """'127.0.0.1:7777' or 'TCPIP::host::port::SOCKET' -> (host, port)."""
    if "::" in resource:
        parts = resource.split("::")
        if len(parts) >= 3 and parts[0].upper().startswith("TCPIP"):
            return parts[1], int(parts[2])
        raise ValueError(f"cannot read host and port from {resource!r}")
    host, sep, port = resource.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {resource!r}")
    return host, int(port)


class TcpTransport(Transport):
    """A TCP client socket (raw SCPI port, JSON-over-TCP, ...)."""

    def __init__(self, host: str, port: int):
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        self._sock: socket.socket | None = None
        self._buffer = b""

    @classmethod
    def from_resource(cls, resource: str) -> "TcpTransport":
        return cls(*parse_host_port(resource))

    @property
    def is_open(self) -> bool:
        return self._sock is not None

    def open(self, timeout_s: float) -> None:
        self.close()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout_s)
        except socket.timeout:
            raise TransportTimeout(f"connect to {self.address} timed out after {timeout_s} s") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._buffer = b""

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
        self._buffer = b""

    def _require(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionError(f"{self.address} is not open")
        return self._sock

    def write(self, data: bytes, timeout_s: float) -> None:
        sock = self._require()
        sock.settimeout(timeout_s)
        try:
            sock.sendall(data)
        except socket.timeout:
            raise TransportTimeout(f"write to {self.address} timed out after {timeout_s} s") from None

    def read_until(self, terminator: bytes, timeout_s: float) -> bytes:
        sock = self._require()
        deadline = time.monotonic() + timeout_s
        while True:
            index = self._buffer.find(terminator)
            if index >= 0:
                end = index + len(terminator)
                message, self._buffer = self._buffer[:end], self._buffer[end:]
                return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransportTimeout(f"no {terminator!r}-terminated reply from {self.address} within {timeout_s} s",
                                       self._buffer)
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise ConnectionResetError(f"{self.address} closed the connection")
            self._buffer += chunk

    def discard_input(self) -> bytes:
        dropped, self._buffer = self._buffer, b""
        if self._sock is None:
            return dropped
        self._sock.settimeout(0.0)
        try:
            while True:
                chunk = self._sock.recv(65536)
                if not chunk:
                    break
                dropped += chunk
        except (BlockingIOError, socket.timeout, OSError):
            pass
        return dropped


class SerialTransport(Transport):
    """A serial port through pyserial: a device path (/dev/ttyACM0, a pty) or a pyserial URL."""

    def __init__(self, url: str, baud: int = 115200):
        self.url = url
        self.baud = baud
        self.address = url
        self._port = None

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def open(self, timeout_s: float) -> None:
        import serial

        self.close()
        try:
            self._port = serial.serial_for_url(self.url, baudrate=self.baud, timeout=timeout_s,
                                               write_timeout=timeout_s, exclusive=True)
        except serial.SerialException as exc:
            raise ConnectionRefusedError(f"cannot open {self.url}: {exc}") from None
        self._port.reset_input_buffer()  # whatever waited in the port belongs to an earlier session

    def close(self) -> None:
        if self._port is not None:
            try:
                self._port.close()
            finally:
                self._port = None

    def _require(self):
        if self._port is None:
            raise ConnectionError(f"{self.url} is not open")
        return self._port

    def write(self, data: bytes, timeout_s: float) -> None:
        import serial

        port = self._require()
        port.write_timeout = timeout_s
        try:
            port.write(data)
            port.flush()
        except serial.SerialTimeoutException:
            raise TransportTimeout(f"write to {self.url} timed out after {timeout_s} s") from None
        except serial.SerialException as exc:
            raise ConnectionResetError(f"{self.url}: {exc}") from None

    def read_until(self, terminator: bytes, timeout_s: float) -> bytes:
        import serial

        port = self._require()
        port.timeout = timeout_s
        try:
            data = port.read_until(terminator)
        except serial.SerialException as exc:
            raise ConnectionResetError(f"{self.url}: {exc}") from None
        if not data.endswith(terminator):
            raise TransportTimeout(f"no {terminator!r}-terminated reply from {self.url} within {timeout_s} s", data)
        return data

    def discard_input(self) -> bytes:
        if self._port is None:
            return b""
        try:
            waiting = self._port.in_waiting
            dropped = self._port.read(waiting) if waiting else b""
            self._port.reset_input_buffer()
        except Exception:  # a broken port has nothing to discard
            return b""
        return dropped


class VisaTransport(Transport):
    """A VISA resource through pyvisa (TCPIP SOCKET/INSTR, GPIB, USB, ASRL)."""

    def __init__(self, resource_name: str, visa_library: str = ""):
        self.resource_name = resource_name
        self.visa_library = visa_library
        self.address = resource_name
        self._rm = None
        self._res = None

    @property
    def is_open(self) -> bool:
        return self._res is not None

    def open(self, timeout_s: float) -> None:
        import pyvisa

        self.close()
        if self._rm is None:
            self._rm = pyvisa.ResourceManager(self.visa_library)
        try:
            res = self._rm.open_resource(self.resource_name, open_timeout=int(timeout_s * 1000))
        except pyvisa.errors.VisaIOError as exc:
            raise ConnectionRefusedError(f"cannot open {self.resource_name}: {exc}") from None
        res.timeout = int(timeout_s * 1000)
        res.write_termination = ""
        res.read_termination = None
        self._res = res

    def close(self) -> None:
        if self._res is not None:
            try:
                self._res.close()
            finally:
                self._res = None

    def _require(self):
        if self._res is None:
            raise ConnectionError(f"{self.resource_name} is not open")
        return self._res

    def write(self, data: bytes, timeout_s: float) -> None:
        import pyvisa

        res = self._require()
        res.timeout = max(1, int(timeout_s * 1000))
        try:
            res.write_raw(data)
        except pyvisa.errors.VisaIOError as exc:
            if exc.error_code == pyvisa.constants.StatusCode.error_timeout:
                raise TransportTimeout(f"write to {self.resource_name} timed out after {timeout_s} s") from None
            raise ConnectionResetError(f"{self.resource_name}: {exc}") from None

    def read_until(self, terminator: bytes, timeout_s: float) -> bytes:
        import pyvisa

        res = self._require()
        res.timeout = max(1, int(timeout_s * 1000))
        res.read_termination = terminator.decode("ascii")
        try:
            data = res.read_raw()
        except pyvisa.errors.VisaIOError as exc:
            if exc.error_code == pyvisa.constants.StatusCode.error_timeout:
                raise TransportTimeout(f"no reply from {self.resource_name} within {timeout_s} s") from None
            raise ConnectionResetError(f"{self.resource_name}: {exc}") from None
        if not data.endswith(terminator):
            data += terminator  # some backends strip the termination character
        return data

    def discard_input(self) -> bytes:
        if self._res is not None:
            try:
                self._res.clear()
            except Exception:  # not every backend implements device clear
                pass
        return b""


def make_transport(kind: str, resource: str, options: dict | None = None) -> Transport:
    """A transport from a config's ``transport``/``resource``/``options``."""
    options = options or {}
    if kind == "tcp":
        return TcpTransport.from_resource(resource)
    if kind == "serial":
        return SerialTransport(resource, baud=int(options.get("baud", 115200)))
    if kind == "visa":
        return VisaTransport(resource, visa_library=str(options.get("visa_library", "")))
    raise ValueError(f"unknown transport {kind!r}; expected tcp, serial or visa")
