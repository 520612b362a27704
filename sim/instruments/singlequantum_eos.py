"""Simulated Single Quantum Eos-style SNSPD controller: JSON control port and a counts stream.

Control messages are JSON objects each followed by ETB (0x17). Detector n (1-based) biases
the lab's SNSPD on FPGA channel ``lab.snspd_channels[n - 1]``. The counts port sends one
line per measurement period of lab time: ``timestamp_ms,counts_1,...,counts_n``.
"""

from __future__ import annotations

import json
import socket
import threading

from .server import SimulatedInstrument, TcpInstrumentServer


class SimSingleQuantumEos(SimulatedInstrument):
    driver = "singlequantum_eos"
    read_separator = b"\x17"
    write_separator = b"\x17"
    strip = b"\r\n \x00"
    garbage_reply = b"{not json"
    MAX_BIAS_UA = 40.0

    def __init__(self, lab=None, number_of_detectors: int | None = None):
        channels = getattr(lab, "snspd_channels", (1, 2, 3, 4))
        self.number_of_detectors = number_of_detectors or len(channels)
        super().__init__(lab)

    def reset_state(self) -> None:
        # Power-on: the controller restores its stored biases with the detectors enabled.
        channels = list(getattr(self.lab, "snspd_channels", ()))
        self.bias_ua = []
        for index in range(self.number_of_detectors):
            known = self.lab is not None and index < len(channels)
            self.bias_ua.append(self.lab.bias_ua(channels[index]) if known else 10.0)
        self.trigger_level_mv = [150.0] * self.number_of_detectors
        self.measurement_period_ms = 100.0
        self.enabled = True
        self._push()

    def _push(self) -> None:
        if self.lab is None:
            return
        for index, channel in enumerate(self.lab.snspd_channels[: self.number_of_detectors]):
            self.lab.set_bias_ua(channel, self.bias_ua[index] if self.enabled else 0.0)

    def _labels(self) -> dict:
        return {"NumberOfDetectors": self.number_of_detectors, "BiasCurrent": self.bias_ua,
                "TriggerLevel": self.trigger_level_mv, "DetectorEnable": self.enabled,
                "InptMeasurementPeriod": self.measurement_period_ms}

    @staticmethod
    def _message(label: str, value) -> str:
        return json.dumps({"label": label, "value": value})

    def _error(self, text: str) -> str:
        return self._message("Error", text)

    def handle(self, message: str):
        try:
            data = json.loads(message)
        except json.JSONDecodeError:
            return self._error(f"cannot parse {message[:40]!r}")
        if not isinstance(data, dict):
            return self._error("expected a JSON object")
        labels = self._labels()
        if "request" in data:
            label = data["request"]
            if label == "labelProps":
                return [self._message(k, {"value": v}) for k, v in labels.items()]
            if label in labels:
                return self._message(label, labels[label])
            return self._error(f"unknown label {label!r}")
        command, value = data.get("command"), data.get("value")
        if command in ("SetAllBiasCurrents", "SetAllTriggerLevels"):
            if (not isinstance(value, list) or len(value) != self.number_of_detectors
                    or not all(isinstance(v, (int, float)) for v in value)):
                return self._error(f"{command} needs {self.number_of_detectors} numbers")
            if command == "SetAllBiasCurrents":
                if any(not 0 <= v <= self.MAX_BIAS_UA for v in value):
                    return self._error(f"bias current outside 0-{self.MAX_BIAS_UA} uA")
                self.bias_ua = [float(v) for v in value]
                self._push()
                return self._message("BiasCurrent", self.bias_ua)
            self.trigger_level_mv = [float(v) for v in value]
            return self._message("TriggerLevel", self.trigger_level_mv)
        if command == "DetectorEnable":
            self.enabled = bool(value)
            self._push()
            return self._message("DetectorEnable", self.enabled)
        if command == "SetMeasurementPeriod":
            if not isinstance(value, (int, float)) or not 10 <= value <= 60_000:
                return self._error("measurement period must be 10-60000 ms")
            self.measurement_period_ms = float(value)
            return self._message("InptMeasurementPeriod", self.measurement_period_ms)
        return self._error(f"unknown command {command!r}")


class EosCountsServer:
    """Streams a counts line per measurement period of lab time to every connected client."""

    POLL_S = 0.005  # wall time between looks at the lab clock
    MAX_LINES_PER_POLL = 100  # after a big jump of simulated time, catch up in bounded bursts
    # A period has ended when the clock is within this fraction of a period of its end: the clock
    # and the stream add the same periods, but (x + p) - x can come out below p in floats, and a
    # simulated clock that then stands still would leave the period open for ever.
    ROUNDING = 1e-9

    def __init__(self, controller: SimSingleQuantumEos, host: str = "127.0.0.1", port: int = 0):
        self.controller = controller
        self.lab = controller.lab
        self.server = TcpInstrumentServer(_Silent(), host, port)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_s = None

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        return self.server.address

    def start(self) -> "EosCountsServer":
        self.server.start()
        self._last_s = self.lab.now_s()
        self._thread = threading.Thread(target=self._run, name="sim-eos-counts", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.POLL_S):
            period_s = self.controller.measurement_period_ms / 1000.0
            now_s = self.lab.now_s()
            lines = b""
            if period_s <= 0:
                continue
            ended = int((now_s - self._last_s + self.ROUNDING * period_s) // period_s)
            if ended > self.MAX_LINES_PER_POLL:
                # Simulated time jumped: the controller reports the recent periods, not all of them.
                self._last_s += (ended - self.MAX_LINES_PER_POLL) * period_s
                ended = self.MAX_LINES_PER_POLL
            for _ in range(ended):
                self._last_s += period_s
                counts = self.lab.counts(period_s)[: self.controller.number_of_detectors]
                lines += (",".join([f"{self._last_s * 1000:.0f}"] + [str(c) for c in counts]) + "\n").encode()
            if not lines:
                continue
            for conn in list(self.server._connections):
                try:
                    conn.sendall(lines)
                except OSError:
                    self.server._connections.discard(conn)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        self.server.stop()


class _Silent(SimulatedInstrument):
    """The counts port ignores anything sent to it."""

    driver = "singlequantum_eos counts"

    def handle(self, message: str):
        return None
