"""`qnode daemon`: one node's host process.

It opens the FPGA link (on ``sim://`` it first starts the simulated lab in-process) and the
instruments of the config, and serves:

- a ZeroMQ ROUTER control socket (``control_url``): JSON requests, see ``METHODS`` below and
  docs/daemon.md;
- a ZeroMQ PUB socket (``stream_url``) with the topics of :mod:`qnode.host.api`.

Threads: ``acquisition`` reads event batches and fans them out (measurements, recorder queue,
PUB); ``control`` answers requests; ``instruments`` polls the instruments. Nothing on the
acquisition path waits for a client or the disk: PUB drops at a subscriber's high-water mark
(visible to it as a gap in ``seq``) and the recorder has its own bounded queue whose overflow
becomes loss records. A failing request gets an error reply; the daemon stays up.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zmq

from qnode.drivers.timetagger import TimeTagger
from qnode.firmware.link import LinkError
from qnode.firmware.events import EVENT_DTYPE, Kind
from qnode.firmware.registers import REGISTER_MAP

from . import api
from .config import LabConfig, config_text
from .measurements import CoincidenceCounter, CorrelationHistogram, CountRates, HeraldRate
from .recorder import RecorderThread, recorded_events, recording_files, warm_up as warm_up_recorder

log = logging.getLogger("qnode.daemon")
action_log = logging.getLogger("qnode.actions")  # who changed the lab, and how (published on `log`)
action_log.setLevel(logging.INFO)

DEFAULT_CONTROL = "tcp://127.0.0.1:5555"
DEFAULT_STREAM = "tcp://127.0.0.1:5556"
RATES_PERIOD_S = 0.2
INSTRUMENT_PERIOD_S = 2.0
SWITCH_INTERVAL_S = 0.0005
PUB_HWM = 100  # event batches (~1 MB each at most) queued per subscriber before PUB drops for it
# Live measurements are fed by the acquisition thread: bounded, so no request can stall it or
# exhaust memory (measure.reset forgets them all).
MAX_HISTOGRAM_BINS = 1_000_000  # per correlation histogram (8 MB of counts, copied per reply)
MAX_LIVE_HISTOGRAMS = 64
MAX_LIVE_COINCIDENCE_SETS = 64  # distinct pattern lists asked for
MAX_PATTERNS = 64  # per measure.coincidences request


class BadParams(ValueError):
    """A request's params are missing or of the wrong type."""


# --- event sources ----------------------------------------------------------------------


class LinkSource:
    """Live events from the time tagger over its link."""

    def __init__(self, tagger: TimeTagger):
        self.tagger = tagger
        self.lock = threading.Lock()  # register access and reads share one link
        self.applied: dict | None = None  # the [fpga] settings as the device read them back

    def read(self, timeout_s: float) -> np.ndarray:
        with self.lock:
            return self.tagger.read_events(timeout_s)

    def status(self) -> dict:
        t = self.tagger
        ident = t.identity
        return {
            "url": t.url, "suspect": t.suspect,
            "identity": None if ident is None else ident.__dict__,
            "link": t.stats.__dict__,
            "applied": self.applied,
            "decode": None if t.decode_stats is None else {
                k: v for k, v in t.decode_stats.__dict__.items() if k != "lost_by_channel"},
        }

    @property
    def bin_ps(self) -> int:
        return self.tagger.bin_ps

    def close(self) -> None:
        self.tagger.close()


