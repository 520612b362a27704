"""The real drivers closing loops through the simulated lab, in simulated time."""

from __future__ import annotations

import pytest

from qnode.drivers.registry import open_instrument
from qnode.sim.instruments.rack import InstrumentRack


@pytest.fixture
def rack(lab):
    with InstrumentRack(lab.config, lab, any_free_port=True) as rack:
        yield rack


@pytest.fixture
def connect(rack):
    """connect(name) -> the real driver for the rack's simulator ``name``, opened; closed after the test."""
    drivers = []

    def open_named(name):
        driver = open_instrument(name, rack.config_entry(name))
        drivers.append(driver)
        return driver

    yield open_named
    for driver in drivers:
        driver.close()


def test_cryostat_settles_to_a_new_setpoint(connect, lab):
    cryostat = connect("cryostat")
    assert cryostat.temperature_k("A") == pytest.approx(2.5, abs=1e-3)
    cryostat.set_setpoint_k(3.2)
    assert cryostat.setpoint_k() == pytest.approx(3.2)
    lab.clock.advance(30.0)  # one time constant: 63 % of the way
    assert cryostat.temperature_k("A") == pytest.approx(2.5 + 0.7 * (1 - 2.718281828 ** -1), abs=2e-3)
    lab.clock.advance(150.0)  # five more
    assert cryostat.temperature_k("A") == pytest.approx(3.2, abs=2e-3)
    assert 0 < cryostat.heater_output_percent() < 100


def test_heater_off_lets_the_stage_fall_to_base(connect, lab):
    cryostat = connect("cryostat")
    cryostat.heater_off()
    lab.clock.advance(300.0)
    assert cryostat.temperature_k("A") == pytest.approx(lab.cryostat.base_temperature_k, abs=1e-3)
    assert cryostat.heater_output_percent() == 0.0


def test_warm_cryostat_costs_efficiency_and_adds_dark_counts(connect, lab):
    cryostat = connect("cryostat")
    cold = lab.detector_state(3)
    cryostat.set_heater_range(2)  # medium: can reach 4+ K
    cryostat.set_setpoint_k(4.5)
    lab.clock.advance(300.0)
    warm = lab.detector_state(3)
    assert warm[0] < 0.5 * cold[0] and warm[1] > 10 * cold[1]


def counts_over_one_period(snspd, lab, period_s: float = 1.0) -> list[int]:
    """Counts over one counter period of simulated time that starts now.

    The manual clock moves only here, so the period's line is the only one in the stream.
    (latest_counts() waits for a period ending after the call, which a stopped clock never brings.)
    """
    snspd.set_measurement_period_ms(period_s * 1000.0)
    lab.clock.advance(period_s)
    return snspd.next_counts()[1]


def test_bias_past_switching_current_latches_until_reset(connect, lab):
    snspd = connect("snspd")
    assert lab.detector_state(1) == pytest.approx((0.85, 100.0))
    snspd.set_bias_current_ua(1, 12.5)  # past the 12 uA switching current
    assert lab.latched(1)
    assert lab.detector_state(1) == (0.0, 0.0)
    counts = counts_over_one_period(snspd, lab)
    assert counts[0] == 0 and counts[1] > 0  # the latched detector is silent, its neighbour is not

    snspd.set_bias_current_ua(1, 10.0)  # lowering the bias is not enough
    assert lab.latched(1) and lab.detector_state(1)[0] == 0.0

    snspd.unlatch(1, bias_ua=10.0)  # the driver's reset path: through zero, then back up
    assert not lab.latched(1)
    assert lab.detector_state(1) == pytest.approx((0.85, 100.0))
    assert snspd.bias_currents_ua()[0] == pytest.approx(10.0)
    counts = counts_over_one_period(snspd, lab)
    assert counts[0] > 0


def test_counts_follow_the_bias(connect, lab):
    snspd = connect("snspd")
    snspd.set_bias_currents_ua([10.0, 10.0, 10.0, 6.0])
    counts = counts_over_one_period(snspd, lab)
    # detector 4 sits far below the plateau: it sees a small fraction of detector 3's light
    assert counts[3] < 0.5 * counts[2]


def test_lab_pushes_detector_state_into_the_photon_source(connect, lab):
    from qnode.sim.source import PhotonSource

    source = PhotonSource(lab.config, phase_rad=lab.phase_rad)
    snspd = connect("snspd")
    snspd.set_bias_current_ua(2, 13.0)
    states = lab.apply_to(source)
    assert states[2] == (0.0, 0.0)
    assert source.detectors[2].efficiency == 0.0 and source.detectors[2].dark_rate_hz == 0.0
    assert source.detectors[1].efficiency == pytest.approx(0.85)


def test_piezo_voltage_moves_the_true_phase(connect, lab):
    """Half a fringe (2.0 V of 4.0 V per 2 pi) shifts the true phase by pi once the stretcher settles."""
    import numpy as np

    from qnode.sim.interferometer import Interferometer

    untouched = Interferometer(seed=lab.interferometer.seed)  # the same drift, stretcher left at 0 V
    stretcher = connect("stretcher")
    lab.clock.advance(1.0)
    t_ps = np.array([int(lab.now_s() * 1e12)])
    stretcher.set_voltage_v(2.0)
    assert stretcher.voltage_v() == pytest.approx(2.0)
    settled_ps = t_ps + 20_000_000_000  # 20 ms: 20 mechanical time constants
    assert (lab.phase_rad(t_ps) - untouched.phase_rad(t_ps))[0] == pytest.approx(0.0, abs=1e-9)
    assert (lab.phase_rad(settled_ps) - untouched.phase_rad(settled_ps))[0] == pytest.approx(np.pi, abs=1e-6)


def test_awg_offset_drives_the_same_piezo(lab, served_awg):
    import numpy as np

    awg = served_awg
    awg.configure_dc()
    awg.set_offset_v(0.2)
    awg.set_output(True)
    assert lab.interferometer.target_voltage_v() == pytest.approx(0.2 * lab.awg_to_piezo_gain)
    awg.set_output(False)
    assert lab.interferometer.target_voltage_v() == pytest.approx(0.0)


@pytest.fixture
def served_awg(lab):
    from qnode.drivers.keysight import Keysight33500B
    from qnode.drivers.transport import TcpTransport
    from qnode.sim.instruments.keysight33500b import SimKeysight33500B
    from qnode.sim.instruments.server import TcpInstrumentServer

    with TcpInstrumentServer(SimKeysight33500B(lab)) as server:
        driver = Keysight33500B("awg", TcpTransport("127.0.0.1", server.port)).open()
        yield driver
        driver.close()
