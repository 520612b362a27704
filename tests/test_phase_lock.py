"""The interferometer phase lock, scored against the simulated lab's true phase (simulated time)."""

import math

import numpy as np
import pytest

from qnode.host.phase_lock import (PhaseFilter, PhaseLock, PhaseLockSettings, forced_rewinds, simulate_lock,
                                   wrap_rad)


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


def test_pi_kick_is_found_and_relocked(kicked_run):
    # Relock: from the kick until the residual's 2 ms RMS stays below 10 deg for 5 ms.
    relocks = [kicked_run.relock_ms(t) for t, _ in PI_KICKS]
    assert all(r is not None for r in relocks)
    assert np.median(relocks) <= 10.0 and max(relocks) <= 15.0, f"relock after pi kicks: {relocks} ms"
    assert kicked_run.controller.sign_flips >= len(PI_KICKS)  # found by the sign check, not by drifting off


def test_twenty_pi_kicks_relock_time_distribution():
    # The acceptance figure is every pi kick within 10 ms. Over 200 kicks on ten seeds 6 take
    # longer (up to 12.1 ms, docs/calibration.md); on this seed all 20 are within 10 ms (the
    # slowest 6.9 ms). Asserted: at least 19 of 20 within 10 ms, none over 15 ms, the median
    # within 6 ms, and the residual between kicks within 10 deg RMS.
    kicks = [(0.1 + 0.1 * i + 0.000959 * i, math.pi if i % 2 == 0 else -math.pi) for i in range(20)]
    run = simulate_lock(duration_s=2.1, seed=5, kicks=kicks)
    relocks = np.array([np.inf if r is None else r for r in (run.relock_ms(t) for t, _ in kicks)])
    assert (relocks <= 10.0).sum() >= 19 and relocks.max() <= 15.0 and np.median(relocks) <= 6.0, \
        f"relock after pi kicks: {relocks.round(1)} ms"
    rms = np.sqrt(np.mean([run.rms_deg(t + 0.03, t + 0.1) ** 2 for t, _ in kicks]))
    assert rms <= 10.0, f"residual {rms:.1f} deg RMS"


def test_two_pi_kick_relocks_within_10_ms(kicked_run):
    relock = kicked_run.relock_ms(0.6007)
    assert relock is not None and relock <= 10.0
    assert kicked_run.rms_deg(0.62, 0.8) <= 10.0


def test_stretcher_rewound_by_2_pi_relocks_within_10_ms():
    # The scenario's stretcher (1 ms response) rewound by one fringe four times, down and up:
    # the phase sweeps a fringe while it moves, and the lock is back within a few ms.
    on_cycle, rewound_s = forced_rewinds(every_cycles=100, after_cycles=100)
    run = simulate_lock(duration_s=0.55, seed=4, on_cycle=on_cycle)
    assert len(rewound_s) == 4 and run.controller.rewinds == 4
    relocks = [run.relock_ms(t) for t in rewound_s]
    assert all(r is not None and r <= 10.0 for r in relocks), f"relock after rewinds: {relocks} ms"
    assert max(run.actuator_v) - min(run.actuator_v) > 4.0  # whole fringes (4 V) were jumped


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
    # the feed-forward learnt the lab's 50 Hz acoustic line (0.1 rad = 5.7 deg)
    assert 3.0 <= run.controller.status()["line_deg"] <= 9.0
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


def test_lock_loss_is_declared_then_a_new_sweep_and_the_lock_comes_back():
    # The stretcher stops answering (a cable off) with the phase 120 deg from the setpoint: the
    # error stays out of range. After lost_after_cycles the lock is 'relocking' (one lock loss
    # counted), after relock_sweep_cycles it sweeps again; reconnected, the sweep finds the fringe.
    lock = PhaseLock(PhaseLockSettings(actuator_tau_s=0.0))
    s = lock.settings
    theta, n, v2pi = 0.3, 200, 4.0
    states, errors = [], []

    def cycle(phase):
        e = 0.95 * math.cos(phase)
        lock.update(round(n * (1 + e) / 2), round(n * (1 - e) / 2))
        states.append(lock.state)

    for _ in range(200):
        phase = theta + 2 * math.pi * lock.command_v / v2pi
        cycle(phase)
    assert lock.state == "locked" and lock.relocks == 0
    stuck = phase + math.radians(120)
    for _ in range(40):
        cycle(stuck)
    lost = states[200:240]
    assert lost[: s.lost_after_cycles - 1] == ["locked"] * (s.lost_after_cycles - 1)
    assert lost[s.lost_after_cycles - 1] == "relocking" and lock.relocks == 1
    assert lost.index("acquiring") == s.relock_sweep_cycles - 1
    for _ in range(300):
        phase = theta + 2 * math.pi * lock.command_v / v2pi
        cycle(phase)
        errors.append(float(wrap_rad(phase - math.radians(s.setpoint_deg))))
    assert lock.state == "locked" and lock.relocks == 1
    # on the setpoint: the mean error is ~0, the rest is the loop's own square-wave dither
    late = np.degrees(errors[-100:])
    assert abs(np.mean(late)) < 2.0 and np.median(np.abs(late)) < s.dither_deg + 3.0