class FileSource:
    """Events from a recording, paced like the original (``speed``: x real time, or None for
    as fast as possible): the daemon runs as a virtual time tagger.

    Given the first file of a rotated recording it plays every file of it in order
    (``recorder.recording_files``); given another file, that file alone. Tags come from
    /photon_data, the other events (sync, heralds, coincidences, loss records) from the
    qnode tables (``recorder.recorded_events``), merged in time order."""

    def __init__(self, path: str | Path, speed: float | None = 1.0, chunk_tags: int = 1 << 18,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.path = Path(path)
        self.speed = speed
        self.chunk_tags = chunk_tags
        self._clock, self._sleep = clock, sleep  # wall time, for pacing
        self.files = recording_files(self.path) or [self.path]
        self.tags_total = 0
        for file in self.files:
            with h5py.File(file, "r", swmr=True) as f:
                if not isinstance(f.get("/photon_data/timestamps"), h5py.Dataset) or \
                        not isinstance(f.get("/photon_data/detectors"), h5py.Dataset):
                    raise ValueError(f"{file} is not a qnode recording: it has no /photon_data/timestamps "
                                     "and /photon_data/detectors (docs/formats.md)")
                self.tags_total += int(f["/photon_data/timestamps"].shape[0])
        self.tags_played = 0
        self._next_file = 0
        self._file = None
        self._open_next()
        self._t0_wall: float | None = None
        self._t0_ps: int | None = None
        self.finished = False

    def _open_next(self) -> bool:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._next_file >= len(self.files):
            return False
        self._file = h5py.File(self.files[self._next_file], "r", swmr=True)
        self._next_file += 1
        self._t = self._file["/photon_data/timestamps"]
        self._d = self._file["/photon_data/detectors"]
        self._extra = recorded_events(self._file)
        self._pos = 0
        self._extra_pos = 0
        return True

    def read(self, timeout_s: float) -> np.ndarray:
        while self._file is not None and self._pos >= self._t.shape[0] and self._extra_pos >= len(self._extra):
            self._open_next()
        if self._file is None:
            self.finished = True
            self._sleep(timeout_s)
            return np.empty(0, EVENT_DTYPE)
        n = self._t.shape[0]
        stop = min(self._pos + self.chunk_tags, n)
        t = self._t[self._pos:stop]
        ch = self._d[self._pos:stop]
        self.tags_played += stop - self._pos
        self._pos = stop
        last = t[-1] if len(t) else np.iinfo(np.int64).max
        extra_stop = len(self._extra) if stop >= n else int(np.searchsorted(self._extra["time_ps"], last, "right"))
        extra = self._extra[self._extra_pos:extra_stop]
        self._extra_pos = extra_stop
        events = np.empty(len(t) + len(extra), EVENT_DTYPE)
        events[: len(t)]["time_ps"] = t
        events[: len(t)]["channel"] = ch
        events[: len(t)]["kind"] = Kind.TAG
        events[: len(t)]["aux"] = 0
        events[len(t):] = extra
        events = events[np.argsort(events["time_ps"], kind="stable")]
        self._pace(events)
        return events

    def _pace(self, events: np.ndarray) -> None:
        if self.speed is None or not len(events):
            return
        if self._t0_wall is None:
            self._t0_wall, self._t0_ps = self._clock(), int(events["time_ps"][0])
        due = self._t0_wall + (int(events["time_ps"][-1]) - self._t0_ps) * 1e-12 / self.speed
        delay = due - self._clock()
        if delay > 0:
            self._sleep(delay)

    def status(self) -> dict:
        return {"replay": str(self.path), "files": [str(p) for p in self.files], "tags_total": self.tags_total,
                "tags_played": self.tags_played, "finished": self.finished, "speed": self.speed}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# --- the daemon ----------------------------------------------------------------------------


class Publisher:
    """The PUB socket. Only the acquisition thread touches it; others ``post`` to a queue."""

    def __init__(self, socket: zmq.Socket):
        self.socket = socket
        self.seq: dict[str, int] = {}
        self._posted: queue.SimpleQueue = queue.SimpleQueue()

    def publish(self, topic: str, header: dict, arrays: dict | None = None) -> None:
        seq = self.seq.get(topic, 0)
        self.seq[topic] = seq + 1
        frames = api.pack({"seq": seq, "time_s": time.time(), **header}, arrays)
        try:
            self.socket.send_multipart([topic.encode(), *frames], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            pass  # PUB never blocks; a dropped message shows as a seq gap

    def post(self, topic: str, header: dict, arrays: dict | None = None) -> None:
        self._posted.put((topic, header, arrays))

    def drain(self) -> None:
        while True:
            try:
                topic, header, arrays = self._posted.get_nowait()
            except queue.Empty:
                return
            self.publish(topic, header, arrays)


class PublishingLogHandler(logging.Handler):
    def __init__(self, publisher: Publisher):
        super().__init__(logging.INFO)
        self.publisher = publisher

    def emit(self, record: logging.LogRecord) -> None:
        self.publisher.post("log", {"level": record.levelname, "logger": record.name,
                                    "message": record.getMessage()})


class Daemon:
    def __init__(self, config: LabConfig, *, control_url: str = DEFAULT_CONTROL,
                 stream_url: str = DEFAULT_STREAM, replay: str | Path | None = None,
                 replay_speed: float | None = 1.0, sim_speed: float = 1.0, pub_hwm: int = PUB_HWM):
        self.config = config
        self.control_url = control_url
        self.stream_url = stream_url
        self.replay = replay
        self.replay_speed = replay_speed
        self.sim_speed = sim_speed
        self.pub_hwm = pub_hwm
        self.started_wall = time.time()
        self.channel_names = {ch.index: ch.name for ch in config.fpga.channels}
        self.lab = None
        self.source: LinkSource | FileSource | None = None
        self.instruments: dict[str, Any] = {}
        self.instrument_errors: dict[str, str] = {}
        self.recorder: RecorderThread | None = None
        self.last_recording: dict | None = None
        self._lock = threading.Lock()  # measurements and recorder handle
        self.rates = CountRates()
        self.heralds = HeraldRate()
        self.window_counts = np.zeros(64, np.int64)
        self.window_rates_hz = np.zeros(64)
        self._window_start_ps: int | None = None
        self._window_end_ps: int | None = None
        self.histograms: dict[tuple, CorrelationHistogram] = {}
        self.coincidences: dict[tuple, CoincidenceCounter] = {}
        self.events_total = 0
        self.acquisition_error: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.ctx = zmq.Context()
        self.loops: dict[str, Any] = {}  # name -> qnode.host.loops.Loop, for the loops qnode knows
        self.dashboard = None  # DashboardServer while [dashboard] enabled = true
        self._recording_error_logged = None  # the RecorderThread whose stop was logged
        self._last_readings: tuple[float, dict] | None = None  # (time_s, snapshots) of the last poll
        self._loop_columns: dict[str, list[str]] = {}  # loop -> recorded status fields
        self.dashboard_token = dashboard_token(config)
        self.methods: dict[str, Callable[[dict], Any]] = {
            "ping": self._ping, "status": self._status, "config": self._config, "stop": self._stop_request,
            "registers.list": self._registers_list, "registers.read": self._registers_read,
            "registers.write": self._registers_write,
            "record.start": self._record_start, "record.stop": self._record_stop,
            "record.status": self._record_status,
            "measure.rates": self._measure_rates, "measure.g2": self._measure_g2,
            "measure.coincidences": self._measure_coincidences, "measure.heralds": self._measure_heralds,
            "measure.reset": self._measure_reset,
            "instruments.list": self._instruments_list, "instruments.snapshot": self._instruments_snapshot,
            "loops.list": self._loops_list, "loops.status": self._loops_status, "loops.set": self._loops_set,
            "loops.start": self._loops_start, "loops.stop": self._loops_stop,
            "dashboard.url": self._dashboard_url,
        }

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> "Daemon":
        # Python hands the GIL over every 5 ms by default; a control request waiting behind
        # the acquisition thread would wait that long. 0.5 ms keeps round trips short.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        if logging.getLogger("qnode").level == logging.NOTSET:
            logging.getLogger("qnode").setLevel(logging.INFO)  # the log stream carries INFO and up
        _warm_up_kernels()
        try:
            self._open_sockets()
            self._open_source()
            self._open_instruments()
            self._make_loops()
        except BaseException:
            self.close()
            raise
        for name, target in (("acquisition", self._acquire), ("control", self._serve),
                             ("instruments", self._poll_instruments)):
            thread = threading.Thread(target=target, name=f"qnode-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        for name, loop in self.loops.items():
            if self.config.loops[name].enabled:
                loop.start()
        self._start_dashboard()
        log.info("daemon up: control %s, streams %s", self.control_url, self.stream_url)
        return self

    def _open_sockets(self) -> None:
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, self.pub_hwm)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind(self.stream_url)
        self.stream_url = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.MAXMSGSIZE, 64 * api.MAX_REQUEST_BYTES)  # memory guard
        self.router.bind(self.control_url)
        self.control_url = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.publisher = Publisher(self.pub)
        self._log_handler = PublishingLogHandler(self.publisher)
        logging.getLogger("qnode").addHandler(self._log_handler)

    def _open_source(self) -> None:
        if self.replay is not None:
            self.source = FileSource(self.replay, speed=self.replay_speed)
            return
        fpga = self.config.fpga
        url = fpga.link
        if url == "sim://":
            from qnode.sim.services import SimulatedLab

            self.lab = SimulatedLab(self.config, speed=self.sim_speed).start()
            url = self.lab.fpga_url
        tagger = TimeTagger(url, baud=fpga.baud, timeout_s=2.0)
        tagger.open()
        self.source = LinkSource(tagger)
        log.info("time tagger %s: gateware %s on %s", url, tagger.identity.gateware_hash,
                 tagger.identity.board)
        self._apply_fpga_settings(tagger)

    def _apply_fpga_settings(self, tagger: TimeTagger) -> None:
        """Write the config's [fpga] settings (channels, coincidence patterns, herald rule) to
        the time tagger; a device that refuses one stops the start with a message naming it."""
        fpga = self.config.fpga
        where = self.config.source_path or "the config"
        try:
            applied = tagger.apply_config(fpga)
        except (LinkError, ValueError) as exc:
            raise RuntimeError(f"{where}: the [fpga] settings could not be written to {tagger.url}: {exc}") from None
        self.source.applied = {
            "channels": applied["channels"],
            "coincidence": [dataclasses.asdict(p) for p in applied["coincidence"]],
            "herald": dataclasses.asdict(applied["herald"]),
        }
        h = applied["herald"]
        if h.rule != "off" and tagger.read_register("herald_latency_clocks") == 0:
            log.warning("%s: [fpga.herald] rule %s, but this time tagger reports no herald unit "
                        "(herald_latency_clocks = 0): it will give no heralds", where, h.rule)
        log.info("time tagger settings: %d channels; %d coincidence pattern(s); herald %s (sync %d, "
                 "detectors %s, veto %s, window %d + %d ps)", len(applied["channels"]), len(applied["coincidence"]),
                 h.rule, h.sync_channel, h.detectors, h.veto, h.offset_ps, h.length_ps)

    def _open_instruments(self) -> None:
        from qnode.drivers.registry import make_instrument

        for name, entry in self.config.instruments.items():
            if self.replay is not None:
                continue
            if self.lab is not None:
                entry = self.lab.instrument_entry(name)
            elif entry.sim:
                self.instrument_errors[name] = "sim = true needs fpga.link = sim:// (the simulated lab)"
                continue
            try:
                driver = make_instrument(name, entry)
                driver.open()
                self.instruments[name] = driver
            except Exception as exc:  # an instrument that is off must not stop the node
                self.instrument_errors[name] = f"{type(exc).__name__}: {exc}"
                log.warning("instrument %s unavailable: %s", name, exc)

    def stop(self) -> None:
        self._stop.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until stopped (by ``stop()`` or a ``stop`` request); True if stopped."""
        return self._stop.wait(timeout_s)

    def close(self) -> None:
        self._stop.set()
        for loop in self.loops.values():
            loop.stop()
        if self.dashboard is not None:
            self.dashboard.stop()
        for thread in self._threads:
            thread.join(10)
        with self._lock:
            self._close_recorder()
        for driver in self.instruments.values():
            try:
                driver.close()
            except Exception:
                pass
        if self.source is not None:
            self.source.close()
        if self.lab is not None:
            self.lab.stop()
        if hasattr(self, "_log_handler"):
            logging.getLogger("qnode").removeHandler(self._log_handler)
        self.ctx.destroy(linger=0)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -- acquisition --------------------------------------------------------------------

    def _acquire(self) -> None:
        next_rates = time.monotonic() + RATES_PERIOD_S
        while not self._stop.is_set():
            try:
                events = self.source.read(0.05)
            except Exception as exc:  # the link is gone for good: say so, keep serving
                self.acquisition_error = f"{type(exc).__name__}: {exc}"
                log.error("acquisition stopped: %s", exc)
                self._stop.wait(1.0)
                continue
            if len(events):
                self._fan_out(events)
            if time.monotonic() >= next_rates:
                next_rates += RATES_PERIOD_S
                self._publish_rates()
            self.publisher.drain()

    def _fan_out(self, events: np.ndarray) -> None:
        with self._lock:
            self.events_total += len(events)
            self.rates.add(events)
            tags = events[events["kind"] == Kind.TAG]
            self.window_counts += np.bincount(tags["channel"], minlength=64)[:64]
            if self._window_start_ps is None:
                self._window_start_ps = int(events["time_ps"][0])
            self._window_end_ps = int(events["time_ps"][-1])
            self.heralds.add(events)
            for h in self.histograms.values():
                h.add(events)
            for c in self.coincidences.values():
                c.add(events)
            if self.recorder is not None and not self.recorder.put(events):
                self._recording_refused()
        for loop in self.loops.values():
            if loop.running and hasattr(loop, "feed"):
                loop.feed(events)
        self.publisher.publish("events", {"count": len(events)}, {"events": events})
        heralds = events[events["kind"] == Kind.HERALD]
        if len(heralds):
            self.publisher.publish("heralds", {"count": len(heralds)}, {"heralds": heralds})

    def _recording_refused(self) -> None:
        """A batch the recorder did not take: if the recording has stopped (a full disk), say so
        once on the log (and so on the `log` stream and the dashboard)."""
        error = self.recorder.recorder.error
        if error is not None and self._recording_error_logged is not self.recorder:
            self._recording_error_logged = self.recorder
            log.error("%s", error)

    def _publish_rates(self) -> None:
        with self._lock:
            if self._window_start_ps is not None and self._window_end_ps > self._window_start_ps:
                span_s = (self._window_end_ps - self._window_start_ps) * 1e-12
                self.window_rates_hz = self.window_counts / span_s
                self.window_counts[:] = 0
                self._window_start_ps = self._window_end_ps
            rates = self._named_rates()
        self.publisher.publish("rates", {"rates_hz": rates})

    def _named_rates(self) -> dict[str, float]:
        return {name: float(self.window_rates_hz[ch]) for ch, name in sorted(self.channel_names.items())}

    def _poll_instruments(self) -> None:
        while not self._stop.wait(INSTRUMENT_PERIOD_S):
            readings = {}
            for name, driver in list(self.instruments.items()):
                try:
                    readings[name] = driver.snapshot()
                except Exception as exc:
                    readings[name] = {"error": f"{type(exc).__name__}: {exc}"}
            if readings:
                self.publisher.post("instruments", {"readings": readings})
                self._last_readings = (time.time(), readings)
                self._record_readings(self.recorder, *self._last_readings)

    @staticmethod
    def _record_readings(recorder: RecorderThread | None, time_s: float, readings: dict) -> None:
        """The numbers of instrument snapshots into /qnode/instrument_readings (while recording)."""
        if recorder is None:
            return
        rows = reading_rows(readings)
        if rows:
            instrument, quantity, value, unit = zip(*rows)
            recorder.append_instrument_readings(time_s, list(instrument), list(quantity), list(value), list(unit))

    def _loop_published(self, topic: str, status: dict) -> None:
        """A loop's status: on the ``loops.<name>`` stream, and a row of /qnode/loops/<name> while
        recording (the columns declared when the recording started)."""
        self.publisher.post(topic, status)
        recorder, columns = self.recorder, self._loop_columns.get(topic[len("loops."):])
        if recorder is not None and columns:
            recorder.append_loop_trace(topic[len("loops."):], time.time(),
                                       **{c: _number(status.get(c)) for c in columns})

    # -- control ------------------------------------------------------------------------

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.ZMQError:
                continue
            # ROUTER: [identity, (empty delimiter from REQ,)? request]
            identity, rest = frames[0], frames[1:]
            envelope = [identity]
            if rest and rest[0] == b"":
                envelope.append(b"")
                rest = rest[1:]
            reply = self.handle(rest)
            try:
                self.router.send_multipart(envelope + reply, zmq.NOBLOCK, copy=False)
            except zmq.ZMQError:
                pass  # the client went away

    def handle(self, frames: list[bytes]) -> list[bytes]:
        """One request (its frames) -> the reply frames. Never raises."""
        request_id = None
        try:
            size = sum(len(f) for f in frames)
            if size > api.MAX_REQUEST_BYTES:
                raise _Reply("RequestTooLarge", f"request of {size} bytes exceeds {api.MAX_REQUEST_BYTES}")
            if len(frames) != 1:
                raise _Reply("BadRequest", f"a request is one JSON frame, got {len(frames)} frames")
            try:
                request = json.loads(frames[0])
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise _Reply("BadRequest", f"not JSON: {exc}") from None
            if not isinstance(request, dict):
                raise _Reply("BadRequest", "a request is a JSON object {id, method, params}")
            request_id = request.get("id")
            method = request.get("method")
            params = request.get("params", {})
            if not isinstance(method, str):
                raise _Reply("BadRequest", "method must be a string")
            if not isinstance(params, dict):
                raise _Reply("BadParams", "params must be a JSON object")
            handler = self.methods.get(method)
            if handler is None:
                raise _Reply("UnknownMethod", f"no method {method!r}; known: {', '.join(sorted(self.methods))}")
            result = handler(params)
            arrays = None
            if isinstance(result, tuple):
                result, arrays = result
            return api.pack({"id": request_id, "result": result}, arrays)
        except _Reply as exc:
            return api.pack({"id": request_id, "error": {"type": exc.type, "message": exc.message}})
        except BadParams as exc:
            return api.pack({"id": request_id, "error": {"type": "BadParams", "message": str(exc)}})
        except Exception as exc:  # a handler failed: report it, stay up
            log.warning("request failed: %s: %s", type(exc).__name__, exc)
            return api.pack({"id": request_id, "error": {"type": type(exc).__name__, "message": str(exc)}})

    # -- methods ------------------------------------------------------------------------

    def _ping(self, params):
        return {"pong": True, "time_s": time.time()}

    def _status(self, params):
        with self._lock:
            recording = self._recording_status()
            rates = self._named_rates()
        return {
            "node": self.config.node.name, "uptime_s": time.time() - self.started_wall,
            "events_total": self.events_total, "rates_hz": rates, "source": self.source.status(),
            "acquisition_error": self.acquisition_error, "recording": recording, "losses": self._losses(),
            "instruments": {**{n: "ok" for n in self.instruments}, **self.instrument_errors},
            "simulated_lab": self.lab is not None,
        }

    def _losses(self) -> dict:
        """Every count of lost events the node keeps, by where they were lost."""
        out = {"in_band_events": 0, "link_words": 0, "invalid_words": 0}
        tagger = getattr(self.source, "tagger", None)
        if tagger is not None:
            out["link_words"] = tagger.stats.lost_words
            if tagger.decode_stats is not None:
                out["in_band_events"] = tagger.decode_stats.lost_events
                out["invalid_words"] = tagger.decode_stats.invalid_words
        if self.recorder is not None:
            status = self.recorder.status()
            out["recorder_dropped_batches"] = status.dropped_batches
        return out

    def _config(self, params):
        return self.config.model_dump(mode="json")

    def _stop_request(self, params):
        self._stop.set()
        return {"stopping": True}

    def _registers_list(self, params):
        return [{"name": r.name, "address": r.address, "width": r.width, "access": r.access.value,
                 "count": r.count, "unit": r.unit, "doc": r.doc} for r in REGISTER_MAP]

    def _link(self) -> LinkSource:
        if not isinstance(self.source, LinkSource):
            raise _Reply("NotAvailable", "registers need a live time tagger (this daemon replays a file)")
        return self.source

    def _registers_read(self, params):
        name, index = _param(params, "name", str), _param(params, "index", int, 0)
        link = self._link()
        with link.lock:
            return {"name": name, "index": index, "value": link.tagger.read_register(name, index)}

    def _registers_write(self, params):
        name, index = _param(params, "name", str), _param(params, "index", int, 0)
        value = _param(params, "value", int)
        link = self._link()
        with link.lock:
            readback = link.tagger.write_register(name, value, index)
        log.info("register %s[%d] = %d (read back %d)", name, index, value, readback)
        return {"name": name, "index": index, "value": readback}

    def _record_start(self, params):
        path = params.get("path")
        if path is not None and not isinstance(path, str):
            raise BadParams("path must be a string")
        with self._lock:
            if self.recorder is not None:
                raise _Reply("AlreadyRecording", f"already recording to {self.recorder.recorder.path}")
            rec_cfg = self.config.recording
            if path is None:
                stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
                path = Path(rec_cfg.directory) / f"{self.config.node.name}-{stamp}.h5"
            manifest = None
            if isinstance(self.source, LinkSource) and self.source.tagger.identity is not None:
                manifest = dict(self.source.tagger.identity.__dict__)
            # Loop tables are declared up front (an SWMR file gets no new datasets): the numeric
            # fields of each loop's status now.
            self._loop_columns = {name: trace_columns(loop.status()) for name, loop in self.loops.items()}
            self.recorder = RecorderThread(
                path, channel_names=self.channel_names, config_text=config_text(self.config),
                description=f"qnode recording on {self.config.node.name}",
                compression=rec_cfg.compression, flush_s=rec_cfg.flush_s, rotate_mb=rec_cfg.rotate_mb,
                rotate_s=rec_cfg.rotate_s, manifest=manifest,
                loops={name: cols for name, cols in self._loop_columns.items() if cols},
            )
            if self._last_readings is not None:  # the instruments as last read, so no file lacks them
                self._record_readings(self.recorder, *self._last_readings)
            status = self._recording_status()
        log.info("recording to %s", path)
        return status

    def _record_stop(self, params):
        with self._lock:
            if self.recorder is None:
                raise _Reply("NotRecording", "no recording is running")
            self._close_recorder()
            status = self.last_recording
        log.info("recording stopped: %s", status["path"])
        return status

    def _close_recorder(self) -> None:
        if self.recorder is None:
            return
        rec, self.recorder = self.recorder, None
        error = None
        try:
            rec.close()
        except Exception as exc:
            error = str(exc)
        status = _status_dict(rec.status())
        if error and not status.get("error"):
            status["error"] = error
        self.last_recording = status

    def _record_status(self, params):
        with self._lock:
            return self._recording_status()

    def _recording_status(self) -> dict:
        if self.recorder is None:
            return {"recording": False, "last": self.last_recording}
        return {"recording": True, **_status_dict(self.recorder.status())}

    def _measure_rates(self, params):
        with self._lock:
            return {"rates_hz": self._named_rates(), "counts": {self.channel_names.get(i, str(i)): int(n)
                    for i, n in enumerate(self.rates.counts) if n or i in self.channel_names}}

    def _measure_g2(self, params):
        a, b = _param(params, "channel_a", int), _param(params, "channel_b", int)
        bin_ps, range_ps = _param(params, "bin_ps", int, 100), _param(params, "range_ps", int, 20_000)
        key = (a, b, bin_ps, range_ps)
        if bin_ps > 0 and range_ps > 0 and 2 * range_ps // bin_ps > MAX_HISTOGRAM_BINS:
            raise BadParams(f"2 * range_ps / bin_ps = {2 * range_ps // bin_ps:,} bins; at most {MAX_HISTOGRAM_BINS:,}")
        with self._lock:
            hist = self.histograms.get(key)
            if hist is None:
                if len(self.histograms) >= MAX_LIVE_HISTOGRAMS:
                    raise _Reply("TooManyMeasurements", f"{len(self.histograms)} correlation histograms are "
                                 "being filled already; measure.reset forgets them")
                try:
                    hist = self.histograms[key] = CorrelationHistogram(a, b, bin_ps, range_ps)
                except ValueError as exc:
                    raise BadParams(str(exc)) from None
            counts = hist.counts.copy()
            result = {"channel_a": a, "channel_b": b, "bin_ps": bin_ps, "range_ps": range_ps,
                      "pairs": int(counts.sum()), "duration_ps": int(hist.duration_ps)}
            arrays = {"counts": counts, "delays_ps": hist.delays_ps}
            if counts.sum():
                arrays["g2"] = hist.g2()
                peak = int(np.argmax(counts))
                result["peak_ps"] = float(hist.centres_ps[peak])
                try:
                    car = hist.car(window_ps=_param(params, "window_ps", int, 1000))
                    result["car"] = car.car
                except ValueError:
                    pass
        return result, arrays

    def _measure_coincidences(self, params):
        raw = _param(params, "patterns", list)
        try:
            patterns = tuple(tuple((tuple(p[0]), int(p[1]), *(p[2:3]))) for p in raw)
        except (TypeError, ValueError, IndexError):
            raise BadParams("patterns: a list of [channels, window_ps] or [channels, window_ps, min_fold]") from None
        if len(patterns) > MAX_PATTERNS:
            raise BadParams(f"patterns: {len(patterns)} patterns; at most {MAX_PATTERNS} a request")
        with self._lock:
            counter = self.coincidences.get(patterns)
            if counter is None:
                if len(self.coincidences) >= MAX_LIVE_COINCIDENCE_SETS:
                    raise _Reply("TooManyMeasurements", f"{len(self.coincidences)} coincidence pattern lists are "
                                 "being counted already; measure.reset forgets them")
                try:
                    counter = self.coincidences[patterns] = CoincidenceCounter(patterns)
                except (ValueError, TypeError) as exc:
                    raise BadParams(str(exc)) from None
            return {"patterns": [list(p) for p in raw], "counts": counter.counts.tolist()}

    def _measure_heralds(self, params):
        with self._lock:
            return {"total": int(self.heralds.total), "by_outcome": self.heralds.counts.tolist(),
                    "rate_hz": float(self.heralds.rate_hz()) if self.heralds.total else 0.0}

    def _measure_reset(self, params):
        with self._lock:
            self.histograms.clear()
            self.coincidences.clear()
            self.rates = CountRates()
            self.heralds = HeraldRate()
        return {"reset": True}

    def _instruments_list(self, params):
        return {"open": sorted(self.instruments), "unavailable": self.instrument_errors}

    def _instruments_snapshot(self, params):
        name = _param(params, "name", str)
        driver = self.instruments.get(name)
        if driver is None:
            reason = self.instrument_errors.get(name, "not in this config")
            raise _Reply("NotAvailable", f"instrument {name!r}: {reason}")
        return driver.snapshot()

    # -- loops ----------------------------------------------------------------------------

    def _make_loops(self) -> None:
        """Loops qnode implements (``phase_lock``), from [loops.NAME]; others are listed only."""
        from .phase_lock import make_phase_lock_loop

        for name, entry in self.config.loops.items():
            if name != "phase_lock" or self.replay is not None:
                continue
            actuator_name = entry.settings.get("actuator")
            driver = self.instruments.get(actuator_name) if actuator_name else None
            reference = self.config.sim.reference if self.config.sim is not None else None
            try:
                self.loops[name] = make_phase_lock_loop(
                    name, entry, reference=reference, actuator=driver.set_voltage_v if driver else None,
                    publish=self._loop_published)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("loop %s not started: %s", name, exc)

    def _loop(self, params):
        name = _param(params, "name", str)
        loop = self.loops.get(name)
        if loop is None:
            known = ", ".join(sorted(self.loops)) or "none"
            why = "configured but qnode has no such loop" if name in self.config.loops else "not in the config"
            raise _Reply("NotAvailable", f"loop {name!r}: {why} (running loops: {known})")
        return loop

    def _loops_list(self, params):
        out = {}
        for name, entry in self.config.loops.items():
            loop = self.loops.get(name)
            base = {"enabled": entry.enabled, "period_s": entry.period_s, "running": False,
                    "implemented": loop is not None}
            out[name] = {**base, **loop.status()} if loop is not None else base
        return out

    def _loops_status(self, params):
        return self._loop(params).status()

    def _loops_set(self, params):
        loop = self._loop(params)
        settings = _param(params, "settings", dict)
        try:
            loop.set(settings)
        except (ValueError, KeyError, TypeError) as exc:
            raise BadParams(f"settings: {exc}") from None
        return loop.status()

    def _loops_start(self, params):
        loop = self._loop(params)
        loop.start()
        return loop.status()

    def _loops_stop(self, params):
        loop = self._loop(params)
        loop.stop()
        return loop.status()

    # -- dashboard (host/dashboard.py): served while configured; token check; action log --

    def _start_dashboard(self) -> None:
        if not self.config.dashboard.enabled:
            return
        from .dashboard import DashboardServer

        try:
            self.dashboard = DashboardServer.for_daemon(self).start()
        except Exception as exc:  # the dashboard is a window on the node, never a reason to stop it
            self.dashboard = None
            log.error("dashboard not started on %s:%s: %s", self.config.dashboard.host,
                      self.config.dashboard.port, exc)
            return
        log.info("dashboard on %s", self.dashboard.url)

    def dashboard_token_ok(self, token: Any) -> bool:
        """True when ``token`` is the configured dashboard token (never when none is configured)."""
        if self.dashboard_token is None or not isinstance(token, str):
            return False
        return hmac.compare_digest(token.encode(), self.dashboard_token.encode())

    def log_action(self, who: str, what: str, outcome: str) -> None:
        """Every action on the lab from outside the control API's own clients, with who did it."""
        level = logging.INFO if outcome == "ok" else logging.WARNING
        action_log.log(level, "action by %s: %s -> %s", who, what, outcome)

    def _dashboard_url(self, params):
        if self.dashboard is None:
            why = "disabled ([dashboard] enabled = false)" if not self.config.dashboard.enabled else "not running (see the log)"
            raise _Reply("NotAvailable", f"the dashboard is {why}")
        return {"url": self.dashboard.url, "token_configured": self.dashboard_token is not None}


def dashboard_token(config: LabConfig) -> str | None:
    """The dashboard's token from ``[dashboard] token`` or the variable ``token_env`` names."""
    cfg = config.dashboard
    token = os.environ.get(cfg.token_env) if cfg.token_env else cfg.token
    return token or None


# Unit of a snapshot or status key from its suffix (keys carry their units: temperature_a_k).
UNIT_SUFFIXES = {"_k": "K", "_v": "V", "_mv": "mV", "_ua": "uA", "_ma": "mA", "_a": "A", "_w": "W",
                 "_mw": "mW", "_dbm": "dBm", "_nm": "nm", "_hz": "Hz", "_s": "s", "_ms": "ms",
                 "_ps": "ps", "_deg": "deg", "_rad": "rad", "_percent": "%", "_ohm": "ohm", "_per_s": "/s",
                 "_deg_per_s": "deg/s", "_hz_per_s": "Hz/s"}
TEXT_STATUS_KEYS = frozenset({"last_error", "stopped_reason"})  # None or a text: not a trace column


def _unit(key: str) -> str:
    return next((UNIT_SUFFIXES[s] for s in sorted(UNIT_SUFFIXES, key=len, reverse=True) if key.endswith(s)), "")


def _number(value: Any) -> float:
    if isinstance(value, (bool, int, float, np.integer, np.floating)):
        return float(value)
    return float("nan")


def reading_rows(readings: dict) -> list[tuple[str, str, float, str]]:
    """(instrument, quantity, value, unit) for every number in instrument snapshots: booleans as
    0/1, lists element by element (``bias_ua[2]``); text, nested tables and names longer than
    the recording's fields (32 bytes) are left out."""
    rows = []
    for instrument, snapshot in readings.items():
        if not isinstance(snapshot, dict) or len(instrument.encode()) > 32:
            continue
        for key, value in snapshot.items():
            values = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
            for i, v in values:
                quantity = key if i is None else f"{key}[{i}]"
                if isinstance(v, (bool, int, float, np.integer, np.floating)) and len(quantity.encode()) <= 32:
                    rows.append((instrument, quantity, float(v), _unit(key)))
    return rows


def trace_columns(status: dict) -> list[str]:
    """The fields of a loop's status that are numbers (or not yet known: None), recorded as columns."""
    return [k for k, v in status.items() if k.isidentifier() and k not in TEXT_STATUS_KEYS and
            (v is None or isinstance(v, (bool, int, float, np.integer, np.floating)))]


def _warm_up_kernels() -> None:
    """Compile (or load from numba's cache) the measurement kernels before serving, so the
    first request for a histogram does not wait seconds for the compiler."""
    events = np.zeros(4, EVENT_DTYPE)
    events["time_ps"] = [0, 1000, 2000, 3000]
    events["kind"] = Kind.TAG
    events["channel"] = [1, 2, 1, 2]
    CorrelationHistogram(1, 2, 100, 1000).add(events)
    CoincidenceCounter([((1, 2), 1000)]).add(events)
    CountRates().add(events)
    HeraldRate().add(events)
    warm_up_recorder()


class _Reply(Exception):
    def __init__(self, type_: str, message: str):
        super().__init__(message)
        self.type, self.message = type_, message


def _param(params: dict, name: str, kind: type, default: Any = ...) -> Any:
    if name not in params:
        if default is ...:
            raise BadParams(f"missing parameter {name!r}")
        return default
    value = params[name]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise BadParams(f"parameter {name!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _status_dict(status) -> dict:
    import dataclasses

    return dataclasses.asdict(status) if dataclasses.is_dataclass(status) else dict(status)
