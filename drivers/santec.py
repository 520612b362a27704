"""Santec TSL-570 tunable laser (SCPI over LAN port 5000, GPIB or USB; CR line ends).

``:WAV``/``:WAV?`` are in nm whatever the display shows (``:WAV:FREQ`` is the THz form), but
``:POW``/``:POW?`` are in the unit chosen by ``:POW:UNIT`` (0 dBm, 1 mW). The driver reads
the power unit at open and converts, rather than changing it. Besides the SCPI error queue
the laser keeps alerts (``:SYST:ALER?``: interlock, warm-up, ...).
"""

from __future__ import annotations

import math

from .instrument import ScpiInstrument
from .scpi import parse_float, parse_int


class SantecTSL570(ScpiInstrument):
    model = "santec_tsl570"
    write_termination = "\r"
    read_termination = "\r"
    error_check = "syst_err"
    error_query = ":SYST:ERR?"
    idn_must_contain = ("TSL-570", "TSL570")

    wavelength_min_nm = 1480.0
    wavelength_max_nm = 1640.0
    power_unit = 0

    def _read_limits(self) -> None:
        self.wavelength_min_nm = parse_float(self.protocol.query(":WAV:MIN?"))
        self.wavelength_max_nm = parse_float(self.protocol.query(":WAV:MAX?"))
        self.power_unit = parse_int(self.protocol.query(":POW:UNIT?"))

    @property
    def power_min_dbm(self) -> float:
        return float(self.options.get("power_min_dbm", -15.0))

    @property
    def power_max_dbm(self) -> float:
        return float(self.options.get("power_max_dbm", 13.0))

    def _readings(self) -> dict:
        return {"wavelength_nm": self.wavelength_nm(), "power_dbm": self.power_dbm(),
                "emission_on": self.emission_on()}

    def wavelength_nm(self) -> float:
        return self._query_float(":WAV?")

    def frequency_thz(self) -> float:
        return self._query_float(":WAV:FREQ?")

    def set_wavelength_nm(self, wavelength_nm: float) -> None:
        nm = self._check_range("wavelength_nm", wavelength_nm, self.wavelength_min_nm, self.wavelength_max_nm, "nm")
        self._write(f":WAV {nm:.4f}")  # 0.1 pm resolution

    def alerts(self) -> list[str]:
        """Every alert the laser holds (``No07.`` interlock, ``No23.`` warming up, ...); empty when none."""
        found = []
        for _ in range(self.protocol.MAX_QUEUED_ERRORS):
            alert = self._query(":SYST:ALER?").strip()
            if alert.rstrip(".").lower() == "no alerts":
                return found
            found.append(alert)
        return found

    def power_dbm(self) -> float:
        """The power setting."""
        value = self._query_float(":POW?")
        return 10 * math.log10(value) if self.power_unit == 1 else value

    def actual_power_dbm(self) -> float:
        """The monitored output power."""
        value = self._query_float(":POW:ACT?")
        if self.power_unit == 1:
            return 10 * math.log10(value) if value > 0 else -math.inf
        return value

    def power_mw(self) -> float:
        return 10 ** (self.power_dbm() / 10)

    def set_power_dbm(self, power_dbm: float) -> None:
        dbm = self._check_range("power_dbm", power_dbm, self.power_min_dbm, self.power_max_dbm, "dBm")
        if self.power_unit == 1:
            self._write(f":POW {10 ** (dbm / 10):.4f}")
        else:
            self._write(f":POW {dbm:.2f}")

    def emission_on(self) -> bool:
        return bool(self._query_int(":POW:STAT?"))

    def set_emission(self, on: bool) -> None:
        self._write(f":POW:STAT {int(bool(on))}")
