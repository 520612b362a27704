"""Time for the simulated lab: wall-clock for demos, a hand-driven clock for tests.

Every physics model takes time from a clock (seconds, float) so tests can jump 30 s of
thermal settling in no wall time at all.
"""

from __future__ import annotations

import threading
import time


class WallClock:
    """Seconds since creation, optionally running ``speed`` times faster than real time."""

    def __init__(self, speed: float = 1.0):
        self.speed = speed
        self._start = time.monotonic()

    def now_s(self) -> float:
        return (time.monotonic() - self._start) * self.speed


class SimClock:
    """Simulated seconds; moves only when told to."""

    def __init__(self, start_s: float = 0.0):
        self._now_s = float(start_s)
        self._lock = threading.Lock()

    def now_s(self) -> float:
        with self._lock:
            return self._now_s

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("simulated time does not run backwards")
        with self._lock:
            self._now_s += seconds
            return self._now_s
