"""Per-driver facts the shared driver tests run over, and fixtures for the simulated lab.

A ``DriverSpec`` holds, for one driver, the exact bytes of its open sequence, of one read
and one setting, and how its simulator is served. The parametrised tests in
test_scripted.py and test_against_simulators.py run every driver through the same checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

from qnode.drivers.keysight import Keysight33500B
from qnode.drivers.lakeshore import LakeShore336, LakeShore372
from qnode.drivers.santec import SantecTSL570
from qnode.drivers.singlequantum import SingleQuantumEos
from qnode.drivers.thorlabs import ThorlabsMDT694B, ThorlabsPM100
from qnode.drivers.transport import SerialTransport, TcpTransport
from qnode.drivers.yokogawa import YokogawaGS200
from qnode.sim.clock import SimClock
from qnode.sim.instruments.gs200 import SimYokogawaGS200
from qnode.sim.instruments.keysight33500b import SimKeysight33500B
from qnode.sim.instruments.lakeshore import SimLakeShore336, SimLakeShore372
from qnode.sim.instruments.mdt694b import SimThorlabsMDT694B
from qnode.sim.instruments.pm100 import SimThorlabsPM100
from qnode.sim.instruments.santec_tsl570 import SimSantecTSL570
from qnode.sim.instruments.server import PtyInstrumentServer, TcpInstrumentServer
from qnode.sim.instruments.singlequantum_eos import EosCountsServer, SimSingleQuantumEos
from qnode.sim.lab import LabModel

FAULT_TIMEOUT_S = 0.2  # short, so fault tests finish quickly; never asserted on


@dataclass
class DriverSpec:
    name: str
    driver_class: type
    simulator_class: type
    serial: bool
    open_script: list[tuple[bytes, bytes]]
    read: Callable[[Any], Any]
    read_sent: bytes
    read_reply: bytes
    read_value: Any
    write: Callable[[Any], None]
    write_script: list[tuple[bytes, bytes]]
    write_error_script: list[tuple[bytes, bytes]]  # the instrument refuses the setting
    garbage_reply: bytes
    bad_write: Callable[[Any], None]  # outside the driver's range: must send nothing
    change: Callable[[Any], None]  # a setting the power-on state undoes
    power_on_read: Callable[[Any], Any]
    power_on_value: Any
    driver_kwargs: dict = field(default_factory=dict)

    def __str__(self):
        return self.name


def _lines(term: bytes, pairs):
    return [(sent + term, reply + term if reply is not None else None) for sent, reply in pairs]


LS336_OPEN = _lines(b"\r\n", [(b"*IDN?", b"LSCI,MODEL336,LSA1SIM,2.9")])
LS372_OPEN = _lines(b"\r\n", [(b"*IDN?", b"LSCI,MODEL372,LSA2SIM,1.5")])
TSL_OPEN = _lines(b"\r", [(b"*IDN?", b"SANTEC,TSL-570,22050001,0003.0200"), (b":WAV:MIN?", b"1480.0000"),
                          (b":WAV:MAX?", b"1640.0000"), (b":POW:UNIT?", b"0")])
EOS_OPEN = [(b'{"request": "NumberOfDetectors"}\x17', b'{"label": "NumberOfDetectors", "value": 4}\x17')]
GS200_OPEN = _lines(b"\n", [(b"*IDN?", b"YOKOGAWA,GS210,91W000001,2.02"), (b":SOUR:FUNC?", b"CURR"),
                            (b":SOUR:RANG?", b"1.000000E-03")])
MDT_OPEN = [(b"id?\r", b"id?\rModel MDT694B Piezo Control Module\rFirmware Version: 1.09\r>"),
            (b"vlimit?\r", b"vlimit?\r[ 150]\r>"), (b"xmin?\r", b"xmin?\r[   0.00]\r>"),
            (b"xmax?\r", b"xmax?\r[ 150.00]\r>")]
AWG_OPEN = _lines(b"\n", [(b"*IDN?", b"Keysight Technologies,33522B,MY52000001,5.02-1.19-2.00-52-00"),
                          (b"OUTP1:LOAD?", b"+5.000000000000000E+01"), (b"OUTP2:LOAD?", b"+5.000000000000000E+01")])
PM_OPEN = _lines(b"\n", [(b"*IDN?", b"Thorlabs,PM100D,P0099999,2.7.0"), (b"SENS:CORR:WAV? MIN", b"8.000000000E+02"),
                         (b"SENS:CORR:WAV? MAX", b"1.700000000E+03")])

SPECS = [
    DriverSpec(
        "lakeshore336", LakeShore336, SimLakeShore336, False, LS336_OPEN,
        read=lambda d: d.temperature_k("A"), read_sent=b"KRDG? A\r\n", read_reply=b"+2.5000\r\n", read_value=2.5,
        write=lambda d: d.set_setpoint_k(3.0),
        write_script=_lines(b"\r\n", [(b"SETP 1,3.0000", None), (b"*ESR?", b"0")]),
        write_error_script=_lines(b"\r\n", [(b"SETP 1,3.0000", None), (b"*ESR?", b"16")]),
        garbage_reply=b"\xff\xfe#@!\r\n",
        bad_write=lambda d: d.set_setpoint_k(1000.0),
        change=lambda d: d.set_heater_range(3), power_on_read=lambda d: d.heater_range(), power_on_value=0),
    DriverSpec(
        "lakeshore372", LakeShore372, SimLakeShore372, False, LS372_OPEN,
        read=lambda d: d.temperature_k(6), read_sent=b"KRDG? 6\r\n", read_reply=b"+1.000000E-02\r\n",
        read_value=0.01,
        write=lambda d: d.set_setpoint_k(0.05),
        write_script=_lines(b"\r\n", [(b"SETP 0,0.05000", None), (b"*ESR?", b"0")]),
        write_error_script=_lines(b"\r\n", [(b"SETP 0,0.05000", None), (b"*ESR?", b"32")]),
        garbage_reply=b"\xff\xfe#@!\r\n",
        bad_write=lambda d: d.set_heater_range(9),
        change=lambda d: d.set_setpoint_k(0.05), power_on_read=lambda d: d.setpoint_k(), power_on_value=0.0),
    DriverSpec(
        "santec_tsl570", SantecTSL570, SimSantecTSL570, False, TSL_OPEN,
        read=lambda d: round(d.wavelength_nm(), 6), read_sent=b":WAV?\r", read_reply=b"1550.0000\r",
        read_value=1550.0,
        write=lambda d: d.set_wavelength_nm(1551.0),
        write_script=_lines(b"\r", [(b":WAV 1551.0000", None), (b":SYST:ERR?", b'0,"No error"')]),
        write_error_script=_lines(b"\r", [(b":WAV 1551.0000", None), (b":SYST:ERR?", b'-222,"Data out of range"'),
                                          (b":SYST:ERR?", b'0,"No error"')]),
        garbage_reply=b"\xff\xfe#@!\r",
        bad_write=lambda d: d.set_wavelength_nm(1700.0),
        change=lambda d: d.set_emission(True), power_on_read=lambda d: d.emission_on(), power_on_value=False),
    DriverSpec(
        "singlequantum_eos", SingleQuantumEos, SimSingleQuantumEos, False, EOS_OPEN,
        read=lambda d: d.bias_currents_ua(), read_sent=b'{"request": "BiasCurrent"}\x17',
        read_reply=b'{"label": "BiasCurrent", "value": [10.0, 10.0, 10.0, 10.0]}\x17',
        read_value=[10.0, 10.0, 10.0, 10.0],
        write=lambda d: d.set_bias_currents_ua([9.0, 9.0, 9.0, 9.0]),
        write_script=[(b'{"command": "SetAllBiasCurrents", "label": "BiasCurrent", "value": [9.0, 9.0, 9.0, 9.0]}'
                       b'\x17', b'{"label": "BiasCurrent", "value": [9.0, 9.0, 9.0, 9.0]}\x17')],
        write_error_script=[(b'{"command": "SetAllBiasCurrents", "label": "BiasCurrent", "value": [9.0, 9.0, 9.0, '
                             b'9.0]}\x17', b'{"label": "Error", "value": "bias current outside 0-40 uA"}\x17')],
        garbage_reply=b"{not json\x17",
        bad_write=lambda d: d.set_bias_currents_ua([9.0, 9.0, 9.0, 99.0]),
        change=lambda d: d.set_measurement_period_ms(200), power_on_read=lambda d: d.measurement_period_ms(),
        power_on_value=100.0),
    DriverSpec(
        "gs200", YokogawaGS200, SimYokogawaGS200, False, GS200_OPEN,
        read=lambda d: d.bias_ua(), read_sent=b":SOUR:LEV?\n", read_reply=b"9.500000E-06\n", read_value=9.5,
        write=lambda d: d.set_bias_ua(9.0),
        write_script=_lines(b"\n", [(b":SOUR:LEV 9.000000E-06", None), (b":SYST:ERR?", b'0,"No error"')]),
        write_error_script=_lines(b"\n", [(b":SOUR:LEV 9.000000E-06", None),
                                          (b":SYST:ERR?", b'-221,"Settings conflict"'),
                                          (b":SYST:ERR?", b'0,"No error"')]),
        garbage_reply=b"\xff\xfe#@!\n",
        bad_write=lambda d: d.set_bias_ua(25.0),
        change=lambda d: d.set_output(True), power_on_read=lambda d: d.output_on(), power_on_value=False),
    DriverSpec(
        "mdt694b", ThorlabsMDT694B, SimThorlabsMDT694B, True, MDT_OPEN,
        read=lambda d: d.voltage_v(), read_sent=b"xvoltage?\r", read_reply=b"xvoltage?\r[  24.80]\r>",
        read_value=24.8,
        write=lambda d: d.set_voltage_v(12.5),
        write_script=[(b"xvoltage=12.500\r", b"xvoltage=12.500\r>")],
        write_error_script=[(b"xvoltage=12.500\r", b"xvoltage=12.500\rCMD_NOT_DEFINED\r>")],
        garbage_reply=b"\x8f\xfe#@!\r>",
        bad_write=lambda d: d.set_voltage_v(151.0),
        change=lambda d: d.set_voltage_v(12.5), power_on_read=lambda d: d.voltage_v(), power_on_value=0.0),
    DriverSpec(
        "keysight33500b", Keysight33500B, SimKeysight33500B, False, AWG_OPEN,
        read=lambda d: d.offset_v(), read_sent=b"SOUR1:VOLT:OFFS?\n", read_reply=b"+1.000000000000000E+00\n",
        read_value=1.0,
        write=lambda d: d.set_offset_v(1.5),
        write_script=_lines(b"\n", [(b"SOUR1:VOLT:OFFS 1.500000", None), (b"SYST:ERR?", b'+0,"No error"')]),
        write_error_script=_lines(b"\n", [(b"SOUR1:VOLT:OFFS 1.500000", None),
                                          (b"SYST:ERR?", b'-222,"Data out of range"'),
                                          (b"SYST:ERR?", b'+0,"No error"')]),
        garbage_reply=b"\xff\xfe#@!\n",
        bad_write=lambda d: d.set_offset_v(6.0),
        change=lambda d: d.set_offset_v(1.5), power_on_read=lambda d: d.offset_v(), power_on_value=0.0),
    DriverSpec(
        "pm100", ThorlabsPM100, SimThorlabsPM100, False, PM_OPEN,
        read=lambda d: d.power_w(), read_sent=b"MEAS:POW?\n", read_reply=b"1.000000000E-05\n", read_value=1e-5,
        write=lambda d: d.set_wavelength_nm(1310),
        write_script=_lines(b"\n", [(b"SENS:CORR:WAV 1310", None), (b"SYST:ERR?", b'+0,"No error"')]),
        write_error_script=_lines(b"\n", [(b"SENS:CORR:WAV 1310", None),
                                          (b"SYST:ERR?", b'-222,"Data out of range"'),
                                          (b"SYST:ERR?", b'+0,"No error"')]),
        garbage_reply=b"\xff\xfe#@!\n",
        bad_write=lambda d: d.set_wavelength_nm(500),
        change=lambda d: d.set_wavelength_nm(1310), power_on_read=lambda d: d.wavelength_nm(),
        power_on_value=1550.0),
]
SPECS_BY_NAME = {spec.name: spec for spec in SPECS}


@pytest.fixture(params=SPECS, ids=str)
def spec(request) -> DriverSpec:
    return request.param


@pytest.fixture
def lab() -> LabModel:
    """The reference lab on a simulated clock that moves only when a test advances it."""
    from qnode.host.config import load_config

    return LabModel(load_config(), clock=SimClock())


class Served:
    """A simulator on a real socket or pty, and how to make a driver for it."""

    def __init__(self, spec: DriverSpec, lab: LabModel):
        self.spec = spec
        self.instrument = spec.simulator_class(lab)
        self.server = (PtyInstrumentServer if spec.serial else TcpInstrumentServer)(self.instrument).start()
        self.counts = None
        if isinstance(self.instrument, SimSingleQuantumEos):
            self.counts = EosCountsServer(self.instrument).start()

    def transport(self):
        if self.spec.serial:
            return SerialTransport(self.server.device_path, baud=115200)
        return TcpTransport("127.0.0.1", self.server.port)

    def driver(self, timeout_s: float = 1.0, **kwargs):
        kwargs.setdefault("backoff_initial_s", 0.0)  # reconnect at once: tests do not wait
        if self.counts is not None:
            kwargs.setdefault("counts_transport", TcpTransport("127.0.0.1", self.counts.port))
        return self.spec.driver_class(self.spec.name, self.transport(), timeout_s=timeout_s,
                                      **{**self.spec.driver_kwargs, **kwargs})

    def stop(self):
        if self.counts is not None:
            self.counts.stop()
        self.server.stop()


@pytest.fixture
def served(spec, lab):
    s = Served(spec, lab)
    yield s
    s.stop()