def test_filter_tells_the_mirror_branch_by_the_response_to_a_known_step():
    # Held at 90 deg, kicked by pi to -90 deg: the same imbalance, so one burst cannot tell.
    f = PhaseFilter()
    f.reset(math.radians(90.0), math.radians(4.0))

    def burst(phase_deg):
        e = 0.95 * math.cos(math.radians(phase_deg))
        f.update(round(50 * (1 + e)), round(50 * (1 - e)), 0.95)

    burst(-90.0)
    phase, mirror = f.estimate()
    assert abs(math.degrees(phase) - 90.0) < 3.0 and mirror < 0.01
    # A known step of +20 deg: the held branch would now read 110 deg, the mirror one -70 deg.
    f.predict(math.radians(20.0), 2e-3, 1e-3, 5e-3, math.radians(15.0))
    burst(-70.0)
    phase, mirror = f.estimate()
    assert abs(math.degrees(phase) + 70.0) < 5.0 and mirror < 0.05


def test_bad_settings_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="actuator range"):
        PhaseLock({"rail_low_v": 0.0, "rail_high_v": 10.0})


# --- the loop machinery (host/loops.py) and the daemon's phase_lock loop ------------------------


class Counting:
    """A Loop whose steps are counted, driven by a hand clock."""

    def __new__(cls, policy, period_s=0.01):
        from qnode.host.loops import Loop

        class _L(Loop):
            def apply_settings(self, changes):
                if "gain" in changes and not 0 < changes["gain"] < 2:
                    raise ValueError("gain must be in (0, 2)")

        return _L("t", period_s, policy)


def test_loop_skip_drops_missed_periods_and_counts_them():
    loop = Counting("skip")
    assert loop.tick(0.0) == 1
    assert loop.tick(0.005) == 0  # not due yet
    assert loop.tick(0.0101) == 1
    assert loop.tick(0.0555) == 1  # 0.02, 0.03, 0.04, 0.05 were due: one step, three missed
    assert (loop.steps, loop.missed) == (3, 3)
    assert loop.tick(0.0599) == 0 and loop.tick(0.0601) == 1  # back on the grid


def test_loop_catch_up_runs_missed_periods_and_stop_stops():
    loop = Counting("catch_up")
    loop.tick(0.0)
    assert loop.tick(0.0355) == 3 and loop.missed == 0  # 0.01, 0.02 and 0.03, back to back
    late = Counting("stop")
    late.tick(0.0)
    assert late.tick(0.0255) == 0
    assert late.stopped_reason is not None and "missed 1 period" in late.stopped_reason


def test_loop_settings_change_while_running_and_bad_ones_change_nothing():
    loop = Counting("skip")
    loop.set({"gain": 0.5})
    with pytest.raises(ValueError, match="gain"):
        loop.set({"gain": 5.0})
    assert loop.status()["settings"] == {"gain": 0.5}


def test_daemon_runs_the_phase_lock_loop_with_settings_and_status():
    from qnode.host.api import ApiError
    from qnode.host.client import Client, Subscriber
    from qnode.host.config import load_config
    from qnode.host.daemon import Daemon

    with Daemon(load_config(), control_url="tcp://127.0.0.1:0", stream_url="tcp://127.0.0.1:0") as daemon:
        client = Client(daemon.control_url)
        listed = client.call("loops.list")
        assert listed["phase_lock"]["implemented"] and not listed["phase_lock"]["running"]
        assert not listed["temperature_watch"]["implemented"]
        with Subscriber(daemon.stream_url, topics=["loops.phase_lock"]) as sub:
            assert client.call("loops.start", name="phase_lock")["running"]
            status = None
            for _ in range(100):  # until the loop has worked on reference bursts (or 100 messages)
                message = sub.receive(timeout_s=5.0)
                assert message is not None, "no loops.phase_lock status published"
                status = message[1]
                if status["bursts"] > 0 and status["cycles"] > 3:
                    break
        assert status["bursts"] > 0 and status["errors"] == 0, status
        # 'stale' too: on a loaded machine the newest events can trail by more than 0.2 s
        assert status["state"] in ("acquiring", "relocking", "locked", "stale"), status
        assert 0.0 <= status["actuator_v"] <= 150.0, status
        changed = client.call("loops.set", name="phase_lock", settings={"setpoint_deg": 60.0})
        assert changed["settings"]["setpoint_deg"] == 60.0 and changed["running"]
        with pytest.raises(ApiError, match="setpont"):
            client.call("loops.set", name="phase_lock", settings={"setpont": 1.0})
        with pytest.raises(ApiError, match="NotAvailable|temperature_watch"):
            client.call("loops.start", name="temperature_watch")
        stopped = client.call("loops.stop", name="phase_lock")
        assert not stopped["running"]
        # the stretcher holds the loop's last command
        assert daemon.instruments["stretcher"].voltage_v() == pytest.approx(stopped["actuator_v"], abs=0.01)
        client.close()


