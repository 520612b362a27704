"""The tunable laser that makes the phase lock's reference light, and what a power meter sees of it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Laser:
    wavelength_nm: float = 1550.0
    power_dbm: float = 0.0
    emission_on: bool = False
    wavelength_min_nm: float = 1480.0
    wavelength_max_nm: float = 1640.0

    def output_mw(self) -> float:
        return 10 ** (self.power_dbm / 10) if self.emission_on else 0.0
