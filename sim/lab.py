"""The simulated lab's physical state, shared by every simulated instrument.

One :class:`LabModel` holds the cryostat, the SNSPDs' bias and latch state, the laser, the
power meter's view of it, and the interferometer with its fibre stretcher. Simulated
instruments (``qnode.sim.instruments``) read and change it through the methods here, and
the photon source (``qnode.sim.source.PhotonSource``) receives the detectors' efficiency and
dark rate through :meth:`LabModel.apply_to`.

Time comes from an injectable clock (``now_s()``): a :class:`~qnode.sim.clock.SimClock` in
tests (advance 150 s of thermal settling instantly) or a wall clock when serving a demo.
"""

from __future__ import annotations

import threading

import numpy as np

from .clock import SimClock, WallClock
from .cryostat import Cryostat
from .interferometer import Interferometer
from .laser import Laser
from .snspd import Snspd

# Which FPGA channel each SNSPD controller channel (1-based) feeds in the reference lab.
DEFAULT_SNSPD_CHANNELS = (1, 2, 3, 4)


class LabModel:
    def __init__(self, config=None, *, clock=None, seed: int | None = None,
                 snspd_channels: tuple[int, ...] | None = None,
                 powermeter_fraction: float = 0.01, awg_to_piezo_gain: float = 15.0):
        self.config = config
        self.clock = clock if clock is not None else SimClock()
        sim = getattr(config, "sim", None)
        self.seed = seed if seed is not None else (sim.seed if sim is not None else 1)
        self._lock = threading.RLock()
        self.rng = np.random.default_rng([self.seed, 0xC0DE])
        self.cryostat = Cryostat()
        self.snspd_channels = tuple(snspd_channels or _configured_snspd_channels(config))
        self.detectors: dict[int, Snspd] = {}
        for channel in dict.fromkeys(self.snspd_channels + _hand_biased_channels(config)):
            model = _detector_model(sim, channel)
            self.detectors[channel] = Snspd(nominal_efficiency=model[0], dark_rate_nominal_hz=model[1])
        self.laser = Laser()
        self.powermeter_fraction = powermeter_fraction  # tap ratio from laser to power meter
        self.interferometer = Interferometer(seed=self.seed)
        self.piezo_voltage_v = 0.0  # MDT694B output
        self.awg_offset_v = 0.0  # Keysight 33500B DC offset, amplified onto the same piezo
        self.awg_output_on = False
        self.awg_to_piezo_gain = awg_to_piezo_gain
        # A shutter in front of the detectors' fibres: closed, the SNSPD controller's counters
        # see dark counts only (the bias sweep measures them so). It does not reach the
        # simulated FPGA's photon source, whose light is set by the config.
        self.light_on = True

    @classmethod
    def for_demo(cls, config=None, speed: float = 1.0) -> "LabModel":
        return cls(config, clock=WallClock(speed))

    def now_s(self) -> float:
        return self.clock.now_s()

    # --- cryostat ------------------------------------------------------------------------
    def temperature_k(self) -> float:
        with self._lock:
            return self.cryostat.advance_to(self.now_s())

    def set_setpoint_k(self, setpoint_k: float) -> None:
        with self._lock:
            self.cryostat.advance_to(self.now_s())
            self.cryostat.setpoint_k = float(setpoint_k)

    def set_heater_range(self, heater_range: int) -> None:
        with self._lock:
            self.cryostat.advance_to(self.now_s())
            self.cryostat.heater_range = int(heater_range)

    def heater_output_percent(self) -> float:
        with self._lock:
            self.cryostat.advance_to(self.now_s())
            return self.cryostat.heater_output_percent()

    # --- detectors -----------------------------------------------------------------------
    def set_bias_ua(self, channel: int, bias_ua: float) -> None:
        with self._lock:
            self.detectors[channel].set_bias_ua(bias_ua)

    def bias_ua(self, channel: int) -> float:
        return self.detectors[channel].bias_ua

    def latched(self, channel: int) -> bool:
        return self.detectors[channel].latched

    def detector_state(self, channel: int) -> tuple[float, float]:
        """(efficiency, dark_rate_hz) of the detector on FPGA channel ``channel``, now."""
        with self._lock:
            temperature_k = self.temperature_k()
            snspd = self.detectors[channel]
            return snspd.efficiency(temperature_k), snspd.dark_rate_hz(temperature_k)

    def apply_to(self, source) -> dict[int, tuple[float, float]]:
        """Push every SNSPD's present efficiency and dark rate into a PhotonSource."""
        states = {}
        known = getattr(source, "detectors", None)  # a source without a channel has no detector there
        for channel in self.detectors:
            if known is not None and channel not in known:
                continue
            efficiency, dark_rate_hz = self.detector_state(channel)
            source.set_detector(channel, efficiency=efficiency, dark_rate_hz=dark_rate_hz)
            states[channel] = (efficiency, dark_rate_hz)
        return states

    def signal_rate_hz(self, channel: int) -> float:
        """Detected light rate on ``channel`` at nominal efficiency (reference lab figures)."""
        sim = getattr(self.config, "sim", None)
        if sim is None or not self.light_on:
            return 0.0
        nominal = self.detectors[channel].nominal_efficiency
        rate = 0.0
        if sim.pair_source is not None:
            if channel == sim.pair_source.channel_a:
                rate += sim.pair_source.rate_hz * sim.pair_source.transmission_a * nominal
            if channel == sim.pair_source.channel_b:
                rate += sim.pair_source.rate_hz * sim.pair_source.transmission_b * nominal
        if sim.reference is not None and sim.heralding is not None and channel in (
                sim.heralding.channel_plus, sim.heralding.channel_minus):
            rate += sim.reference.rate_hz * sim.reference.burst_ps / sim.reference.cycle_ps / 2
        return rate

    def counts(self, period_s: float) -> list[int]:
        """Counts per SNSPD controller channel over ``period_s``, as the controller's counters see them."""
        with self._lock:
            temperature_k = self.temperature_k()
            out = []
            for channel in self.snspd_channels:
                snspd = self.detectors[channel]
                nominal = snspd.nominal_efficiency or 1.0
                rate = (snspd.efficiency(temperature_k) / nominal * self.signal_rate_hz(channel)
                        + snspd.dark_rate_hz(temperature_k))
                out.append(int(self.rng.poisson(rate * period_s)))
            return out

    # --- laser and power meter ---------------------------------------------------------
    def powermeter_reading_w(self, wavelength_setting_nm: float) -> float:
        with self._lock:
            optical_w = self.laser.output_mw() * 1e-3 * self.powermeter_fraction
            noise_w = abs(self.rng.normal(0.0, 1e-10))  # the sensor's dark noise, ~100 pW
            # A wavelength correction set for the wrong colour reads the responsivity ratio.
            mismatch = 1.0 + 1e-3 * (self.laser.wavelength_nm - wavelength_setting_nm)
            return optical_w * mismatch + noise_w

    # --- the phase actuator -------------------------------------------------------------
    def _push_piezo(self) -> None:
        total = self.piezo_voltage_v + (self.awg_to_piezo_gain * self.awg_offset_v if self.awg_output_on else 0.0)
        self.interferometer.set_voltage_v(total, self.now_s())

    def set_piezo_voltage_v(self, voltage_v: float) -> float:
        with self._lock:
            self.piezo_voltage_v = min(max(float(voltage_v), 0.0), 150.0)
            self._push_piezo()
            return self.piezo_voltage_v

    def set_awg_offset_v(self, offset_v: float, output_on: bool) -> None:
        with self._lock:
            self.awg_offset_v = float(offset_v)
            self.awg_output_on = bool(output_on)
            self._push_piezo()

    def phase_rad(self, t_ps: np.ndarray) -> np.ndarray:
        """The TRUE interferometer phase (see :mod:`qnode.sim.interferometer`)."""
        return self.interferometer.phase_rad(t_ps)


