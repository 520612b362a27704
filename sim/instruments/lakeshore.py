"""Simulated Lake Shore 336 (the reference lab's cryostat) and 372 (a dilution fridge bridge).

IEEE-488.2 style commands, CR LF line ends, no reply to settings; a bad command or value
sets the command-error (bit 5) or execution-error (bit 4) bit of ``*ESR?``.
"""

from __future__ import annotations

from ..cryostat import Cryostat
from .server import SimulatedInstrument, split_command

ESR_EXECUTION_ERROR = 1 << 4
ESR_COMMAND_ERROR = 1 << 5


class _LakeShoreBase(SimulatedInstrument):
    read_separator = b"\n"
    write_separator = b"\r\n"
    idn = ""

    def reset_state(self) -> None:
        self.esr = 0

    def _number(self, text: str) -> float | None:
        try:
            return float(text)
        except ValueError:
            self.esr |= ESR_EXECUTION_ERROR
            return None

    def _common(self, header: str):
        if header == "*IDN?":
            return self.idn
        if header == "*ESR?":
            value, self.esr = self.esr, 0
            return str(value)
        if header == "*CLS":
            self.esr = 0
            return ""
        if header == "*OPC?":
            return "1"
        if header == "*RST":
            self.reset_state()
            return ""
        return None


class SimLakeShore336(_LakeShoreBase):
    """Output 1 heats the lab's cold stage (sensor A); output 2 and sensors B-D are bystanders."""

    driver = "lakeshore336"
    idn = "LSCI,MODEL336,LSA1SIM,2.9"
    FIRST_STAGE_K = 41.7  # sensor B sits on the 40 K stage

    def reset_state(self) -> None:
        super().reset_state()
        self.setpoint_k = {1: 2.5 if self.lab is None else self.lab.cryostat.setpoint_k, 2: 0.0}
        self.pid = {1: (50.0, 20.0, 0.0), 2: (50.0, 20.0, 0.0)}
        self.outmode = {1: (1, 1, 0), 2: (0, 2, 0)}
        self.ramp = {1: (0, 0.0), 2: (0, 0.0)}
        if not getattr(self, "_running", False):
            # The simulation starts with the lab already cold and regulating.
            self._running = True
            self.heater_range = {1: 1 if self.lab is None else self.lab.cryostat.heater_range, 2: 0}
        else:
            # A reset (power cycle, *RST) leaves the heaters off: the 336 does not restore
            # heater ranges at power-up unless told to.
            self.heater_range = {1: 0, 2: 0}
            if self.lab is not None:
                self.lab.set_heater_range(0)

    def _temperature(self, sensor: str) -> float | None:
        if sensor == "A":
            return self.lab.temperature_k() if self.lab is not None else 2.5
        if sensor == "B":
            return self.FIRST_STAGE_K
        if sensor in ("C", "D", "0"):
            return 0.0
        return None

    def _output(self, text: str) -> int | None:
        if text in ("1", "2"):
            return int(text)
        self.esr |= ESR_EXECUTION_ERROR
        return None

    def handle(self, message: str):
        header, args = split_command(message)
        common = self._common(header)
        if common is not None:
            return common or None
        if header in ("KRDG?", "SRDG?") and len(args) == 1:
            value = self._temperature(args[0].upper())
            if value is None:
                self.esr |= ESR_EXECUTION_ERROR
                return None
            if header == "SRDG?":  # a silicon diode's voltage, roughly
                value = 1.6 - 0.004 * value if value else 0.0
            return f"{value:+.4f}"
        if header in ("SETP?", "RANGE?", "HTR?", "PID?", "OUTMODE?", "RAMP?") and len(args) == 1:
            output = self._output(args[0])
            if output is None:
                return None
            if header == "SETP?":
                return f"{self.setpoint_k[output]:+.4f}"
            if header == "RANGE?":
                return str(self.heater_range[output])
            if header == "HTR?":
                if output == 1 and self.lab is not None:
                    return f"{self.lab.heater_output_percent():+.2f}"
                return "+0.00"
            if header == "PID?":
                return ",".join(f"{v:+.1f}" for v in self.pid[output])
            if header == "OUTMODE?":
                return ",".join(str(v) for v in self.outmode[output])
            if header == "RAMP?":
                return f"{self.ramp[output][0]},{self.ramp[output][1]:+.1f}"
        if header == "SETP" and len(args) == 2:
            output, value = self._output(args[0]), self._number(args[1])
            if output is None or value is None:
                return None
            if not 0 <= value <= 1500:
                self.esr |= ESR_EXECUTION_ERROR
                return None
            self.setpoint_k[output] = value
            if output == 1 and self.lab is not None:
                self.lab.set_setpoint_k(value)
            return None
        if header == "RANGE" and len(args) == 2:
            output, value = self._output(args[0]), self._number(args[1])
            if output is None or value is None:
                return None
            if value not in (0, 1, 2, 3):
                self.esr |= ESR_EXECUTION_ERROR
                return None
            self.heater_range[output] = int(value)
            if output == 1 and self.lab is not None:
                self.lab.set_heater_range(int(value))
            return None
        if header == "PID" and len(args) == 4:
            output = self._output(args[0])
            values = [self._number(a) for a in args[1:]]
            if output is None or None in values:
                return None
            self.pid[output] = tuple(values)
            return None
        if header == "OUTMODE" and len(args) == 4:
            output = self._output(args[0])
            if output is None:
                return None
            self.outmode[output] = tuple(int(float(a)) for a in args[1:])
            return None
        if header == "RAMP" and len(args) == 3:
            output = self._output(args[0])
            values = [self._number(a) for a in args[1:]]
            if output is None or None in values:
                return None
            self.ramp[output] = (int(values[0]), values[1])
            return None
        self.esr |= ESR_COMMAND_ERROR
        return None


