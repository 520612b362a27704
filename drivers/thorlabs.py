"""Thorlabs instruments: the PM100-series optical power meter and the MDT694B piezo driver.

PM100 (PM100D/A/USB, PM101...): SCPI, "\\n", ``SYST:ERR?`` answers ``+0,"No error"``.

MDT694B: plain ASCII over a serial port (115200 8N1, often a USB-serial adapter). A command
ends in CR; with echo on the controller repeats the command, then answers a query with the
value in brackets (``[  24.8]``), and every answer ends with the prompt ``>``. An unknown
command answers ``CMD_NOT_DEFINED``. The output is also limited by the front-panel switch
(``vlimit?``: 75, 100 or 150 V) and the soft limits ``xmin?``/``xmax?``.
"""

from __future__ import annotations

import re

from .errors import InstrumentReportedError, ReplyError
from .instrument import Instrument, ScpiInstrument
from .line import LineProtocol
from .scpi import parse_float


class ThorlabsPM100(ScpiInstrument):
    model = "pm100"
    error_check = "syst_err"
    error_query = "SYST:ERR?"
    idn_must_contain = ("PM100", "PM101", "PM102", "PM103")

    wavelength_min_nm = 400.0
    wavelength_max_nm = 1700.0

    def _read_limits(self) -> None:
        self.wavelength_min_nm = parse_float(self.protocol.query("SENS:CORR:WAV? MIN"))
        self.wavelength_max_nm = parse_float(self.protocol.query("SENS:CORR:WAV? MAX"))

    def _readings(self) -> dict:
        return {"power_w": self.power_w(), "wavelength_nm": self.wavelength_nm()}

    def power_w(self) -> float:
        return self._query_float("MEAS:POW?")

    def power_mw(self) -> float:
        return self.power_w() * 1e3

    def wavelength_nm(self) -> float:
        return self._query_float("SENS:CORR:WAV?")

    def set_wavelength_nm(self, wavelength_nm: float) -> None:
        nm = self._check_range("wavelength_nm", wavelength_nm, self.wavelength_min_nm, self.wavelength_max_nm, "nm")
        self._write(f"SENS:CORR:WAV {nm:g}")

    def averaging_count(self) -> int:
        return self._query_int("SENS:AVER:COUN?")

    def set_averaging_count(self, count: int) -> None:
        value = int(self._check_range("averaging_count", count, 1, 10000))
        self._write(f"SENS:AVER:COUN {value}")

    def auto_range(self) -> bool:
        return bool(self._query_int("SENS:POW:RANG:AUTO?"))

    def set_auto_range(self, on: bool) -> None:
        self._write(f"SENS:POW:RANG:AUTO {int(bool(on))}")


_BRACKETED = re.compile(rb"\[\s*([^\]]*?)\s*\]")


class MdtProtocol(LineProtocol):
    """Commands end in CR; each answer (echo, value, prompt) ends with the prompt ``>``."""

    PROMPT = b">"

    def __init__(self, transport):
        super().__init__(transport, write_termination="\r", read_termination=">")

    def exchange(self, command: str) -> bytes:
        self.send(command)
        raw = self.transport.read_until(self.PROMPT, self.timeout_s)
        body = raw[: -len(self.PROMPT)]
        text = body.replace(b"\n", b"\r")
        echo = command.encode("ascii")
        if text.lstrip(b"\r").startswith(echo):  # echo may be on or off
            text = text.lstrip(b"\r")[len(echo):]
        if b"CMD_NOT_DEFINED" in text or text.strip().startswith(b"!"):
            raise InstrumentReportedError("command not accepted", raw)
        return text

    def query_value(self, command: str) -> float:
        text = self.exchange(command)
        match = _BRACKETED.search(text)
        if match is None:
            raise ReplyError("expected a [value] reply", text)
        try:
            return float(match.group(1))
        except ValueError:
            raise ReplyError("expected a number in brackets", text) from None

    def query_text(self, command: str) -> str:
        return self.exchange(command).decode("ascii", "replace").strip()


class ThorlabsMDT694B(Instrument):
    """Single-channel (X) piezo driver, 0-150 V."""

    model = "mdt694b"

    def __init__(self, name, transport, **kwargs):
        options = kwargs.pop("options", None) or {}
        super().__init__(name, transport, **kwargs)
        self.options = dict(options)
        self.protocol = MdtProtocol(transport)
        self.voltage_limit_v = 150.0
        self.min_voltage_v = 0.0
        self.max_voltage_v = 150.0

    def _identify(self) -> None:
        text = self.protocol.query_text("id?")
        if "MDT694" not in text:
            raise ReplyError("not a Thorlabs MDT694B (expected 'MDT694' in the id? reply)", text)
        self.identity = " ".join(text.split())
        self.voltage_limit_v = self.protocol.query_value("vlimit?")
        self.min_voltage_v = self.protocol.query_value("xmin?")
        self.max_voltage_v = self.protocol.query_value("xmax?")

    def _readings(self) -> dict:
        return {"voltage_v": self.voltage_v(), "voltage_limit_v": self.voltage_limit_v}

    def voltage_v(self) -> float:
        return self._call("xvoltage?", lambda: self.protocol.query_value("xvoltage?"))

    def set_voltage_v(self, voltage_v: float) -> None:
        high = min(self.voltage_limit_v, self.max_voltage_v)
        value = self._check_range("voltage_v", voltage_v, self.min_voltage_v, high, "V")
        command = f"xvoltage={value:.3f}"
        self._call(command, lambda: self.protocol.exchange(command))
