"""Simulated Santec TSL-570: wavelength, power and emission of the lab's reference laser.

CR-terminated SCPI. ``:WAV``/``:WAV?`` are in nm and ``:WAV:FREQ?`` in THz whatever the
display unit (``:WAV:UNIT``); ``:POW`` is in dBm (``:POW:UNIT 0``) or mW (``:POW:UNIT 1``).
``:SYST:ALER?`` answers ``No alerts.`` unless a test sets ``alerts``.
"""

from __future__ import annotations

import math

from ..laser import Laser
from .scpi_errors import DATA_OUT_OF_RANGE, DATA_TYPE_ERROR, UNDEFINED_HEADER, ErrorQueue, normalise_header
from .server import SimulatedInstrument, split_command

LONG_FORMS = {"WAVELENGTH": "WAV", "POWER": "POW", "STATE": "STAT", "SYSTEM": "SYST", "ERROR": "ERR",
              "ACTUAL": "ACT", "MINIMUM": "MIN", "MAXIMUM": "MAX", "UNIT": "UNIT", "FREQUENCY": "FREQ",
              "ALERT": "ALER"}
C_M_PER_S = 299_792_458.0


class SimSantecTSL570(SimulatedInstrument):
    driver = "santec_tsl570"
    read_separator = b"\r"
    write_separator = b"\r"
    POWER_MIN_DBM = -15.0
    POWER_MAX_DBM = 13.0

    def __init__(self, lab=None):
        self._own_laser = Laser()
        super().__init__(lab)

    @property
    def laser(self) -> Laser:
        return self.lab.laser if self.lab is not None else self._own_laser

    def reset_state(self) -> None:
        self.errors = ErrorQueue()
        self.alerts: list[str] = []
        self.wavelength_unit = 0
        self.power_unit = 0
        self.laser.emission_on = False  # the LD is off after power-up

    def handle(self, message: str):
        header, args = split_command(message)
        header = normalise_header(header, LONG_FORMS) if not header.startswith("*") else header
        laser = self.laser
        if header == "*IDN?":
            return "SANTEC,TSL-570,22050001,0003.0200"
        if header == "*RST":
            self.reset_state()
            return None
        if header == "*CLS":
            self.errors.clear()
            return None
        if header == ":SYST:ERR?":
            return self.errors.pop()
        if header == ":SYST:ALER?":
            return self.alerts.pop(0) if self.alerts else "No alerts."
        if header == ":WAV?":
            return f"{laser.wavelength_nm:.4f}"
        if header == ":WAV:FREQ?":
            return f"{C_M_PER_S / (laser.wavelength_nm * 1e-9) / 1e12:.5f}"
        if header == ":WAV:MIN?":
            return f"{laser.wavelength_min_nm:.4f}"
        if header == ":WAV:MAX?":
            return f"{laser.wavelength_max_nm:.4f}"
        if header == ":WAV:UNIT?":
            return str(self.wavelength_unit)
        if header == ":POW:UNIT?":
            return str(self.power_unit)
        if header == ":POW?":
            return f"{laser.power_dbm:+.3E}" if self.power_unit == 0 else f"{10 ** (laser.power_dbm / 10):.4E}"
        if header == ":POW:ACT?":
            if not laser.emission_on:
                return "-4.000E+001" if self.power_unit == 0 else "0.0000E+00"
            return f"{laser.power_dbm:+.3E}" if self.power_unit == 0 else f"{laser.output_mw():.4E}"
        if header == ":POW:STAT?":
            return "1" if laser.emission_on else "0"
        if len(args) != 1:
            self.errors.push(UNDEFINED_HEADER)
            return None
        try:
            value = float(args[0])
        except ValueError:
            self.errors.push(DATA_TYPE_ERROR)
            return None
        if header == ":WAV":
            nm = value
            if not laser.wavelength_min_nm <= nm <= laser.wavelength_max_nm:
                self.errors.push(DATA_OUT_OF_RANGE)
            else:
                laser.wavelength_nm = nm
            return None
        if header == ":POW":
            if self.power_unit == 1:
                dbm = 10 * math.log10(value) if value > 0 else -math.inf
            else:
                dbm = value
            if not self.POWER_MIN_DBM <= dbm <= self.POWER_MAX_DBM:
                self.errors.push(DATA_OUT_OF_RANGE)
            else:
                laser.power_dbm = dbm
            return None
        if header in (":POW:STAT", ":WAV:UNIT", ":POW:UNIT"):
            if value not in (0, 1):
                self.errors.push(DATA_OUT_OF_RANGE)
            elif header == ":POW:STAT":
                laser.emission_on = bool(value)
            elif header == ":WAV:UNIT":
                self.wavelength_unit = int(value)
            else:
                self.power_unit = int(value)
            return None
        self.errors.push(UNDEFINED_HEADER)
        return None
