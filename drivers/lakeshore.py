"""Lake Shore cryogenic temperature controllers: Model 336 and Model 372.

Both speak IEEE-488.2 style commands (not SCPI trees): ``KRDG? A``, ``SETP 1,2.5``. They
have no ``:SYST:ERR?`` queue; a rejected command sets bits in the standard event status
register, so every setting is followed by ``*ESR?``. Lines end in CR LF. The 336's
Ethernet port is TCP 7777.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ValueOutOfRange
from .instrument import ScpiInstrument
from .scpi import parse_floats

HEATER_RANGES_336 = {0: "off", 1: "low", 2: "medium", 3: "high"}


@dataclass(frozen=True)
class Pid:
    p: float
    i: float
    d: float


class LakeShore336(ScpiInstrument):
    """Lake Shore 336: inputs A-D, heater outputs 1-2 (3-4 are analog outputs)."""

    model = "lakeshore336"
    write_termination = "\r\n"
    read_termination = "\r\n"
    error_check = "esr"
    idn_must_contain = ("MODEL336",)
    INPUTS = ("A", "B", "C", "D")
    OUTPUTS = (1, 2)

    @property
    def max_setpoint_k(self) -> float:
        # A lab's limit on what the software may ask for (the SNSPD mount has its own limits).
        return float(self.options.get("max_setpoint_k", 325.0))

    def _input(self, sensor: str) -> str:
        sensor = str(sensor).upper()
        if sensor not in self.INPUTS:
            raise ValueOutOfRange(self.label, "input", sensor, self.INPUTS[0], self.INPUTS[-1])
        return sensor

    def _output(self, output: int) -> int:
        if output not in self.OUTPUTS:
            raise ValueOutOfRange(self.label, "output", output, self.OUTPUTS[0], self.OUTPUTS[-1])
        return output

    def _readings(self) -> dict:
        return {"temperature_a_k": self.temperature_k("A"), "setpoint_1_k": self.setpoint_k(1),
                "heater_range_1": self.heater_range(1), "heater_output_1_percent": self.heater_output_percent(1)}

    # --- readings (safe at any time) ---
    def temperature_k(self, sensor: str = "A") -> float:
        return self._query_float(f"KRDG? {self._input(sensor)}")

    def sensor_reading(self, sensor: str = "A") -> float:
        """In the sensor's own units (ohm or V)."""
        return self._query_float(f"SRDG? {self._input(sensor)}")

    def setpoint_k(self, output: int = 1) -> float:
        return self._query_float(f"SETP? {self._output(output)}")

    def heater_range(self, output: int = 1) -> int:
        """0 off, 1 low, 2 medium, 3 high."""
        return self._query_int(f"RANGE? {self._output(output)}")

    def heater_output_percent(self, output: int = 1) -> float:
        return self._query_float(f"HTR? {self._output(output)}")

    def pid(self, output: int = 1) -> Pid:
        command = f"PID? {self._output(output)}"
        return Pid(*self._call(command, lambda: parse_floats(self.protocol.query(command), 3)))

    def output_mode(self, output: int = 1) -> tuple[int, int, bool]:
        """(mode, controlling input 1-4 for A-D, powerup enable). Mode 1 is closed loop PID."""
        command = f"OUTMODE? {self._output(output)}"
        mode, sensor, powerup = self._call(command, lambda: parse_floats(self.protocol.query(command), 3))
        return int(mode), int(sensor), bool(powerup)

    def ramp(self, output: int = 1) -> tuple[bool, float]:
        """(ramping enabled, rate in K/min)."""
        command = f"RAMP? {self._output(output)}"
        enabled, rate = self._call(command, lambda: parse_floats(self.protocol.query(command), 2))
        return bool(enabled), rate

    # --- settings ---
    def set_setpoint_k(self, temperature_k: float, output: int = 1) -> None:
        output = self._output(output)
        value = self._check_range("setpoint_k", temperature_k, 0.0, self.max_setpoint_k, "K")
        self._write(f"SETP {output},{value:.4f}")

    def set_heater_range(self, heater_range: int, output: int = 1) -> None:
        output = self._output(output)
        if heater_range not in HEATER_RANGES_336:
            raise ValueOutOfRange(self.label, "heater_range", heater_range, 0, 3)
        self._write(f"RANGE {output},{heater_range}")

    def heater_off(self, output: int = 1) -> None:
        self.set_heater_range(0, output)

    def set_pid(self, p: float, i: float, d: float, output: int = 1) -> None:
        output = self._output(output)
        p = self._check_range("p", p, 0.1, 1000.0)
        i = self._check_range("i", i, 0.1, 1000.0)
        d = self._check_range("d", d, 0.0, 200.0, "%")
        self._write(f"PID {output},{p:g},{i:g},{d:g}")

    def set_ramp(self, enabled: bool, rate_k_per_min: float, output: int = 1) -> None:
        output = self._output(output)
        rate = self._check_range("rate_k_per_min", rate_k_per_min, 0.0, 100.0, "K/min")
        self._write(f"RAMP {output},{int(bool(enabled))},{rate:g}")


