"""Loops the daemon runs: a period, a missed-period policy, settings that change while running,
and a published status.

:class:`Loop` is the scheduler: ``step()`` runs once per period on the loop's own thread.
When a step overruns (or the thread was not scheduled) one or more deadlines pass:

- ``"skip"``: the missed periods are dropped (counted in ``missed``); the next step is at the
  next deadline still ahead (a phase lock wants fresh data, not old periods replayed);
- ``"catch_up"``: the missed steps run back to back, at most ``max_catch_up`` of them, then
  the rest are skipped (a counter that must see every period);
- ``"stop"``: the loop stops and its status says why (a loop that must never run late).

``set(changes)`` validates and applies settings between two steps; a bad setting raises and
changes nothing. ``status()`` is what ``loops.list`` returns and what is published on the
``loops.<name>`` stream after every step (``publish`` callback).

The scheduling decision is :meth:`Loop.due` (pure: given the time, how many steps to run and
how many periods were missed), so the policies are tested with a hand-driven clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("qnode.loops")

POLICIES = ("skip", "catch_up", "stop")


class Loop:
    name = "loop"

    def __init__(self, name: str, period_s: float, missed_period: str = "skip", settings: dict | None = None, *,
                 publish: Callable[[str, dict], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 max_catch_up: int = 10, publish_every_s: float = 0.1):
        if period_s <= 0:
            raise ValueError(f"loop {name}: period_s must be > 0, got {period_s}")
        if missed_period not in POLICIES:
            raise ValueError(f"loop {name}: missed_period must be one of {POLICIES}, got {missed_period!r}")
        self.name = name
        self.period_s = float(period_s)
        self.missed_period = missed_period
        self.settings: dict = {}
        self.publish = publish
        self.clock = clock
        self.max_catch_up = max_catch_up
        self.publish_every_s = publish_every_s  # status on the stream at most this often
        self._published_s = -float("inf")
        self.steps = 0
        self.missed = 0
        self.errors = 0
        self.last_error: str | None = None
        self.stopped_reason: str | None = None
        self._next_s: float | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if settings:
            self.set(settings)

    # -- settings and status ----------------------------------------------------------------

    def set(self, changes: dict) -> dict:
        """Apply settings between steps; ``apply_settings`` validates (raises: nothing changes)."""
        with self._lock:
            self.apply_settings(dict(changes))
            self.settings.update(changes)
            return dict(self.settings)

    def apply_settings(self, changes: dict) -> None:
        """Subclasses: check and take ``changes``; raise ValueError/KeyError to refuse."""

    def loop_status(self) -> dict:
        """Subclasses: the loop's own status (units in the keys)."""
        return {}

    def status(self) -> dict:
        with self._lock:
            return {"name": self.name, "running": self.running, "period_s": self.period_s,
                    "missed_period": self.missed_period, "steps": self.steps, "missed": self.missed,
                    "errors": self.errors, "last_error": self.last_error, "stopped_reason": self.stopped_reason,
                    "settings": dict(self.settings), **self.loop_status()}

    # -- scheduling ---------------------------------------------------------------------------

    def step(self) -> None:
        """Subclasses: one period's work."""

    def due(self, now_s: float) -> tuple[int, int]:
        """(steps to run now, periods missed) at ``now_s``; advances the schedule."""
        if self._next_s is None:
            self._next_s = now_s
        if now_s < self._next_s:
            return 0, 0
        late = int((now_s - self._next_s) // self.period_s)  # deadlines passed besides the one due
        if late == 0:
            self._next_s += self.period_s
            return 1, 0
        if self.missed_period == "catch_up":
            run = min(late + 1, self.max_catch_up)
            self._next_s += (late + 1) * self.period_s
            return run, late + 1 - run
        if self.missed_period == "stop":
            return 0, late
        self._next_s += (late + 1) * self.period_s
        return 1, late

    def tick(self, now_s: float) -> int:
        """Run what is due at ``now_s`` (the thread calls this; tests call it with their clock)."""
        run, missed = self.due(now_s)
        self.missed += missed
        if missed and self.missed_period == "stop":
            self.stopped_reason = f"missed {missed} period(s) of {self.period_s} s (missed_period = 'stop')"
            log.warning("loop %s stopped: %s", self.name, self.stopped_reason)
            self._stop.set()
            return 0
        for _ in range(run):
            with self._lock:
                try:
                    self.step()
                    self.steps += 1
                except Exception as exc:  # a failing step is reported, the loop goes on
                    self.errors += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("loop %s: %s", self.name, self.last_error)
        if run and self.publish is not None and now_s - self._published_s >= self.publish_every_s:
            self._published_s = now_s
            self.publish(f"loops.{self.name}", self.status())
        return run

    # -- the thread ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self.stopped_reason = None
        self._next_s = None
        self._thread = threading.Thread(target=self._run, name=f"loop-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick(self.clock())
            wait = (self._next_s or self.clock()) - self.clock()
            self._stop.wait(max(wait, 0.0))
