"""Simulated Thorlabs PM100D with a photodiode sensor on a tap of the reference laser."""

from __future__ import annotations

from .scpi_errors import DATA_OUT_OF_RANGE, DATA_TYPE_ERROR, UNDEFINED_HEADER, ErrorQueue, normalise_header
from .server import SimulatedInstrument, split_command

LONG_FORMS = {"SENSE": "SENS", "CORRECTION": "CORR", "WAVELENGTH": "WAV", "MEASURE": "MEAS", "POWER": "POW",
              "AVERAGE": "AVER", "COUNT": "COUN", "RANGE": "RANG", "AUTO": "AUTO", "SYSTEM": "SYST",
              "ERROR": "ERR", "SCALAR": "SCAL"}


class SimThorlabsPM100(SimulatedInstrument):
    driver = "pm100"
    WAVELENGTH_MIN_NM = 800.0  # an S155C InGaAs sensor
    WAVELENGTH_MAX_NM = 1700.0

    def reset_state(self) -> None:
        self.errors = ErrorQueue(no_error='+0,"No error"', template='{code:+d},"{message}"')
        self.wavelength_nm = 1550.0
        self.averaging = 1
        self.auto_range = 1

    def handle(self, message: str):
        header, args = split_command(message)
        if header == "*IDN?":
            return "Thorlabs,PM100D,P0099999,2.7.0"
        if header == "*RST":
            self.reset_state()
            return None
        if header == "*CLS":
            self.errors.clear()
            return None
        header = normalise_header(header, LONG_FORMS).replace(":MEAS:SCAL:POW?", ":MEAS:POW?")
        if header == ":SYST:ERR?":
            return self.errors.pop()
        if header in (":MEAS:POW?", ":READ?"):
            watts = self.lab.powermeter_reading_w(self.wavelength_nm) if self.lab is not None else 1e-10
            return f"{watts:.9E}"
        if header == ":SENS:CORR:WAV?":
            if args and args[0].upper().startswith("MIN"):
                return f"{self.WAVELENGTH_MIN_NM:.9E}"
            if args and args[0].upper().startswith("MAX"):
                return f"{self.WAVELENGTH_MAX_NM:.9E}"
            return f"{self.wavelength_nm:.9E}"
        if header == ":SENS:AVER:COUN?":
            return str(self.averaging)
        if header == ":SENS:POW:RANG:AUTO?":
            return str(self.auto_range)
        if header in (":SENS:CORR:WAV", ":SENS:AVER:COUN", ":SENS:POW:RANG:AUTO"):
            try:
                value = float(args[0])
            except (ValueError, IndexError):
                self.errors.push(DATA_TYPE_ERROR)
                return None
            if header == ":SENS:CORR:WAV":
                if not self.WAVELENGTH_MIN_NM <= value <= self.WAVELENGTH_MAX_NM:
                    self.errors.push(DATA_OUT_OF_RANGE)
                else:
                    self.wavelength_nm = value
            elif header == ":SENS:AVER:COUN":
                if value < 1:
                    self.errors.push(DATA_OUT_OF_RANGE)
                else:
                    self.averaging = int(value)
            else:
                self.auto_range = int(bool(value))
            return None
        self.errors.push(UNDEFINED_HEADER)
        return None