class LakeShore372(ScpiInstrument):
    """Lake Shore 372 AC resistance bridge: scanner channels 1-16 and control input A;
    outputs 0 (sample heater), 1 (warm-up heater), 2 (still/analog)."""

    model = "lakeshore372"
    write_termination = "\r\n"
    read_termination = "\r\n"
    error_check = "esr"
    idn_must_contain = ("MODEL372",)
    OUTPUTS = (0, 1, 2)
    SAMPLE_HEATER_RANGES = range(0, 9)  # 0 off, 1..8 = 31.6 uA .. 100 mA

    @property
    def max_setpoint_k(self) -> float:
        return float(self.options.get("max_setpoint_k", 10.0))

    def _channel(self, channel) -> str:
        if str(channel).upper() == "A":
            return "A"
        if isinstance(channel, int) and 1 <= channel <= 16:
            return str(channel)
        raise ValueOutOfRange(self.label, "channel", channel, 1, 16)

    def _output(self, output: int) -> int:
        if output not in self.OUTPUTS:
            raise ValueOutOfRange(self.label, "output", output, 0, 2)
        return output

    def _readings(self) -> dict:
        channel, _ = self.scanner_channel()
        return {"scanner_channel": channel, "temperature_scanned_k": self.temperature_k(channel),
                "setpoint_0_k": self.setpoint_k(0), "heater_range_0": self.heater_range(0)}

    def temperature_k(self, channel=1) -> float:
        return self._query_float(f"KRDG? {self._channel(channel)}")

    def resistance_ohm(self, channel=1) -> float:
        return self._query_float(f"RDGR? {self._channel(channel)}")

    def setpoint_k(self, output: int = 0) -> float:
        return self._query_float(f"SETP? {self._output(output)}")

    def heater_range(self, output: int = 0) -> int:
        return self._query_int(f"RANGE? {self._output(output)}")

    def still_output_percent(self) -> float:
        return self._query_float("STILL?")

    def pid(self, output: int = 0) -> Pid:
        command = f"PID? {self._output(output)}"
        return Pid(*self._call(command, lambda: parse_floats(self.protocol.query(command), 3)))

    def scanner_channel(self) -> tuple[int, bool]:
        """(channel, autoscan)."""
        command = "SCAN?"
        channel, autoscan = self._call(command, lambda: parse_floats(self.protocol.query(command), 2))
        return int(channel), bool(autoscan)

    def set_setpoint_k(self, temperature_k: float, output: int = 0) -> None:
        output = self._output(output)
        value = self._check_range("setpoint_k", temperature_k, 0.0, self.max_setpoint_k, "K")
        self._write(f"SETP {output},{value:.5f}")

    def set_heater_range(self, heater_range: int, output: int = 0) -> None:
        output = self._output(output)
        allowed = self.SAMPLE_HEATER_RANGES if output == 0 else range(0, 2)
        if heater_range not in allowed:
            raise ValueOutOfRange(self.label, "heater_range", heater_range, allowed[0], allowed[-1])
        self._write(f"RANGE {output},{heater_range}")

    def heater_off(self, output: int = 0) -> None:
        self.set_heater_range(0, output)

    def set_pid(self, p: float, i: float, d: float, output: int = 0) -> None:
        output = self._output(output)
        p = self._check_range("p", p, 0.0, 1000.0)
        i = self._check_range("i", i, 0.0, 10000.0)
        d = self._check_range("d", d, 0.0, 2500.0)
        self._write(f"PID {output},{p:g},{i:g},{d:g}")

    def set_scanner_channel(self, channel: int, autoscan: bool = False) -> None:
        self._write(f"SCAN {self._channel(channel)},{int(bool(autoscan))}")
