"""The interferometer phase lock, scored against the simulated lab's true phase (simulated time)."""

import math

import numpy as np
import pytest

from qnode.host.phase_lock import PhaseLock, PhaseLockSettings, simulate_lock, wrap_rad


@pytest.fixture(scope="module")
def kicked_run():
    # Lock, then pi kicks (the worst case at mid-fringe: invisible to the imbalance) and a
    # 2 pi kick, at odd moments of the cycle, under the scenario's drift, acoustic line and
    # shot noise.
    return simulate_lock(duration_s=0.8, seed=1, kicks=PI_KICKS + [(0.6007, 2 * math.pi)])


PI_KICKS = [(0.2003, math.pi), (0.3011, math.pi), (0.4005, -math.pi), (0.5009, math.pi)]


def test_lock_is_acquired_by_a_sweep_and_holds_within_10_deg_rms(kicked_run):
    run = kicked_run
    assert run.states[0] == "acquiring"
    assert run.locked_at_s is not None and run.locked_at_s < 0.05
    rms = run.rms_deg(0.05, 0.2)
    assert rms <= 10.0, f"residual {rms:.1f} deg RMS"
    # and the lock knows it: locked for nearly every cycle once acquired
    states = run.states[50:200]
    assert states.count("locked") >= 0.95 * len(states)


def test_pi_kick_is_found_and_relocked_within_10_ms(kicked_run):
    # Relock: from the kick until the residual's 2 ms RMS stays below 10 deg for 5 ms. The
    # time varies with the shot noise: median ~5 ms, 1 kick in 20 just past 10 ms (docs).
    relocks = [kicked_run.relock_ms(t) for t, _ in PI_KICKS]
    assert all(r is not None for r in relocks)
    assert np.median(relocks) <= 10.0 and max(relocks) <= 15.0, f"relock after pi kicks: {relocks} ms"
    assert kicked_run.controller.sign_flips >= len(PI_KICKS)  # found by the sign check, not by drifting off


def test_two_pi_kick_relocks_within_10_ms(kicked_run):
    relock = kicked_run.relock_ms(0.6007)
    assert relock is not None and relock <= 10.0
    assert kicked_run.rms_deg(0.62, 0.8) <= 10.0


def test_reference_light_gone_the_loop_waits_and_relocks_when_it_returns():
    run = simulate_lock(duration_s=0.45, seed=2, dark=[(0.15, 0.25)])
    dark = (run.cycle_t_s >= 0.152) & (run.cycle_t_s < 0.25)
    assert all(s == "no_reference" for s, d in zip(run.states, dark) if d)
    held = run.actuator_v[dark]
    assert held.max() - held.min() < 0.05  # holds still: no integrating on darkness
    assert run.controller.status()["locked"]
    settled = run.settled_at_s(0.25)
    assert settled is not None and settled < 0.30
    assert run.rms_deg(0.32, 0.45) <= 10.0


def test_setpoint_changes_while_running():
    def change(cycle, lock):
        if cycle == 150:
            lock.set(setpoint_deg=60.0)

    run = simulate_lock(duration_s=0.3, seed=3, on_cycle=change)
    assert run.controller.settings.setpoint_deg == 60.0
    # residuals are scored against the setpoint in force at each cycle
    assert run.rms_deg(0.17, 0.3) <= 10.0
    with pytest.raises(KeyError, match="known:"):
        run.controller.set(setpont_deg=10.0)


def _drive(lock: PhaseLock, cycles: int, drift_rad_per_cycle: float, v2pi: float = 4.0) -> list[float]:
    """A noiseless plant with an instantaneous actuator: phase = drift + 2 pi v / v2pi."""
    errors, theta = [], 0.3
    n = 200
    for _ in range(cycles):
        phase = theta + 2 * math.pi * lock.command_v / v2pi
        e = 0.95 * math.cos(phase)
        lock.update(round(n * (1 + e) / 2), round(n * (1 - e) / 2))
        errors.append(float(wrap_rad(phase - math.radians(lock.settings.setpoint_deg))))
        theta += drift_rad_per_cycle
    return errors


def test_actuator_rewinds_by_whole_fringes_before_a_rail():
    lock = PhaseLock(PhaseLockSettings(actuator_tau_s=0.0, rail_low_v=0.0, rail_high_v=20.0,
                                       rail_margin_v=2.0, dither_deg=0.0))
    # 10 rad/s of drift (ten times the scenario's) for 4 s: ~6 fringes, the rails allow 4
    errors = _drive(lock, 4000, drift_rad_per_cycle=0.01)
    status = lock.status()
    assert status["rewinds"] >= 2
    assert 0.0 <= status["actuator_v"] <= 20.0
    assert status["locked"]
    late = np.degrees(np.abs(errors[-200:]))
    assert np.median(late) < 3.0


def test_bad_settings_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="actuator range"):
        PhaseLock({"rail_low_v": 0.0, "rail_high_v": 10.0})
