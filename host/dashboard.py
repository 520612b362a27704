"""The daemon's web dashboard: one live page for the lab, read-only unless the token is given.

The server is a client of the daemon's own API, like a notebook: a SUB socket on the streams
(``rates``, ``instruments``, ``log`` always; ``loops.<name>`` while a page is open; never
``events``) and a DEALER on the control socket (``status``, ``measure.g2``, ``measure.heralds``
and the actions). It runs an aiohttp app on its own thread and asyncio loop, so the acquisition
thread never waits for it; with no page open it makes no control requests at all.

Routes::

    GET  /             the page (host/dashboard_static/: no external resources)
    GET  /static/...   its script and style sheet
    GET  /ws           WebSocket. server -> page: {"type": "hello"} once, then {"type": "update"}
                       every TICK_S; page -> server: {"type": "view", channel_a, channel_b,
                       bin_ps, range_ps} to choose the correlation histogram
    POST /api/action   {"method", "params", "token", "user"}: an action that changes the lab
    GET  /api/info     node, daemon start time, channels, whether actions are possible

Actions (``ACTIONS``, and ``loops.*`` methods other than read-only ones) need the daemon's
dashboard token; each one, allowed or refused, is logged with the user name the page sends and
the client's address. A slow page misses updates (its send is still pending); it never delays
the others or the daemon.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from importlib import resources
from typing import Any

import numpy as np
import zmq
import zmq.asyncio
from aiohttp import WSMsgType, web

from . import api

log = logging.getLogger("qnode.dashboard")

TICK_S = 0.1  # one update per page every 100 ms (10 Hz)
RATE_HISTORY = 600  # rates samples kept (0.2 s each: two minutes)
LOG_LINES = 200
LOOP_HISTORY = 2000  # status samples kept per loop
LOOP_POINTS_PER_UPDATE = 50  # a fast loop is decimated to this many trace points per update
COINCIDENCE_WINDOW_PS = 2000  # coincidences: histogram counts within +-1 ns of the g2 peak
RATE_SPAN_S = 1.0  # coincidence, herald and event rates: differences over about this long
MAX_HISTOGRAM_BINS = 10_000  # a page cannot make the daemon keep an enormous histogram
CONTROL_TIMEOUT_S = 5.0
MAX_LOGGED_ACTION = 300  # characters of an action's parameters in the log

ACTIONS = frozenset({"record.start", "record.stop", "registers.write", "measure.reset"})
READ_ONLY_LOOP_METHODS = frozenset({"loops.list", "loops.status"})


def is_action(method: str) -> bool:
    """True for the control methods that change the lab (and so need the token)."""
    return method in ACTIONS or (method.startswith("loops.") and method not in READ_ONLY_LOOP_METHODS)


def _clean_user(user: Any) -> str:
    if not isinstance(user, str):
        return "anonymous"
    user = "".join(c for c in user.strip() if c.isprintable())[:40]
    return user or "anonymous"


def _dumps(value) -> str:
    """JSON a browser can parse: infinities and NaN (a CAR with no accidentals) become null."""
    return json.dumps(_finite(value), default=api._json_default)


def _finite(value):
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.floating):
        return _finite(float(value))
    return value


class _Control:
    """The control socket as an asyncio client: one request at a time, replies matched by id."""

    def __init__(self, ctx: zmq.asyncio.Context, url: str, timeout_s: float = CONTROL_TIMEOUT_S):
        self.url = url
        self.timeout_s = timeout_s
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(url)
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    async def call(self, method: str, **params):
        async with self._lock:
            request_id = next(self._ids)
            await self.socket.send(json.dumps({"id": request_id, "method": method, "params": params}).encode())
            deadline = time.monotonic() + self.timeout_s
            while True:
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0 or not await self.socket.poll(left_ms):
                    raise TimeoutError(f"no reply to {method!r} from the daemon at {self.url}")
                header, arrays = api.unpack(await self.socket.recv_multipart())
                if header.get("id") != request_id:
                    continue  # a late reply to a call that timed out
                if "error" in header:
                    raise api.ApiError(header["error"]["type"], header["error"]["message"])
                result = header.get("result")
                return {**(result or {}), **arrays} if arrays else result


class _Page:
    """One open page: its socket, what it looks at, what it has been sent."""

    def __init__(self, ws: web.WebSocketResponse, remote: str | None, view: tuple[int, int, int, int]):
        self.ws = ws
        self.remote = remote
        self.view = view  # (channel_a, channel_b, bin_ps, range_ps)
        self.log_seen = 0  # log lines sent so far (global index)
        self.loop_seen: dict[str, int] = {}
        self.rates_seen = 0.0  # time_s of the last rates sample sent
        self.sending: asyncio.Task | None = None
        self.skipped = 0  # updates not sent because the previous one was still on its way


class DashboardServer:
    """The dashboard of the daemon at ``control_url``/``stream_url``, served on ``host:port``.

    ``authorize(token) -> bool`` decides whether an action may run; ``log_action(who, what,
    outcome)`` records it. ``start()`` returns once the port is bound (or raises why not).
    """

    def __init__(self, control_url: str, stream_url: str, *, host: str = "127.0.0.1", port: int = 8050,
                 node: str = "qnode", channels: dict[int, str] | None = None, started_wall: float | None = None,
                 pair: tuple[int, int] | None = None, bin_ps: int = 100, authorize: Callable[[Any], bool] = lambda token: False,
                 log_action: Callable[[str, str, str], None] | None = None, token_configured: bool = False):
        self.control_url = control_url
        self.stream_url = stream_url
        self.host = host
        self.port = port
        self.node = node
        self.channels = dict(sorted((channels or {}).items()))
        self.started_wall = started_wall if started_wall is not None else time.time()
        names = list(self.channels)
        self.pair = pair or ((names[0], names[1]) if len(names) >= 2 else (0, 1))
        self.default_view = (*self.pair, bin_ps, 20_000)
        self.authorize = authorize
        self.log_action = log_action or (lambda who, what, outcome: log.info("%s: %s -> %s", who, what, outcome))
        self.token_configured = token_configured
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._pages: set[_Page] = set()
        # what the streams said
        self.rates: collections.deque = collections.deque(maxlen=RATE_HISTORY)  # (time_s, {name: hz})
        self.instruments: dict = {}
        self.instruments_time_s: float | None = None
        self.log_lines: collections.deque = collections.deque(maxlen=LOG_LINES)
        self.log_count = 0
        self.loops: dict[str, collections.deque] = {}  # name -> (index, time_s, header)
        self.loop_count: dict[str, int] = {}
        self.stream_missed = 0
        self._seq: dict[str, int] = {}
        # differences for rates
        self._events_history: collections.deque = collections.deque(maxlen=64)  # (wall s, events_total)
        self._herald_history: collections.deque = collections.deque(maxlen=64)  # (wall s, total)
        self._g2_history: dict[tuple, collections.deque] = {}  # view -> (duration_ps, counts), ~1.5 s
        self.updates_sent = 0
        self._register_names: list[str] | None = None

    @classmethod
    def for_daemon(cls, daemon) -> "DashboardServer":
        cfg = daemon.config
        pair = None
        if cfg.sim is not None and cfg.sim.pair_source is not None:
            pair = (cfg.sim.pair_source.channel_a, cfg.sim.pair_source.channel_b)
        return cls(daemon.control_url, daemon.stream_url, host=cfg.dashboard.host, port=cfg.dashboard.port,
                   node=cfg.node.name, channels=daemon.channel_names, started_wall=daemon.started_wall, pair=pair,
                   bin_ps=max(100, cfg.fpga.bin_ps),  # finer bins than the time tagger's leave gaps
                   authorize=daemon.dashboard_token_ok, log_action=daemon.log_action,
                   token_configured=daemon.dashboard_token is not None)

    @property
    def url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(self.host, self.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> "DashboardServer":
        self._thread = threading.Thread(target=self._run, name="qnode-dashboard", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        if not self._ready.is_set():
            raise TimeoutError("the dashboard did not start within 30 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # bind errors and the like: start() raises them
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        ctx = zmq.asyncio.Context()
        self._sub = ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        for topic in ("rates", "instruments", "log"):
            self._sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._sub.connect(self.stream_url)
        self._control = _Control(ctx, self.control_url)
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/api/info", self._info)
        app.router.add_post("/api/action", self._action)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        tasks = []
        try:
            try:
                await web.TCPSite(runner, self.host, self.port).start()
            except OSError as exc:
                if not self.port:
                    raise
                # The port is taken (another daemon, a replay): serve anyway, where there is room.
                await web.TCPSite(runner, self.host, 0).start()
                log.warning("dashboard port %d is in use (%s); serving on port %d instead",
                            self.port, exc.strerror, runner.addresses[0][1])
            self.port = runner.addresses[0][1]
            tasks = [asyncio.create_task(self._pump_streams()), asyncio.create_task(self._tick())]
            self._ready.set()
            await self._stopping.wait()
        finally:
            await asyncio.gather(*(page.ws.close(code=1001, message=b"daemon stopping") for page in list(self._pages)),
                                 return_exceptions=True)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await runner.cleanup()
            ctx.destroy(linger=0)

    # -- streams ------------------------------------------------------------------------

    async def _pump_streams(self) -> None:
        while True:
            frames = await self._sub.recv_multipart()
            try:
                topic = frames[0].decode()
                header, _ = api.unpack(frames[1:])
            except (UnicodeDecodeError, ValueError, KeyError):
                continue
            seq, expected = header.get("seq", 0), self._seq.get(topic)
            if expected is not None and seq > expected:
                self.stream_missed += seq - expected
            self._seq[topic] = seq + 1
            t = header.get("time_s", time.time())
            if topic == "rates":
                self.rates.append((t, header.get("rates_hz", {})))
            elif topic == "instruments":
                self.instruments = header.get("readings", {})
                self.instruments_time_s = t
            elif topic == "log":
                self.log_count += 1
                self.log_lines.append({"n": self.log_count, "time_s": t, "level": header.get("level"),
                                       "logger": header.get("logger"), "message": header.get("message")})
            elif topic.startswith("loops."):
                name = topic[len("loops."):]
                n = self.loop_count[name] = self.loop_count.get(name, 0) + 1
                status = {k: v for k, v in header.items() if k not in ("seq", "arrays")}
                self.loops.setdefault(name, collections.deque(maxlen=LOOP_HISTORY)).append((n, t, status))

    def _follow_loops(self, on: bool) -> None:
        """Loop status can be fast (one per period): only take it while someone looks."""
        self._sub.setsockopt(zmq.SUBSCRIBE if on else zmq.UNSUBSCRIBE, b"loops.")

    # -- updates ------------------------------------------------------------------------

    async def _tick(self) -> None:
        next_t = time.monotonic()
        while True:
            next_t += TICK_S
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))
            if time.monotonic() - next_t > 1.0:
                next_t = time.monotonic()  # we were held up; do not burst to catch up
            if not self._pages:
                continue
            try:
                common = await self._poll_daemon()
            except (TimeoutError, api.ApiError) as exc:
                common = {"daemon_error": str(exc)}
            g2s = {}
            views = {p.view for p in self._pages}
            for view in set(self._g2_history) - views:
                del self._g2_history[view]  # nobody looks at it any more
            for view in views:
                try:
                    g2s[view] = await self._poll_g2(view)
                except (TimeoutError, api.ApiError) as exc:
                    g2s[view] = {"error": str(exc)}
            for page in list(self._pages):
                if page.sending is not None and not page.sending.done():
                    page.skipped += 1
                    continue
                update = {"type": "update", **common, "g2": g2s.get(page.view), **self._news_for(page),
                          "skipped": page.skipped}
                page.sending = asyncio.create_task(self._send(page, update))

    async def _send(self, page: _Page, message: dict) -> None:
        try:
            await page.ws.send_str(_dumps(message))
            self.updates_sent += 1
        except (ConnectionError, RuntimeError):
            pass  # the page went away; its handler removes it

    async def _poll_daemon(self) -> dict:
        now = time.time()
        status = await self._control.call("status")
        heralds = await self._control.call("measure.heralds")
        self._events_history.append((now, status.get("events_total", 0)))
        self._herald_history.append((now, heralds.get("total", 0)))
        return {
            "time_s": now, "node": status.get("node"), "uptime_s": status.get("uptime_s"),
            "events_total": status.get("events_total"), "events_hz": _rate(self._events_history),
            "recording": status.get("recording"), "losses": status.get("losses"),
            "acquisition_error": status.get("acquisition_error"), "instrument_state": status.get("instruments"),
            "heralds": {"total": heralds.get("total", 0), "rate_hz": _rate(self._herald_history),
                        "by_outcome": heralds.get("by_outcome")},
            "instruments": self.instruments, "instruments_time_s": self.instruments_time_s,
            "stream_missed": self.stream_missed,
        }

    async def _poll_g2(self, view: tuple[int, int, int, int]) -> dict:
        a, b, bin_ps, range_ps = view
        g2 = await self._control.call("measure.g2", channel_a=a, channel_b=b, bin_ps=bin_ps, range_ps=range_ps,
                                      window_ps=COINCIDENCE_WINDOW_PS)
        counts = np.asarray(g2["counts"])
        history = self._g2_history.setdefault(view, collections.deque(maxlen=int(1.5 * RATE_SPAN_S / TICK_S)))
        history.append((g2["duration_ps"], counts))
        coincidence_hz = None
        if "peak_ps" in g2:
            centres = np.asarray(g2["delays_ps"]) + bin_ps / 2
            window = np.abs(centres - g2["peak_ps"]) <= COINCIDENCE_WINDOW_PS / 2
            old = next((h for h in history if (g2["duration_ps"] - h[0]) * 1e-12 <= RATE_SPAN_S), history[0])
            span_s = (g2["duration_ps"] - old[0]) * 1e-12
            if span_s > 0 and len(old[1]) == len(counts):
                coincidence_hz = float((counts[window].sum() - old[1][window].sum()) / span_s)
        return {"channel_a": a, "channel_b": b, "bin_ps": bin_ps, "range_ps": range_ps,
                "counts": counts.tolist(), "delays_ps": np.asarray(g2["delays_ps"]).tolist(),
                "g2": np.round(g2["g2"], 4).tolist() if "g2" in g2 else None,
                "peak_ps": g2.get("peak_ps"), "car": g2.get("car"), "pairs": g2.get("pairs"),
                "duration_s": g2["duration_ps"] * 1e-12, "coincidence_hz": coincidence_hz,
                "coincidence_window_ps": COINCIDENCE_WINDOW_PS}

    def _news_for(self, page: _Page) -> dict:
        """What this page has not been sent yet: rates samples, log lines, loop points."""
        rates = [r for r in self.rates if r[0] > page.rates_seen]
        if rates:
            page.rates_seen = rates[-1][0]
        log_lines = [line for line in self.log_lines if line["n"] > page.log_seen]
        if log_lines:
            page.log_seen = log_lines[-1]["n"]
        loops = {}
        for name, history in self.loops.items():
            new = [h for h in history if h[0] > page.loop_seen.get(name, 0)]
            if not new:
                loops[name] = {"status": history[-1][2], "trace": []}
                continue
            page.loop_seen[name] = new[-1][0]
            step = max(1, len(new) // LOOP_POINTS_PER_UPDATE)
            trace = [{"time_s": t, **{k: v for k, v in s.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}
                     for _, t, s in new[::step]]
            loops[name] = {"status": new[-1][2], "trace": trace}
        return {"rates": [{"time_s": t, "rates_hz": r} for t, r in rates], "log": log_lines, "loops": loops}

    # -- routes -------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text=_static_text("index.html"), content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kinds = {".js": "application/javascript", ".css": "text/css"}
        kind = next((v for k, v in kinds.items() if name.endswith(k)), None)
        if kind is None or "/" in name or name.startswith("."):
            raise web.HTTPNotFound()
        try:
            text = _static_text(name)
        except FileNotFoundError:
            raise web.HTTPNotFound() from None
        return web.Response(text=text, content_type=kind, headers={"Cache-Control": "no-store"})

    def _info_dict(self) -> dict:
        return {"node": self.node, "started_wall": self.started_wall,
                "channels": [{"index": i, "name": n} for i, n in self.channels.items()],
                "pair": list(self.pair), "token_configured": self.token_configured, "tick_s": TICK_S}

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response(self._info_dict())

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        _check_origin(request)
        # No compression: it would cost the daemon's process CPU for a few kB per update; a short
        # close timeout: a frozen page cannot hold up the daemon's shutdown.
        ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=64 * 1024, compress=False, timeout=2.0)
        await ws.prepare(request)
        page = _Page(ws, request.remote, self.default_view)
        if not self._pages:
            self._follow_loops(True)
        self._pages.add(page)
        # A page starts with what is known: the rates history and the log so far.
        hello = {"type": "hello", **self._info_dict(), "view": list(page.view), "registers": await self._registers()}
        await ws.send_str(_dumps(hello))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    request_ = json.loads(msg.data)
                except json.JSONDecodeError:
                    continue
                if isinstance(request_, dict) and request_.get("type") == "view":
                    error = self._set_view(page, request_)
                    await ws.send_str(_dumps({"type": "view", "view": list(page.view), "error": error}))
        finally:
            self._pages.discard(page)
            if not self._pages:
                self._follow_loops(False)
        return ws

    async def _registers(self) -> list[str]:
        """Register names for the page's register form (none when the daemon cannot say)."""
        if self._register_names is None:
            try:
                self._register_names = [r["name"] for r in await self._control.call("registers.list")]
            except (TimeoutError, api.ApiError):
                return []
        return self._register_names

    def _set_view(self, page: _Page, request: dict) -> str | None:
        try:
            a, b = int(request["channel_a"]), int(request["channel_b"])
            bin_ps, range_ps = int(request["bin_ps"]), int(request["range_ps"])
        except (KeyError, TypeError, ValueError):
            return "channel_a, channel_b, bin_ps and range_ps must be integers"
        if a not in self.channels or b not in self.channels:
            return f"channels must be among {sorted(self.channels)}"
        if bin_ps < 1 or range_ps < bin_ps:
            return "need 1 <= bin_ps <= range_ps"
        if range_ps // bin_ps > MAX_HISTOGRAM_BINS:
            return f"at most {MAX_HISTOGRAM_BINS} bins (range_ps / bin_ps)"
        page.view = (a, b, bin_ps, range_ps)
        return None

    async def _action(self, request: web.Request) -> web.Response:
        _check_origin(request)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return _error(400, "BadRequest", 'send JSON {"method", "params", "token", "user"}')
        method, params = body.get("method"), body.get("params") or {}
        who = f"{_clean_user(body.get('user'))} at {request.remote}"
        if not isinstance(method, str) or not is_action(method):
            return _error(400, "NotAnAction", f"{method!r} is not an action of the dashboard")
        if not isinstance(params, dict):
            return _error(400, "BadParams", "params must be a JSON object")
        what = f"{method} {_dumps(params)}"
        if len(what) > MAX_LOGGED_ACTION:
            what = what[:MAX_LOGGED_ACTION] + "..."
        if not self.authorize(body.get("token")):
            reason = "wrong or missing token" if self.token_configured else "no dashboard token is configured"
            self.log_action(who, what, f"refused: {reason}")
            return _error(403, "Forbidden", f"{method} refused: {reason}")
        try:
            result = await self._control.call(method, **params)
        except (TimeoutError, api.ApiError) as exc:
            self.log_action(who, what, f"failed: {exc}")
            kind = exc.type if isinstance(exc, api.ApiError) else "Timeout"
            return _error(409 if isinstance(exc, api.ApiError) else 504, kind, str(exc))
        self.log_action(who, what, "ok")
        return web.json_response({"result": result}, dumps=_dumps)


def _check_origin(request: web.Request) -> None:
    """Pages from another site may not use the dashboard's socket or actions (browsers send
    Origin on those requests; scripts and tools that send none are not browsers)."""
    origin = request.headers.get("Origin")
    if origin is not None and urllib.parse.urlsplit(origin).netloc != request.host:
        raise web.HTTPForbidden(text=f"cross-origin request from {origin} refused")


def _error(status: int, type_: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": type_, "message": message}}, status=status)


def _rate(history: collections.deque) -> float | None:
    """Per second, from (time, count) pairs: the newest against the one about RATE_SPAN_S older."""
    if len(history) < 2:
        return None
    t1, n1 = history[-1]
    t0, n0 = next((h for h in history if t1 - h[0] <= RATE_SPAN_S), history[0])
    if t1 - t0 <= 0:
        t0, n0 = history[-2]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else None


def _static_text(name: str) -> str:
    return resources.files("qnode.host").joinpath("dashboard_static", name).read_text()
