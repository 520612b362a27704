"""Simulated Yokogawa GS200 biasing one SNSPD of the lab by hand (current mode, 1 mA range)."""

from __future__ import annotations

from .scpi_errors import (DATA_OUT_OF_RANGE, DATA_TYPE_ERROR, SETTINGS_CONFLICT, UNDEFINED_HEADER, ErrorQueue,
                          normalise_header)
from .server import SimulatedInstrument, split_command

LONG_FORMS = {"SOURCE": "SOUR", "FUNCTION": "FUNC", "LEVEL": "LEV", "RANGE": "RANG", "OUTPUT": "OUTP",
              "PROTECTION": "PROT", "VOLTAGE": "VOLT", "SYSTEM": "SYST", "ERROR": "ERR", "STATE": "STAT"}
RANGES = {"CURR": (1e-3, 10e-3, 100e-3, 200e-3), "VOLT": (10e-3, 100e-3, 1.0, 10.0, 30.0)}


class SimYokogawaGS200(SimulatedInstrument):
    driver = "gs200"

    def __init__(self, lab=None, channel: int = 1):
        self.channel = channel  # the lab's FPGA channel whose detector this source biases
        super().__init__(lab)

    def reset_state(self) -> None:
        self.errors = ErrorQueue()
        self.function = "CURR"
        self.range = 1e-3
        self.level = 0.0
        self.output_on = False
        self.voltage_limit_v = 5.0
        self._push()

    def _push(self) -> None:
        if self.lab is not None:
            on = self.output_on and self.function == "CURR"
            self.lab.set_bias_ua(self.channel, self.level * 1e6 if on else 0.0)

    def handle(self, message: str):
        header, args = split_command(message)
        if header == "*IDN?":
            return "YOKOGAWA,GS210,91W000001,2.02"
        if header == "*RST":
            self.reset_state()
            return None
        if header == "*CLS":
            self.errors.clear()
            return None
        header = normalise_header(header, LONG_FORMS).replace(":OUTP:STAT", ":OUTP")
        if header == ":SYST:ERR?":
            return self.errors.pop()
        if header == ":SOUR:FUNC?":
            return self.function
        if header == ":SOUR:RANG?":
            return f"{self.range:.6E}"
        if header == ":SOUR:LEV?":
            return f"{self.level:.6E}"
        if header == ":OUTP?":
            return "1" if self.output_on else "0"
        if header == ":SOUR:PROT:VOLT?":
            return f"{self.voltage_limit_v:.6E}"
        if not args:
            self.errors.push(UNDEFINED_HEADER)
            return None
        value = args[0].upper()
        if header == ":SOUR:FUNC":
            if value.startswith("CURR"):
                value = "CURR"
            elif value.startswith("VOLT"):
                value = "VOLT"
            else:
                self.errors.push(DATA_TYPE_ERROR)
                return None
            if value != self.function:
                self.function, self.output_on, self.level = value, False, 0.0
                self.range = RANGES[value][0]
            self._push()
            return None
        if header == ":OUTP":
            if value not in ("ON", "OFF", "1", "0"):
                self.errors.push(DATA_TYPE_ERROR)
                return None
            self.output_on = value in ("ON", "1")
            self._push()
            return None
        try:
            number = float(value)
        except ValueError:
            self.errors.push(DATA_TYPE_ERROR)
            return None
        if header == ":SOUR:RANG":
            fitting = [r for r in RANGES[self.function] if r >= number]
            if not fitting:
                self.errors.push(DATA_OUT_OF_RANGE)
            else:
                self.range = fitting[0]
                if abs(self.level) > self.range * 1.2:
                    self.level = 0.0
                    self._push()
            return None
        if header == ":SOUR:LEV":
            if abs(number) > self.range * 1.2:
                self.errors.push(SETTINGS_CONFLICT)
                return None
            self.level = number
            self._push()
            return None
        if header == ":SOUR:PROT:VOLT":
            if not 1.0 <= number <= 30.0:
                self.errors.push(DATA_OUT_OF_RANGE)
            else:
                self.voltage_limit_v = number
            return None
        self.errors.push(UNDEFINED_HEADER)
        return None
