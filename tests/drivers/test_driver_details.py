"""Behaviour particular to one instrument, against its simulator over a real socket or pty."""

from __future__ import annotations

import pytest

from qnode.drivers.errors import InstrumentError, ValueOutOfRange
from qnode.drivers.keysight import Keysight33500B
from qnode.drivers.lakeshore import LakeShore336, LakeShore372
from qnode.drivers.santec import SantecTSL570
from qnode.drivers.singlequantum import SingleQuantumEos
from qnode.drivers.thorlabs import ThorlabsMDT694B, ThorlabsPM100
from qnode.drivers.transport import SerialTransport, TcpTransport, parse_host_port
from qnode.drivers.yokogawa import YokogawaGS200
from qnode.sim.instruments.gs200 import SimYokogawaGS200
from qnode.sim.instruments.keysight33500b import SimKeysight33500B
from qnode.sim.instruments.lakeshore import SimLakeShore336, SimLakeShore372
from qnode.sim.instruments.mdt694b import SimThorlabsMDT694B
from qnode.sim.instruments.pm100 import SimThorlabsPM100
from qnode.sim.instruments.santec_tsl570 import SimSantecTSL570
from qnode.sim.instruments.server import PtyInstrumentServer, TcpInstrumentServer
from qnode.sim.instruments.singlequantum_eos import EosCountsServer, SimSingleQuantumEos


@pytest.fixture
def tcp(lab):
    """tcp(SimClass, DriverClass) -> (simulated instrument, open driver) on a fresh port."""
    servers, drivers = [], []

    def start(sim_class, driver_class, **kwargs):
        instrument = sim_class(lab)
        server = TcpInstrumentServer(instrument).start()
        servers.append(server)
        driver = driver_class(driver_class.model, TcpTransport("127.0.0.1", server.port), **kwargs).open()
        drivers.append(driver)
        return instrument, driver

    yield start
    for d in drivers:
        d.close()
    for s in servers:
        s.stop()


@pytest.fixture
def mdt(lab):
    instrument = SimThorlabsMDT694B(lab)
    with PtyInstrumentServer(instrument) as server:
        yield instrument, server


# --- Lake Shore ---

def test_lakeshore336_reads_pid_mode_and_ramp(tcp):
    _, cryostat = tcp(SimLakeShore336, LakeShore336)
    cryostat.set_pid(40, 15, 2)
    assert (cryostat.pid().p, cryostat.pid().i, cryostat.pid().d) == (40.0, 15.0, 2.0)
    assert cryostat.output_mode() == (1, 1, False)
    cryostat.set_ramp(True, 0.5)
    assert cryostat.ramp() == (True, 0.5)
    assert cryostat.temperature_k("B") == pytest.approx(41.7)


def test_lakeshore336_rejects_unknown_input_and_output_locally(tcp):
    sim, cryostat = tcp(SimLakeShore336, LakeShore336)
    with pytest.raises(ValueOutOfRange):
        cryostat.temperature_k("E")
    with pytest.raises(ValueOutOfRange):
        cryostat.set_heater_range(1, output=3)
    with pytest.raises(ValueOutOfRange):
        cryostat.set_pid(0.0, 20, 0)


def test_lakeshore336_max_setpoint_is_a_lab_option(tcp):
    _, cryostat = tcp(SimLakeShore336, LakeShore336, options={"max_setpoint_k": 4.0})
    with pytest.raises(ValueOutOfRange, match="setpoint_k=5"):
        cryostat.set_setpoint_k(5.0)


def test_lakeshore372_mixing_chamber_follows_its_heater(tcp, lab):
    _, bridge = tcp(SimLakeShore372, LakeShore372)
    assert bridge.temperature_k(6) == pytest.approx(0.010, abs=1e-6)
    assert bridge.resistance_ohm(6) > bridge.resistance_ohm(1)  # RuOx: colder reads higher
    bridge.set_setpoint_k(0.05)
    bridge.set_heater_range(5)
    lab.clock.advance(300.0)
    assert bridge.temperature_k(6) == pytest.approx(0.05, abs=1e-4)
    bridge.set_scanner_channel(3)
    assert bridge.scanner_channel() == (3, False)


# --- Santec ---

def test_santec_sets_wavelength_power_and_emission_in_the_lab(tcp, lab):
    _, laser = tcp(SimSantecTSL570, SantecTSL570)
    laser.set_wavelength_nm(1551.12)
    laser.set_power_dbm(6.0)
    laser.set_emission(True)
    assert lab.laser.wavelength_nm == pytest.approx(1551.12)
    assert laser.actual_power_dbm() == pytest.approx(6.0)
    assert laser.power_mw() == pytest.approx(10 ** 0.6, rel=1e-3)