def test_duty_cycle_comes_from_the_reference_timing():
    from qnode.host.config import load_config

    config = load_config()
    # 200 us of reference light every 2 ms (10 % duty, half the update rate)
    ref = config.sim.reference.model_copy(update={"cycle_ps": 2_000_000_000, "burst_ps": 200_000_000})
    config = config.model_copy(update={"sim": config.sim.model_copy(update={"reference": ref})})
    run = simulate_lock(config, duration_s=0.4, seed=4)
    assert run.controller.settings.cycle_s == pytest.approx(2e-3)
    assert run.controller.settings.burst_s == pytest.approx(200e-6)
    assert len(run.cycle_t_s) == 200
    assert run.rms_deg(0.1, 0.4) <= 10.0
    assert run.controller.status()["line_deg"] > 1.0  # 10 cycles per period of the line: still learnt


def test_acoustic_line_feed_forward_is_off_when_the_cycle_cannot_resolve_it():
    # 25 ms cycles (the daemon's loop): 50 Hz is above Nyquist, a learnt 'line' would be aliased
    lock = PhaseLock(PhaseLockSettings(actuator_tau_s=0.0, cycle_s=0.025, burst_s=100e-6, dither_deg=0.0))
    _drive(lock, 300, drift_rad_per_cycle=0.01)
    assert lock.status()["line_deg"] == 0.0 and lock.status()["locked"]
    off = PhaseLock(PhaseLockSettings(line_hz=0.0))
    assert off._line_step(0.1) == 0.0


def _bursts(first_cycle, n_cycles, *, counts=(60, 40), cycle_ps=1_000_000_000, burst_ps=100_000_000):
    """Events of ``n_cycles`` reference cycles: ``counts`` (D+ on 3, D- on 4) spread over each
    burst, and one click on channel 1 at the end of each cycle (the herald light goes on)."""
    from qnode.firmware.events import EVENT_DTYPE, Kind

    rows = []
    for c in range(first_cycle, first_cycle + n_cycles):
        start = c * cycle_ps
        for channel, n in zip((3, 4), counts):
            rows += [(start + (k + 1) * burst_ps // (n + 1), channel) for k in range(n)]
        rows.append((start + cycle_ps - 1000, 1))
    rows.sort()
    events = np.zeros(len(rows), dtype=EVENT_DTYPE)
    events["time_ps"] = [r[0] for r in rows]
    events["channel"] = [r[1] for r in rows]
    events["kind"] = Kind.TAG
    return events


def _live_loop(writes, **settings):
    from types import SimpleNamespace

    from qnode.host.phase_lock import make_phase_lock_loop

    config = SimpleNamespace(period_s=0.02, missed_period="skip", settings={"latency_s": 0.0, **settings})
    reference = SimpleNamespace(cycle_ps=1_000_000_000, burst_ps=100_000_000)
    return make_phase_lock_loop("phase_lock", config, reference=reference, actuator=writes.append)


def test_daemon_loop_holds_the_actuator_on_stale_data_and_says_so():
    import time

    writes = []
    # 0.5 s: a fresh batch's age is the time from its feed to the step, which a busy machine
    # can stretch past 0.1 s (the suite once saw that on a fresh clone)
    loop = _live_loop(writes, max_data_age_s=0.5)
    loop.feed(_bursts(0, 20))
    loop.step()
    assert len(writes) == 1 and loop.status()["state"] == "acquiring"
    time.sleep(0.6)  # no events for longer than max_data_age_s: the stream stopped
    loop.step()
    status = loop.status()
    assert len(writes) == 1, "a command was written from stale data"
    assert status["state"] == "stale" and not status["locked"] and status["data_age_s"] > 0.5
    assert status["stale_steps"] == 1 and "old" in status["waiting"]
    # fresh events again (the event time moves on with the wall clock): the loop goes on
    time.sleep(0.03)
    loop.feed(_bursts(20, 200))
    loop.step()
    assert len(writes) == 2 and loop.status()["state"] != "stale", loop.status()
    with pytest.raises(ValueError, match="max_data_age_s"):
        loop.set({"max_data_age_s": 0})


def test_daemon_loop_sees_dark_bursts_as_the_reference_light_gone():
    writes = []
    loop = _live_loop(writes)
    loop.feed(_bursts(0, 20))
    loop.step()
    held_v = writes[-1]
    # the reference light goes out: only the other channels click, so the bursts have no counts
    loop.feed(_bursts(20, 20, counts=(0, 0)))
    loop.step()
    status = loop.status()
    assert status["state"] == "no_reference" and loop.waiting is None
    assert writes[-1] == pytest.approx(held_v, abs=1e-9), "the actuator moved in the dark"
