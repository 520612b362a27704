"""Single Quantum Eos-style SNSPD controller: JSON over TCP.

Control port (12000 by default): each message is a JSON object followed by ASCII ETB
(0x17). A request ``{"request": "BiasCurrent"}`` is answered by ``{"label": "BiasCurrent",
"value": [...]}``; a command such as ``{"command": "SetAllBiasCurrents", "label":
"BiasCurrent", "value": [...]}`` is acknowledged by the controller broadcasting the label's
new value. Problems arrive as a message whose label contains "Error".

Counts port (12345 by default): one text line per measurement period,
``timestamp_ms,counts_1,...,counts_n``.

Bias currents are in uA, trigger levels in mV, the measurement period in ms.
"""

from __future__ import annotations

import math

from .errors import (InstrumentConnectionError, InstrumentError, InstrumentReportedError, InstrumentTimeout,
                     ReplyError, ValueOutOfRange)
from .instrument import Instrument
from .jsontcp import JsonMessageProtocol
from .transport import TcpTransport, Transport, TransportTimeout


class SingleQuantumEos(Instrument):
    model = "singlequantum_eos"
    MAX_UNRELATED_MESSAGES = 50  # broadcasts skipped while waiting for an answer

    def __init__(self, name: str, transport: Transport, *, counts_transport: Transport | None = None, **kwargs):
        options = kwargs.pop("options", None) or {}
        super().__init__(name, transport, **kwargs)
        self.options = dict(options)
        self.protocol = JsonMessageProtocol(transport)
        if counts_transport is None and isinstance(transport, TcpTransport):
            counts_transport = TcpTransport(transport.host, int(self.options.get("counts_port", 12345)))
        self.counts_transport = counts_transport
        self.number_of_detectors = 0

    @property
    def max_bias_ua(self) -> float:
        return float(self.options.get("max_bias_ua", 20.0))

    # --- the exchange: send, then wait for the answer that carries our label ---
    def _await_label(self, label: str):
        for _ in range(self.MAX_UNRELATED_MESSAGES):
            message = self.protocol.read_message()
            got = str(message.get("label", ""))
            if "Error" in got:
                raise InstrumentReportedError(f"controller reported {message.get('value')!r}", message)
            if got == label:
                if "value" not in message:
                    raise ReplyError("answer has no value", message)
                value = message["value"]
                return value["value"] if isinstance(value, dict) and "value" in value else value
        raise ReplyError(f"no {label!r} answer among {self.MAX_UNRELATED_MESSAGES} messages")

    def _request(self, label: str):
        message = {"request": label}
        return self._call(JsonMessageProtocol.encode(message).decode(),
                          lambda: (self.protocol.send(message), self._await_label(label))[1])

    def _command(self, command: str, label: str, value):
        message = {"command": command, "label": label, "value": value}
        return self._call(JsonMessageProtocol.encode(message).decode(),
                          lambda: (self.protocol.send(message), self._await_label(label))[1])

    def _identify(self) -> None:
        self.protocol.send({"request": "NumberOfDetectors"})
        count = self._await_label("NumberOfDetectors")
        if not isinstance(count, int) or count < 1:
            raise ReplyError("NumberOfDetectors is not a positive integer", count)
        self.number_of_detectors = count
        self.identity = f"Single Quantum Eos, {count} detectors"

    def open(self):
        super().open()
        if self.counts_transport is not None:
            try:
                self.counts_transport.open(self.timeout_s)
            except OSError:
                self.counts_transport.close()  # counts are optional; control works without them
        return self

    def close(self) -> None:
        super().close()
        if self.counts_transport is not None:
            self.counts_transport.close()

    def _check_list(self, name: str, values, low: float, high: float, unit: str) -> list[float]:
        values = list(values)
        if len(values) != self.number_of_detectors:
            raise ValueOutOfRange(self.label, f"len({name})", len(values), self.number_of_detectors,
                                  self.number_of_detectors)
        return [self._check_range(name, v, low, high, unit) for v in values]

    def _check_channel(self, channel: int) -> int:
        if not (isinstance(channel, int) and 1 <= channel <= self.number_of_detectors):
            raise ValueOutOfRange(self.label, "channel", channel, 1, self.number_of_detectors)
        return channel

    @staticmethod
    def _as_floats(value, label) -> list[float]:
        if not isinstance(value, list) or not all(isinstance(v, (int, float)) for v in value):
            raise ReplyError(f"{label} is not a list of numbers", value)
        return [float(v) for v in value]

    def _readings(self) -> dict:
        return {"bias_ua": self.bias_currents_ua(), "trigger_level_mv": self.trigger_levels_mv(),
                "detectors_enabled": self.detectors_enabled(), "measurement_period_ms": self.measurement_period_ms()}

    # --- bias currents ---
    def bias_currents_ua(self) -> list[float]:
        return self._as_floats(self._request("BiasCurrent"), "BiasCurrent")

    def set_bias_currents_ua(self, bias_ua) -> None:
        values = self._check_list("bias_ua", bias_ua, 0.0, self.max_bias_ua, "uA")
        echoed = self._command("SetAllBiasCurrents", "BiasCurrent", values)
        if not isinstance(echoed, list) or any(not math.isclose(a, b, abs_tol=1e-3) for a, b in zip(echoed, values)):
            raise ReplyError("controller did not confirm the bias currents", echoed)

    def set_bias_current_ua(self, channel: int, bias_ua: float) -> None:
        """One detector's bias (channels count from 1); the others keep theirs."""
        channel = self._check_channel(channel)
        value = self._check_range("bias_ua", bias_ua, 0.0, self.max_bias_ua, "uA")
        values = self.bias_currents_ua()
        values[channel - 1] = value
        self.set_bias_currents_ua(values)

    def unlatch(self, channel: int, bias_ua: float | None = None) -> None:
        """Recover a latched detector: bias to zero, then back to ``bias_ua`` (default: what it had)."""
        channel = self._check_channel(channel)
        values = self.bias_currents_ua()
        target = values[channel - 1] if bias_ua is None else bias_ua
        self._check_range("bias_ua", target, 0.0, self.max_bias_ua, "uA")
        self.set_bias_current_ua(channel, 0.0)
        self.set_bias_current_ua(channel, target)

    # --- trigger levels, enable, period ---
    def trigger_levels_mv(self) -> list[float]:
        return self._as_floats(self._request("TriggerLevel"), "TriggerLevel")

    def set_trigger_levels_mv(self, levels_mv) -> None:
        values = self._check_list("trigger_level_mv", levels_mv, -500.0, 500.0, "mV")
        self._command("SetAllTriggerLevels", "TriggerLevel", values)

    def detectors_enabled(self) -> bool:
        return bool(self._request("DetectorEnable"))

    def set_detectors_enabled(self, enabled: bool) -> None:
        self._command("DetectorEnable", "DetectorEnable", bool(enabled))

    def measurement_period_ms(self) -> float:
        return float(self._request("InptMeasurementPeriod"))

    def set_measurement_period_ms(self, period_ms: float) -> None:
        value = self._check_range("period_ms", period_ms, 10.0, 60_000.0, "ms")
        self._command("SetMeasurementPeriod", "InptMeasurementPeriod", value)

    # --- counts stream ---
    def latest_counts(self) -> tuple[float, list[int]]:
        """Counts of a period that ends after this call: older lines waiting in the stream are dropped."""
        if self.counts_transport is not None and self.counts_transport.is_open:
            self.counts_transport.discard_input()
            try:
                self.counts_transport.read_until(b"\n", self.timeout_s)  # the tail of a line cut by the discard
            except (TransportTimeout, OSError):
                self.counts_transport.close()  # next_counts reopens and names the problem
        return self.next_counts()

    def next_counts(self) -> tuple[float, list[int]]:
        """The next line of the counts stream: (controller timestamp in ms, counts per detector).

        Trouble on the counts port closes only that port (reopened by the next call); the
        control link is not made suspect by it.
        """
        if self.counts_transport is None:
            raise InstrumentError(self.label, "counts", "no counts port configured")
        try:
            if not self.counts_transport.is_open:
                self.counts_transport.open(self.timeout_s)
            raw = self.counts_transport.read_until(b"\n", self.timeout_s)
        except TransportTimeout as exc:
            self.counts_transport.close()
            raise InstrumentTimeout(self.label, "counts", f"no counts line within {self.timeout_s} s",
                                    exc.partial or None) from None
        except OSError as exc:
            self.counts_transport.close()
            raise InstrumentConnectionError(self.label, "counts", f"counts port failed: {exc}") from None
        fields = raw.decode("ascii", "replace").strip().split(",")
        try:
            numbers = [float(f) for f in fields]
        except ValueError:
            self.counts_transport.close()
            raise InstrumentError(self.label, "counts", "counts line is not comma-separated numbers", raw) from None
        if len(numbers) != self.number_of_detectors + 1:
            self.counts_transport.close()
            raise InstrumentError(self.label, "counts", f"expected {self.number_of_detectors + 1} fields", raw)
        return numbers[0], [int(n) for n in numbers[1:]]