def _detector_model(sim, channel: int) -> tuple[float, float]:
    """(nominal efficiency, nominal dark rate) from sim.detector and sim.detectors.N."""
    if sim is None:
        return 0.85, 100.0
    model = sim.detector
    override = sim.detectors.get(channel)
    if override is not None:
        fields = override.model_fields_set
        efficiency = override.efficiency if "efficiency" in fields else model.efficiency
        dark = override.dark_rate_hz if "dark_rate_hz" in fields else model.dark_rate_hz
        return efficiency, dark
    return model.efficiency, model.dark_rate_hz


def _configured_snspd_channels(config) -> tuple[int, ...]:
    """``options.channels`` of the config's SNSPD controller (FPGA channel of each detector), or 1-4."""
    for entry in getattr(config, "instruments", {}).values():
        if entry.driver == "singlequantum_eos" and "channels" in entry.options:
            return tuple(int(c) for c in entry.options["channels"])
    return DEFAULT_SNSPD_CHANNELS


def _hand_biased_channels(config) -> tuple[int, ...]:
    """Channels whose SNSPD a simulated bias source (GS200, ``options.channel``) feeds."""
    return tuple(int(entry.options.get("channel", 1)) for entry in getattr(config, "instruments", {}).values()
                 if entry.driver == "gs200" and entry.sim)
