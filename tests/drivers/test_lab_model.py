"""The simulated lab's physics, in simulated time: what the instruments' simulators stand on."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qnode.sim.clock import SimClock
from qnode.sim.cryostat import Cryostat
from qnode.sim.interferometer import Interferometer
from qnode.sim.lab import LabModel
from qnode.sim.snspd import Snspd


# --- cryostat ------------------------------------------------------------------------------

def test_cryostat_approaches_setpoint_with_its_time_constant():
    stage = Cryostat(temperature_k=2.5, setpoint_k=3.5, time_constant_s=30.0, heater_range=1)
    assert stage.advance_to(30.0) == pytest.approx(3.5 - 1.0 / math.e)
    assert stage.advance_to(300.0) == pytest.approx(3.5, abs=1e-4)


def test_cryostat_result_does_not_depend_on_how_often_it_is_asked():
    coarse = Cryostat(temperature_k=2.5, setpoint_k=3.0, heater_range=1)
    fine = Cryostat(temperature_k=2.5, setpoint_k=3.0, heater_range=1)
    coarse.advance_to(45.0)
    for t in np.linspace(0, 45.0, 1000):
        fine.advance_to(t)
    assert fine.temperature_k == pytest.approx(coarse.temperature_k, rel=1e-12)


def test_heater_range_limits_what_the_stage_reaches():
    stage = Cryostat(base_temperature_k=2.2, temperature_k=2.5, setpoint_k=10.0, heater_range=1)  # low: +2 K
    assert stage.advance_to(1000.0) == pytest.approx(4.2, abs=1e-6)
    assert stage.heater_output_percent() == pytest.approx(100.0)
    stage.heater_range = 0
    assert stage.advance_to(2000.0) == pytest.approx(2.2, abs=1e-6)


def test_cryostat_time_does_not_run_backwards():
    stage = Cryostat(temperature_k=2.5, setpoint_k=3.0, heater_range=1)
    later = stage.advance_to(60.0)
    assert stage.advance_to(10.0) == later


# --- SNSPD ---------------------------------------------------------------------------------

def test_efficiency_plateau_near_9_ua_and_nominal_value():
    d = Snspd(nominal_bias_ua=10.0, nominal_efficiency=0.85)
    def eff(bias):
        d.set_bias_ua(bias)
        return d.efficiency(2.5)
    assert eff(10.0) == pytest.approx(0.85)
    assert eff(9.0) > 0.97 * eff(11.5)  # on the plateau
    assert eff(7.0) < 0.6 * eff(10.0)  # well below it
    assert eff(5.0) < eff(6.0) < eff(7.0) < eff(8.0)


def test_dark_counts_grow_by_e_per_half_microamp():
    d = Snspd(nominal_bias_ua=10.0, dark_rate_nominal_hz=100.0)
    d.set_bias_ua(10.0)
    assert d.dark_rate_hz(2.5) == pytest.approx(100.0)
    d.set_bias_ua(11.0)
    assert d.dark_rate_hz(2.5) == pytest.approx(100.0 * math.e ** 2)


def test_latch_above_switching_current_until_bias_returns_to_zero():
    d = Snspd()
    d.set_bias_ua(12.1)
    assert d.latched and d.efficiency(2.5) == 0 and d.dark_rate_hz(2.5) == 0
    d.set_bias_ua(9.0)
    assert d.latched  # still normal-conducting: the current keeps it hot
    d.set_bias_ua(0.0)
    d.set_bias_ua(9.0)
    assert not d.latched and d.efficiency(2.5) > 0.8


def test_warm_detector_loses_efficiency_and_gains_dark_counts():
    d = Snspd()
    assert d.efficiency(3.5) == pytest.approx(d.efficiency(2.5))
    assert d.efficiency(4.0) < 0.5 * d.efficiency(3.0)
    assert d.dark_rate_hz(4.0) > 5 * d.dark_rate_hz(3.0)


# --- interferometer ------------------------------------------------------------------------

def quiet(**kwargs):
    """An interferometer with every disturbance off except those named."""
    base = dict(diffusion_rad2_per_s=0.0, drift_rad_per_s=0.0, acoustic_amplitude_rad=0.0)
    return Interferometer(**{**base, **kwargs})


def test_phase_is_vectorised_over_int64_picoseconds():
    t_ps = np.arange(0, 10**12, 10**9, dtype=np.int64)
    phase = Interferometer(seed=4).phase_rad(t_ps)
    assert phase.shape == t_ps.shape and phase.dtype == np.float64


def test_linear_drift_and_acoustic_line():
    t_ps = np.array([0, 250_000_000_000, 5_000_000_000], dtype=np.int64)
    assert quiet(drift_rad_per_s=1.0).phase_rad(t_ps) == pytest.approx([0.0, 0.25, 0.005])
    acoustic = quiet(acoustic_amplitude_rad=0.1, acoustic_hz=50.0).phase_rad(t_ps)
    assert acoustic[2] == pytest.approx(0.1)  # a quarter period of 50 Hz


def test_random_walk_diffuses_two_rad2_per_second():
    walk = Interferometer(seed=11).random_walk_rad(np.arange(0, 2000) * 0.01)  # 20 s, 10 ms apart
    steps = np.diff(walk)
    assert np.var(steps) / 0.01 == pytest.approx(2.0, rel=0.1)


def test_random_walk_does_not_depend_on_query_order():
    times = np.array([300.0, 0.5, 17.25, 0.5001])
    a = Interferometer(seed=2).random_walk_rad(times)
    b = Interferometer(seed=2)
    b_values = [b.random_walk_rad(np.array([t]))[0] for t in times[::-1]][::-1]
    assert a == pytest.approx(b_values)


def test_four_volts_is_one_fringe_after_the_mechanical_lag():
    ifm = quiet()
    ifm.set_voltage_v(4.0, 1.0)
    t_ps = np.array([int(1.0e12), int(1.001e12), int(1.05e12)])
    assert ifm.phase_rad(t_ps) == pytest.approx([0.0, 2 * np.pi * (1 - math.exp(-1)), 2 * np.pi], abs=1e-9)


def test_piezo_is_clamped_to_its_rails():
    ifm = quiet()
    assert ifm.set_voltage_v(200.0, 0.0) == 150.0
    assert ifm.set_voltage_v(-5.0, 1.0) == 0.0


def test_kick_jumps_the_true_phase():
    ifm = quiet()
    ifm.kick(2.0, math.pi)
    assert ifm.phase_rad(np.array([1_999_999_999_999, 2_000_000_000_000])) == pytest.approx([0.0, math.pi])


def test_many_small_steps_track_a_slow_ramp():
    ifm = quiet()
    for k in range(1, 3001):  # a 1 kHz loop ramping 1 V/s for 3 s
        ifm.set_voltage_v(k * 1e-3, k * 1e-3)
    phase = ifm.phase_rad(np.array([int(3.0e12)]))[0]
    # Just as the 3000th 1 mV step lands, the lag holds every earlier step's remainder:
    # 1 mV x (1 + e^-1 + e^-2 + ...) = 1 mV / (1 - e^-1). Steps older than 30 tau are exact.
    lag_v = 1e-3 / (1 - math.exp(-1))
    assert phase == pytest.approx(2 * np.pi * (3.0 - lag_v) / 4.0, abs=1e-9)


# --- the lab as a whole --------------------------------------------------------------------

def test_lab_detector_state_uses_config_and_temperature():
    from qnode.host.config import load_config

    lab = LabModel(load_config(), clock=SimClock())
    assert lab.detector_state(1) == pytest.approx((0.85, 100.0))
    lab.set_heater_range(2)
    lab.set_setpoint_k(5.0)
    lab.clock.advance(300.0)
    efficiency, dark = lab.detector_state(1)
    assert efficiency < 0.05 and dark > 1e3


def test_latched_detector_counts_nothing():
    lab = LabModel(clock=SimClock())
    lab.set_bias_ua(2, 12.5)
    counts = lab.counts(1.0)
    assert counts[1] == 0 and counts[0] > 0  # channel 1 keeps its dark counts


def test_powermeter_sees_the_laser_only_when_it_emits():
    lab = LabModel(clock=SimClock())
    lab.laser.power_dbm = 10.0
    assert lab.powermeter_reading_w(1550.0) < 1e-8
    lab.laser.emission_on = True
    assert lab.powermeter_reading_w(1550.0) == pytest.approx(10e-3 * lab.powermeter_fraction, rel=1e-3)