def test_santec_works_in_whatever_units_the_display_shows(lab):
    """:WAV is nm whatever the display; :POW follows :POW:UNIT, which the driver reads, not sets."""
    instrument = SimSantecTSL570(lab)
    instrument.wavelength_unit = 1
    instrument.power_unit = 1
    with TcpInstrumentServer(instrument) as server:
        laser = SantecTSL570("laser", TcpTransport("127.0.0.1", server.port)).open()
        laser.set_wavelength_nm(1547.72)
        laser.set_power_dbm(3.0)
        assert lab.laser.wavelength_nm == pytest.approx(1547.72, abs=1e-4)
        assert laser.frequency_thz() == pytest.approx(299_792_458 / 1547.72e-9 / 1e12, abs=1e-4)
        assert lab.laser.power_dbm == pytest.approx(3.0, abs=1e-3)
        assert laser.power_dbm() == pytest.approx(3.0, abs=1e-3)
        assert instrument.wavelength_unit == 1 and instrument.power_unit == 1  # the driver changed neither
        laser.close()


def test_santec_reports_alerts(tcp):
    sim, laser = tcp(SimSantecTSL570, SantecTSL570)
    assert laser.alerts() == []
    sim.alerts = ["No07.Inter lock detection", "No23.Ongoing Warm up"]
    assert laser.alerts() == ["No07.Inter lock detection", "No23.Ongoing Warm up"]


def test_santec_refuses_out_of_range_power_before_sending(tcp):
    _, laser = tcp(SimSantecTSL570, SantecTSL570)
    with pytest.raises(ValueOutOfRange, match="power_dbm"):
        laser.set_power_dbm(20.0)


# --- Single Quantum ---

def test_eos_sets_one_bias_and_keeps_the_others(lab):
    controller = SimSingleQuantumEos(lab)
    with TcpInstrumentServer(controller) as server:
        counts = EosCountsServer(controller).start()
        try:
            snspd = SingleQuantumEos("snspd", TcpTransport("127.0.0.1", server.port),
                                     counts_transport=TcpTransport("127.0.0.1", counts.port)).open()
            snspd.set_bias_current_ua(3, 9.25)
            assert snspd.bias_currents_ua() == [10.0, 10.0, 9.25, 10.0]
            assert lab.bias_ua(3) == 9.25
            snspd.set_trigger_levels_mv([100, 110, 120, 130])
            assert snspd.trigger_levels_mv() == [100.0, 110.0, 120.0, 130.0]
            snspd.set_measurement_period_ms(50)
            lab.clock.advance(0.05)  # one period: the stream's only line (the clock moves only here)
            timestamp_ms, values = snspd.next_counts()
            assert len(values) == 4 and timestamp_ms > 0
            snspd.set_detectors_enabled(False)
            assert not snspd.detectors_enabled() and lab.detector_state(1) == (0.0, 0.0)
            snspd.set_detectors_enabled(True)
            assert lab.detector_state(1)[0] == pytest.approx(0.85)
            with pytest.raises(ValueOutOfRange):
                snspd.set_bias_current_ua(5, 9.0)
            with pytest.raises(ValueOutOfRange):
                snspd.set_measurement_period_ms(1)
            snspd.close()
        finally:
            counts.stop()


def test_eos_counts_port_down_leaves_control_working(lab):
    controller = SimSingleQuantumEos(lab)
    with TcpInstrumentServer(controller) as server:
        with TcpInstrumentServer(SimSingleQuantumEos(lab)) as not_counts:  # a port that never streams
            snspd = SingleQuantumEos("snspd", TcpTransport("127.0.0.1", server.port), timeout_s=0.2,
                                     counts_transport=TcpTransport("127.0.0.1", not_counts.port)).open()
            with pytest.raises(InstrumentError, match="counts"):
                snspd.next_counts()
            assert not snspd.suspect
            assert snspd.bias_currents_ua() == [10.0] * 4
            snspd.close()


def test_eos_counts_stream_ends_a_period_that_float_rounding_shortens(lab):
    # The clock at 0.2 s advanced by one 50 ms period: (0.2 + 0.05) - 0.2 is 0.04999... in
    # floats. The stream must still see the period as ended and send its line (it once waited
    # for a clock that never moved again: the nightly job's bias sweep timed out).
    lab.clock.advance(0.2)
    controller = SimSingleQuantumEos(lab)
    controller.measurement_period_ms = 50.0
    with TcpInstrumentServer(controller) as server:
        counts = EosCountsServer(controller).start()
        try:
            snspd = SingleQuantumEos("snspd", TcpTransport("127.0.0.1", server.port), timeout_s=1.0,
                                     counts_transport=TcpTransport("127.0.0.1", counts.port)).open()
            lab.clock.advance(0.05)
            timestamp_ms, values = snspd.next_counts()
            assert timestamp_ms == 250 and len(values) == 4
            snspd.close()
        finally:
            counts.stop()


