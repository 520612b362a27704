"""Yokogawa GS200 DC voltage/current source, used to bias an SNSPD by hand (SCPI, "\\n").

The source must already be in current mode; the driver reads the function and range at
open and refuses a bias it cannot produce. Over Ethernet the GS200 listens on TCP 7655.
"""

from __future__ import annotations

from .errors import InstrumentError
from .instrument import ScpiInstrument
from .scpi import parse_float

CURRENT_RANGES_A = (1e-3, 10e-3, 100e-3, 200e-3)


class YokogawaGS200(ScpiInstrument):
    model = "gs200"
    error_check = "syst_err"
    error_query = ":SYST:ERR?"
    idn_must_contain = ("GS210", "GS200")

    function = "CURR"
    range_a = 1e-3

    def _read_limits(self) -> None:
        self.function = self.protocol.query(":SOUR:FUNC?").strip().upper()
        self.range_a = parse_float(self.protocol.query(":SOUR:RANG?"))

    @property
    def max_bias_ua(self) -> float:
        # SNSPDs switch near 12 uA; the lab's ceiling protects them from a typo.
        return float(self.options.get("max_bias_ua", 20.0))

    def _readings(self) -> dict:
        out = {"function": self.function, "output_on": self.output_on()}
        if self.function.startswith("CURR"):
            out["bias_ua"] = self.bias_ua()
        return out

    def output_on(self) -> bool:
        return self._query("OUTP?").strip() in ("1", "ON")

    def set_output(self, on: bool) -> None:
        self._write(f":OUTP {'ON' if on else 'OFF'}")

    def _require_current_mode(self, command: str) -> None:
        if not self.function.startswith("CURR"):
            raise InstrumentError(self.label, command, "source is in voltage mode; call configure_current_source "
                                  "with the output off first", self.function)

    def bias_ua(self) -> float:
        self._require_current_mode(":SOUR:LEV?")
        return self._query_float(":SOUR:LEV?") * 1e6

    def set_bias_ua(self, bias_ua: float) -> None:
        limit = min(self.max_bias_ua, self.range_a * 1e6 * 1.2)
        bias = self._check_range("bias_ua", bias_ua, -limit, limit, "uA")
        command = f":SOUR:LEV {bias * 1e-6:.6E}"
        self._require_current_mode(command)
        self._write(command)

    def voltage_limit_v(self) -> float:
        return self._query_float(":SOUR:PROT:VOLT?")

    def set_voltage_limit_v(self, limit_v: float) -> None:
        value = self._check_range("voltage_limit_v", limit_v, 1.0, 30.0, "V")
        self._write(f":SOUR:PROT:VOLT {value:g}")

    def configure_current_source(self, range_ua: float = 1000.0) -> None:
        """Switch to current mode in the smallest range holding ``range_ua``. Output must be off."""
        if self.output_on():
            raise InstrumentError(self.label, ":SOUR:FUNC CURR", "refusing to change function with the output on")
        range_a = next((r for r in CURRENT_RANGES_A if r >= range_ua * 1e-6), None)
        if range_a is None:
            self._check_range("range_ua", range_ua, 0, CURRENT_RANGES_A[-1] * 1e6, "uA")
        self._write(":SOUR:FUNC CURR")
        self._write(f":SOUR:RANG {range_a:g}")
        self.function, self.range_a = "CURR", range_a

    def unlatch(self, bias_ua: float) -> None:
        """A latched SNSPD recovers when its bias goes to zero; then bias it at ``bias_ua``."""
        self._check_range("bias_ua", bias_ua, -self.max_bias_ua, self.max_bias_ua, "uA")
        self.set_bias_ua(0.0)
        self.set_bias_ua(bias_ua)
