"""A closed-cycle cryostat's cold stage under a heater loop, as a first-order thermal system.

The controller's loop is taken as good: with the heater range on, the stage temperature
approaches ``max(setpoint, base)`` with the thermal time constant (30 s in the reference
lab), limited by what the heater range can reach above the cold head's base temperature.
With the heater off it relaxes to the base temperature. Between changes the solution is
exact (``T = target + (T0 - target) exp(-dt / tau)``), so a coarse clock loses nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# How far above base each Lake Shore 336 heater range can hold the stage (low, medium, high).
DEFAULT_RANGE_SPAN_K = {0: 0.0, 1: 2.0, 2: 20.0, 3: 300.0}


@dataclass
class Cryostat:
    base_temperature_k: float = 2.2
    time_constant_s: float = 30.0
    temperature_k: float = 2.5
    setpoint_k: float = 2.5
    heater_range: int = 1
    range_span_k: dict[int, float] = field(default_factory=lambda: dict(DEFAULT_RANGE_SPAN_K))
    time_s: float = 0.0  # the time ``temperature_k`` refers to

    def target_k(self) -> float:
        ceiling = self.base_temperature_k + self.range_span_k.get(self.heater_range, 0.0)
        return min(max(self.setpoint_k, self.base_temperature_k), ceiling)

    def advance_to(self, t_s: float) -> float:
        """Bring the state to time ``t_s`` (never backwards) and return the temperature."""
        if t_s > self.time_s:
            target = self.target_k()
            self.temperature_k = target + (self.temperature_k - target) * math.exp(
                -(t_s - self.time_s) / self.time_constant_s)
            self.time_s = t_s
        return self.temperature_k

    def heater_output_percent(self) -> float:
        """Heater power as a share of the range's full scale needed to hold the present target."""
        span = self.range_span_k.get(self.heater_range, 0.0)
        if span <= 0:
            return 0.0
        # Power to hold T scales with T - base; more while still heating towards the target.
        holding = (self.target_k() - self.base_temperature_k) / span
        heating = max(0.0, self.target_k() - self.temperature_k) / span
        return 100.0 * min(1.0, holding + heating)
