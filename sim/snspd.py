"""A superconducting nanowire single-photon detector under a bias current.

- efficiency: a sigmoid in bias current that reaches its plateau near 9 uA, scaled so that
  the nominal bias gives the lab's configured efficiency (0.85);
- dark counts: ``dark_rate_nominal_hz * exp((I_b - I_nominal) / 0.5 uA)``;
- above the switching current (12 uA) the wire latches normal: no counts at all, until the
  bias goes to zero and is raised again;
- above 3.5 K efficiency falls and dark counts rise (the superconducting margin shrinks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SWITCHING_CURRENT_UA = 12.0
DARK_COUNT_SCALE_UA = 0.5
WARM_THRESHOLD_K = 3.5


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@dataclass
class Snspd:
    nominal_bias_ua: float = 10.0
    nominal_efficiency: float = 0.85
    dark_rate_nominal_hz: float = 100.0
    switching_current_ua: float = SWITCHING_CURRENT_UA
    # the sigmoid's midpoint and width: 7 +- 0.5 uA puts 98 % of the plateau at 9 uA
    sigmoid_mid_ua: float = 7.0
    sigmoid_width_ua: float = 0.5
    bias_ua: float = 10.0
    latched: bool = False

    def set_bias_ua(self, bias_ua: float) -> None:
        if bias_ua <= 0.0:
            self.latched = False  # zero bias lets the wire cool back into superconductivity
        elif bias_ua > self.switching_current_ua:
            self.latched = True
        self.bias_ua = float(bias_ua)

    def _plateau_fraction(self, bias_ua: float) -> float:
        if bias_ua <= 0:
            return 0.0
        return _sigmoid((bias_ua - self.sigmoid_mid_ua) / self.sigmoid_width_ua)

    def efficiency(self, temperature_k: float) -> float:
        if self.latched or self.bias_ua <= 0:
            return 0.0
        scale = self.nominal_efficiency / self._plateau_fraction(self.nominal_bias_ua)
        efficiency = scale * self._plateau_fraction(self.bias_ua)
        if temperature_k > WARM_THRESHOLD_K:
            efficiency *= math.exp(-(temperature_k - WARM_THRESHOLD_K) / 0.5)
        return min(1.0, efficiency)

    def dark_rate_hz(self, temperature_k: float) -> float:
        if self.latched or self.bias_ua <= 0:
            return 0.0
        rate = self.dark_rate_nominal_hz * math.exp((self.bias_ua - self.nominal_bias_ua) / DARK_COUNT_SCALE_UA)
        if temperature_k > WARM_THRESHOLD_K:
            rate *= math.exp((temperature_k - WARM_THRESHOLD_K) / 0.25)
        return rate
