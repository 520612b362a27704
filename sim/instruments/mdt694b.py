"""Simulated Thorlabs MDT694B single-channel piezo driver, served on a pty.

Each command ends in CR. With echo on (the power-on default) the controller repeats the
command; a query's value follows in brackets; every answer ends with the prompt ``>``.
"""

from __future__ import annotations

from .server import SimulatedInstrument

ID_TEXT = ("Model MDT694B Piezo Control Module\r"
           "Firmware Version: 1.09\r"
           "Voltage limit switch: {limit:.0f}V\r")


class SimThorlabsMDT694B(SimulatedInstrument):
    driver = "mdt694b"
    read_separator = b"\r"
    write_separator = b""
    garbage_reply = b"\x8f\xfe#@!\r>"

    def __init__(self, lab=None, voltage_limit_v: float = 150.0):
        self.voltage_limit_v = voltage_limit_v  # the front-panel switch: 75, 100 or 150 V
        self._own_voltage_v = 0.0
        super().__init__(lab)

    def reset_state(self) -> None:
        self.echo = True
        self.xmin_v = 0.0
        self.xmax_v = self.voltage_limit_v
        self._set_voltage(0.0)

    def _set_voltage(self, voltage_v: float) -> None:
        value = min(max(voltage_v, self.xmin_v), self.xmax_v, self.voltage_limit_v)
        if self.lab is not None:
            self.lab.set_piezo_voltage_v(value)
        self._own_voltage_v = value

    def _voltage(self) -> float:
        return self.lab.piezo_voltage_v if self.lab is not None else self._own_voltage_v

    def _answer(self, command: str, body: str = "") -> bytes:
        text = (command + "\r" if self.echo else "") + body
        return (text + ">").encode("ascii")

    def handle(self, message: str):
        command = message.strip()
        lower = command.lower()
        if lower == "id?":
            return self._answer(command, ID_TEXT.format(limit=self.voltage_limit_v))
        if lower == "vlimit?":
            return self._answer(command, f"[{self.voltage_limit_v:4.0f}]\r")
        if lower == "xvoltage?":
            return self._answer(command, f"[{self._voltage():7.2f}]\r")
        if lower == "xmin?":
            return self._answer(command, f"[{self.xmin_v:7.2f}]\r")
        if lower == "xmax?":
            return self._answer(command, f"[{self.xmax_v:7.2f}]\r")
        if lower == "echo?":
            return self._answer(command, f"[Echo {'On' if self.echo else 'Off'}]\r")
        name, sep, value = lower.partition("=")
        if sep and name in ("xvoltage", "xmin", "xmax", "echo"):
            try:
                number = float(value)
            except ValueError:
                return self._answer(command, "CMD_NOT_DEFINED\r")
            if name == "xvoltage":
                self._set_voltage(number)
            elif name == "xmin":
                self.xmin_v = min(max(number, 0.0), self.voltage_limit_v)
            elif name == "xmax":
                self.xmax_v = min(max(number, 0.0), self.voltage_limit_v)
            else:
                self.echo = bool(number)
            return self._answer(command)
        return self._answer(command, "CMD_NOT_DEFINED\r")
