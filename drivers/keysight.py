"""Keysight (Agilent) 33500B waveform generator used as a DC source for a phase actuator.

SCPI, lines end in "\\n", raw socket on TCP 5025. In DC mode the output is the offset
voltage (``SOUR1:VOLT:OFFS``); its range is +-5 V into 50 ohm and +-10 V into high Z,
which the driver reads (``OUTP1:LOAD?``) at open.
"""

from __future__ import annotations

from .errors import ValueOutOfRange
from .instrument import ScpiInstrument
from .scpi import parse_float

HIGH_Z_LOAD_OHM = 9.9e37  # the reply for OUTP:LOAD INF


class Keysight33500B(ScpiInstrument):
    model = "keysight33500b"
    error_check = "syst_err"
    error_query = "SYST:ERR?"
    idn_must_contain = ("335",)
    CHANNELS = (1, 2)

    def __init__(self, name, transport, **kwargs):
        super().__init__(name, transport, **kwargs)
        self.load_ohm = {1: 50.0, 2: 50.0}

    def _channel(self, channel: int) -> int:
        if channel not in self.CHANNELS:
            raise ValueOutOfRange(self.label, "channel", channel, 1, 2)
        return channel

    def _read_limits(self) -> None:
        for channel in self.channels_present():
            self.load_ohm[channel] = parse_float(self.protocol.query(f"OUTP{channel}:LOAD?"))

    def channels_present(self) -> tuple[int, ...]:
        # 33511B/33521B have one channel, 33512B/33522B two (the last digit of the model).
        parts = self.identity.split(",")
        model = parts[1].strip() if len(parts) > 1 else ""
        return (1, 2) if model.rstrip("AB").endswith("2") else (1,)

    def _readings(self) -> dict:
        out = {}
        for channel in self.channels_present():
            out[f"function_{channel}"] = self.function(channel)
            out[f"offset_{channel}_v"] = self.offset_v(channel)
            out[f"output_{channel}_on"] = self.output_on(channel)
        return out

    def max_offset_v(self, channel: int = 1) -> float:
        return 10.0 if self.load_ohm[self._channel(channel)] >= 1e6 else 5.0

    def function(self, channel: int = 1) -> str:
        return self._query(f"SOUR{self._channel(channel)}:FUNC?").strip()

    def configure_dc(self, channel: int = 1) -> None:
        self._write(f"SOUR{self._channel(channel)}:FUNC DC")

    def offset_v(self, channel: int = 1) -> float:
        return self._query_float(f"SOUR{self._channel(channel)}:VOLT:OFFS?")

    def set_offset_v(self, offset_v: float, channel: int = 1) -> None:
        channel = self._channel(channel)
        limit = self.max_offset_v(channel)
        value = self._check_range("offset_v", offset_v, -limit, limit, "V")
        self._write(f"SOUR{channel}:VOLT:OFFS {value:.6f}")

    def output_on(self, channel: int = 1) -> bool:
        return self._query(f"OUTP{self._channel(channel)}?").strip() in ("1", "ON")

    def set_output(self, on: bool, channel: int = 1) -> None:
        self._write(f"OUTP{self._channel(channel)} {'ON' if on else 'OFF'}")
