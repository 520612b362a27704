"""The SCPI drivers through pyvisa (VisaTransport) against pyvisa-sim's static instruments
described in instruments.yaml: the same bytes reach a VISA session as reach a socket."""

from __future__ import annotations

from pathlib import Path

import pytest

from qnode.drivers.errors import InstrumentError
from qnode.drivers.keysight import Keysight33500B
from qnode.drivers.lakeshore import LakeShore336, LakeShore372
from qnode.drivers.santec import SantecTSL570
from qnode.drivers.thorlabs import ThorlabsPM100
from qnode.drivers.transport import VisaTransport
from qnode.drivers.yokogawa import YokogawaGS200

pytest.importorskip("pyvisa_sim")
YAML = str(Path(__file__).with_name("instruments.yaml")) + "@sim"


def visa(driver_class, port: int, **kwargs):
    transport = VisaTransport(f"TCPIP0::localhost::{port}::SOCKET", visa_library=YAML)
    return driver_class(driver_class.model, transport, timeout_s=0.5, **kwargs).open()


def test_lakeshore336_over_visa():
    cryostat = visa(LakeShore336, 7777)
    assert cryostat.identity.startswith("LSCI,MODEL336")
    assert cryostat.temperature_k("A") == pytest.approx(2.501)
    assert cryostat.heater_output_percent() == pytest.approx(15.0)
    cryostat.set_setpoint_k(3.25)
    assert cryostat.setpoint_k() == pytest.approx(3.25)
    cryostat.set_heater_range(2)
    assert cryostat.heater_range() == 2
    cryostat.close()


def test_lakeshore372_over_visa():
    bridge = visa(LakeShore372, 7778)
    assert bridge.temperature_k(6) == pytest.approx(0.01)
    assert bridge.resistance_ohm(6) == pytest.approx(6000.0)
    assert bridge.scanner_channel() == (6, False)
    bridge.set_setpoint_k(0.02)
    assert bridge.setpoint_k() == pytest.approx(0.02)


def test_santec_over_visa():
    laser = visa(SantecTSL570, 5000)
    assert (laser.wavelength_min_nm, laser.wavelength_max_nm) == pytest.approx((1480.0, 1640.0))
    assert laser.wavelength_nm() == pytest.approx(1550.0)
    laser.set_power_dbm(4.5)
    assert laser.power_dbm() == pytest.approx(4.5)
    laser.set_emission(True)
    assert laser.emission_on()


def test_pm100_over_visa():
    meter = visa(ThorlabsPM100, 5025)
    assert meter.power_mw() == pytest.approx(0.01234)
    meter.set_wavelength_nm(1310)
    assert meter.wavelength_nm() == pytest.approx(1310)


def test_keysight_over_visa_high_z_allows_ten_volts():
    awg = visa(Keysight33500B, 5026)
    assert awg.max_offset_v(1) == 10.0 and awg.max_offset_v(2) == 5.0
    awg.set_offset_v(-7.5)
    assert awg.offset_v() == pytest.approx(-7.5)
    assert awg.function() == "DC"


def test_gs200_over_visa():
    source = visa(YokogawaGS200, 7655)
    source.set_bias_ua(9.5)
    assert source.bias_ua() == pytest.approx(9.5)


def test_visa_resource_without_an_instrument_fails_open():
    # pyvisa-sim opens a session for any address but nothing answers there: open must not pass.
    transport = VisaTransport("TCPIP0::localhost::1::SOCKET", visa_library=YAML)
    with pytest.raises(InstrumentError, match="cryostat"):
        LakeShore336("cryostat", transport, timeout_s=0.2).open()


def test_wrong_instrument_at_the_address_is_refused():
    transport = VisaTransport("TCPIP0::localhost::5025::SOCKET", visa_library=YAML)  # a PM100, not a 336
    with pytest.raises(InstrumentError, match="not a lakeshore336"):
        LakeShore336("cryostat", transport, timeout_s=0.3).open()
