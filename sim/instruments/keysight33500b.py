"""Simulated Keysight 33522B: channel 1's DC offset drives the lab's piezo through a HV amplifier."""

from __future__ import annotations

from .scpi_errors import DATA_OUT_OF_RANGE, DATA_TYPE_ERROR, UNDEFINED_HEADER, ErrorQueue, normalise_header
from .server import SimulatedInstrument, split_command

LONG_FORMS = {"SOURCE1": "SOUR1", "SOURCE2": "SOUR2", "SOUR": "SOUR1", "SOURCE": "SOUR1", "FUNCTION": "FUNC",
              "VOLTAGE": "VOLT", "OFFSET": "OFFS", "OUTPUT1": "OUTP1", "OUTPUT2": "OUTP2", "OUTP": "OUTP1",
              "OUTPUT": "OUTP1", "SYSTEM": "SYST", "ERROR": "ERR"}


class SimKeysight33500B(SimulatedInstrument):
    driver = "keysight33500b"

    def reset_state(self) -> None:
        self.errors = ErrorQueue(no_error='+0,"No error"', template='{code:+d},"{message}"')
        self.function = {1: "SIN", 2: "SIN"}
        self.offset_v = {1: 0.0, 2: 0.0}
        self.output_on = {1: False, 2: False}
        self.load_ohm = {1: 50.0, 2: 50.0}
        self._push()

    def _push(self) -> None:
        if self.lab is not None:
            dc = self.function[1] == "DC"
            self.lab.set_awg_offset_v(self.offset_v[1] if dc else 0.0, self.output_on[1] and dc)

    def handle(self, message: str):
        header, args = split_command(message)
        if header.startswith("*"):
            if header == "*IDN?":
                return "Keysight Technologies,33522B,MY52000001,5.02-1.19-2.00-52-00"
            if header == "*RST":
                self.reset_state()
            elif header == "*CLS":
                self.errors.clear()
            elif header == "*OPC?":
                return "1"
            else:
                self.errors.push(UNDEFINED_HEADER)
            return None
        header = normalise_header(header, LONG_FORMS)
        if header.startswith(":VOLT") or header.startswith(":FUNC"):
            header = ":SOUR1" + header  # the default channel
        if header == ":SYST:ERR?":
            return self.errors.pop()
        parts = header.rstrip("?").lstrip(":").split(":")
        query = header.endswith("?")
        channel = int(parts[0][-1]) if parts[0][-1] in "12" else 1
        rest = ":".join(parts[1:])
        if parts[0].startswith("SOUR") and rest == "FUNC":
            if query:
                return self.function[channel]
            if len(args) == 1 and args[0].upper() in ("DC", "SIN", "SQU", "RAMP", "PULS", "NOIS", "ARB", "PRBS"):
                self.function[channel] = args[0].upper()
                self._push()
            else:
                self.errors.push(DATA_OUT_OF_RANGE)
            return None
        if parts[0].startswith("SOUR") and rest == "VOLT:OFFS":
            if query:
                return f"{self.offset_v[channel]:+.15E}"
            try:
                value = float(args[0])
            except (ValueError, IndexError):
                self.errors.push(DATA_TYPE_ERROR)
                return None
            limit = 10.0 if self.load_ohm[channel] > 1e6 else 5.0
            if abs(value) > limit:
                self.errors.push(DATA_OUT_OF_RANGE)
                return None
            self.offset_v[channel] = value
            self._push()
            return None
        if parts[0].startswith("OUTP") and rest == "":
            if query:
                return "1" if self.output_on[channel] else "0"
            if len(args) == 1 and args[0].upper() in ("ON", "OFF", "1", "0"):
                self.output_on[channel] = args[0].upper() in ("ON", "1")
                self._push()
            else:
                self.errors.push(DATA_TYPE_ERROR)
            return None
        if parts[0].startswith("OUTP") and rest == "LOAD":
            if query:
                return f"{self.load_ohm[channel]:+.15E}" if self.load_ohm[channel] < 1e6 else "+9.900000000000000E+37"
            if len(args) == 1 and args[0].upper() in ("INF", "INFINITY"):
                self.load_ohm[channel] = 9.9e37
            else:
                try:
                    self.load_ohm[channel] = float(args[0])
                except (ValueError, IndexError):
                    self.errors.push(DATA_TYPE_ERROR)
            return None
        self.errors.push(UNDEFINED_HEADER)
        return None