# --- Yokogawa ---

def test_gs200_biases_a_detector_by_hand(tcp, lab):
    _, source = tcp(SimYokogawaGS200, YokogawaGS200)
    source.set_bias_ua(9.0)
    assert lab.bias_ua(1) == 0.0  # output still off
    source.set_output(True)
    assert lab.bias_ua(1) == pytest.approx(9.0)
    source.set_bias_ua(12.5)
    assert lab.latched(1)
    source.unlatch(9.0)
    assert not lab.latched(1) and lab.bias_ua(1) == pytest.approx(9.0)


def test_gs200_in_voltage_mode_refuses_a_bias(tcp):
    sim, source = tcp(SimYokogawaGS200, YokogawaGS200)
    sim.function = "VOLT"
    source.close()
    source.open()  # re-reads the function
    with pytest.raises(InstrumentError, match="voltage mode"):
        source.set_bias_ua(9.0)
    source.configure_current_source(range_ua=1000)
    source.set_bias_ua(9.0)
    assert source.bias_ua() == pytest.approx(9.0)


def test_gs200_will_not_change_function_with_output_on(tcp):
    _, source = tcp(SimYokogawaGS200, YokogawaGS200)
    source.set_output(True)
    with pytest.raises(InstrumentError, match="output on"):
        source.configure_current_source()


# --- Thorlabs ---

def test_mdt694b_over_a_real_pty_moves_the_lab_piezo(mdt, lab):
    instrument, server = mdt
    stretcher = ThorlabsMDT694B("stretcher", SerialTransport(server.device_path)).open()
    assert "MDT694B" in stretcher.identity
    stretcher.set_voltage_v(37.5)
    assert stretcher.voltage_v() == pytest.approx(37.5)
    assert lab.interferometer.target_voltage_v() == pytest.approx(37.5)
    stretcher.close()


def test_mdt694b_works_with_echo_off(mdt):
    instrument, server = mdt
    instrument.echo = False
    stretcher = ThorlabsMDT694B("stretcher", SerialTransport(server.device_path)).open()
    stretcher.set_voltage_v(5.0)
    assert stretcher.voltage_v() == pytest.approx(5.0)
    stretcher.close()


def test_mdt694b_respects_the_front_panel_limit_switch(lab):
    with PtyInstrumentServer(SimThorlabsMDT694B(lab, voltage_limit_v=75.0)) as server:
        stretcher = ThorlabsMDT694B("stretcher", SerialTransport(server.device_path)).open()
        assert stretcher.voltage_limit_v == 75.0
        seen = server.messages_seen
        with pytest.raises(ValueOutOfRange, match="75"):
            stretcher.set_voltage_v(100.0)
        assert server.messages_seen == seen
        stretcher.close()


def test_pm100_reads_the_laser_tap(tcp, lab):
    _, meter = tcp(SimThorlabsPM100, ThorlabsPM100)
    lab.laser.power_dbm = 0.0
    lab.laser.emission_on = True
    assert meter.power_mw() == pytest.approx(1.0 * lab.powermeter_fraction, rel=1e-3)
    meter.set_averaging_count(100)
    assert meter.averaging_count() == 100
    meter.set_auto_range(False)
    assert not meter.auto_range()


# --- Keysight ---

def test_keysight_load_decides_the_offset_range(tcp):
    sim, awg = tcp(SimKeysight33500B, Keysight33500B)
    assert awg.channels_present() == (1, 2)
    with pytest.raises(ValueOutOfRange):
        awg.set_offset_v(7.0)
    sim.load_ohm[1] = 9.9e37
    awg.close()
    awg.open()
    awg.set_offset_v(7.0)
    assert awg.offset_v() == pytest.approx(7.0)


# --- transports ---

@pytest.mark.parametrize("resource, expected", [
    ("127.0.0.1:7777", ("127.0.0.1", 7777)),
    ("TCPIP0::192.0.2.40::7777::SOCKET", ("192.0.2.40", 7777)),
])
def test_parse_host_port(resource, expected):
    assert parse_host_port(resource) == expected


def test_parse_host_port_names_the_bad_resource():
    with pytest.raises(ValueError, match="soon"):
        parse_host_port("soon")