class SimLakeShore372(_LakeShoreBase):
    """Scanner channel 6 is the mixing chamber, under the sample heater (output 0)."""

    driver = "lakeshore372"
    idn = "LSCI,MODEL372,LSA2SIM,1.5"
    MIXING_CHAMBER = 6

    def __init__(self, lab=None, clock=None):
        self.clock = clock if clock is not None else getattr(lab, "clock", None)
        super().__init__(lab)

    def _now_s(self) -> float:
        return self.clock.now_s() if self.clock is not None else 0.0

    def reset_state(self) -> None:
        super().reset_state()
        self.mixing_chamber = Cryostat(base_temperature_k=0.008, temperature_k=0.010, setpoint_k=0.0,
                                       heater_range=0, time_constant_s=30.0,
                                       range_span_k={r: 0.0 if r == 0 else 0.002 * 10 ** (r / 2) for r in range(9)},
                                       time_s=self._now_s())
        self.setpoint_k = {0: 0.0, 1: 0.0, 2: 0.0}
        self.heater_range = {0: 0, 1: 0, 2: 0}
        self.pid = {0: (10.0, 20.0, 0.0), 1: (10.0, 20.0, 0.0), 2: (0.0, 0.0, 0.0)}
        self.scan = (self.MIXING_CHAMBER, 0)
        self.still_percent = 0.0

    def _channel_k(self, text: str) -> float | None:
        if text.upper() == "A":
            return 0.0  # no control input sensor fitted
        try:
            channel = int(text)
        except ValueError:
            return None
        if not 1 <= channel <= 16:
            return None
        if channel == self.MIXING_CHAMBER:
            return self.mixing_chamber.advance_to(self._now_s())
        return {1: 45.0, 2: 3.1, 3: 0.9, 5: 0.05}.get(channel, 0.0)

    def handle(self, message: str):
        header, args = split_command(message)
        common = self._common(header)
        if common is not None:
            return common or None
        if header in ("KRDG?", "RDGR?") and len(args) == 1:
            value = self._channel_k(args[0])
            if value is None:
                self.esr |= ESR_EXECUTION_ERROR
                return None
            if header == "RDGR?":  # a RuOx-like sensor: resistance rises as it cools
                value = 1000.0 * (1 + 0.05 / max(value, 1e-3)) if value else 0.0
            return f"{value:+.6E}"
        if header == "SCAN?":
            return f"{self.scan[0]:02d},{self.scan[1]}"
        if header == "STILL?":
            return f"{self.still_percent:+.3f}"
        if header in ("SETP?", "RANGE?", "PID?") and len(args) == 1:
            if args[0] not in ("0", "1", "2"):
                self.esr |= ESR_EXECUTION_ERROR
                return None
            output = int(args[0])
            if header == "SETP?":
                return f"{self.setpoint_k[output]:+.6E}"
            if header == "RANGE?":
                return str(self.heater_range[output])
            return ",".join(f"{v:+.1f}" for v in self.pid[output])
        if header in ("SETP", "RANGE", "PID", "SCAN") and args:
            try:
                numbers = [float(a) for a in args]
            except ValueError:
                self.esr |= ESR_EXECUTION_ERROR
                return None
            if header == "SCAN" and len(numbers) == 2 and 1 <= numbers[0] <= 16:
                self.scan = (int(numbers[0]), int(numbers[1]))
                return None
            output = int(numbers[0])
            if output not in (0, 1, 2):
                self.esr |= ESR_EXECUTION_ERROR
                return None
            self.mixing_chamber.advance_to(self._now_s())
            if header == "SETP" and len(numbers) == 2:
                self.setpoint_k[output] = numbers[1]
                if output == 0:
                    self.mixing_chamber.setpoint_k = numbers[1]
                return None
            if header == "RANGE" and len(numbers) == 2 and 0 <= numbers[1] <= 8:
                self.heater_range[output] = int(numbers[1])
                if output == 0:
                    self.mixing_chamber.heater_range = int(numbers[1])
                return None
            if header == "PID" and len(numbers) == 4:
                self.pid[output] = tuple(numbers[1:])
                return None
            self.esr |= ESR_EXECUTION_ERROR
            return None
        self.esr |= ESR_COMMAND_ERROR
        return None
