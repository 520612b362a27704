"""The simulated FPGA: the device side of the link protocol, fed by the simulated lab.

``SimulatedFpga`` answers link requests exactly as the gateware's packet engine does (identify,
register reads and writes from the firmware register map) and turns detector clicks from
:class:`~qnode.sim.source.PhotonSource` into event words. ``FpgaServer`` serves it over TCP, so
the host driver opens ``socket://127.0.0.1:PORT`` and cannot tell it from a board except by the
identify reply (board "sim").

Time runs with the wall clock (``speed`` times real time); with a lab model, on the model's
clock, so event times are lab times (the FPGA's zero is the lab's). Words the host does not take
in time (no client connected, or a client slower than the stream) are dropped at the device and
become in-band LOSS records (reason OUTPUT) per channel, exactly as the gateware's packer
reports back-pressure.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from pathlib import Path

import numpy as np

from qnode.firmware import link
from qnode.firmware.events import (
    LOSS_COUNT_MAX, PROTOCOL_VERSION, Kind, LossReason, StreamDecoder, encode_events, epoch_word,
    header_word,
)
from qnode.firmware.registers import REGISTER_MAP, Access
from qnode.host.config import LabConfig

from .source import PhotonSource
from .twin import COUNTER_NAMES, PATTERNS, UNIT_COUNTER_NAMES, Twin, TwinConfig, edges_from_pulses, timestamp
from .twin_herald import PIN_LATENCY, RULE_OFF, RULE_TWO, HeraldSettings

log = logging.getLogger(__name__)

STEP_PS = 10_000_000_000  # 10 ms of lab time per production step
PULSE_WIDTH_PS = 3_000  # detector output pulses as the FPGA pins see them
SEND_BUFFER_LIMIT = 8 << 20  # bytes queued to a client before the device drops words


def simulation_hash() -> str:
    """Content hash of the simulation code: the simulated FPGA's 'gateware hash'."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class SimulatedFpga:
    """Register file, identity and event stream of the simulated time tagger."""

    def __init__(self, config: LabConfig, *, lab=None, gateware_hash: str | None = None,
                 protocol_version: int = PROTOCOL_VERSION):
        """``lab``: a :class:`~qnode.sim.lab.LabModel` whose bias, temperature and
        interferometer phase drive the detectors (none: the config's nominal physics)."""
        fpga = config.fpga
        self.config = config
        self.bin_ps = fpga.bin_ps
        self.channels = max(ch.index for ch in fpga.channels) + 1
        self.identity = link.Identity(
            protocol_version=protocol_version, channels=self.channels,
            oversampling=fpga.oversampling, bin_ps=self.bin_ps,
            sys_clk_khz=fpga.sys_clk_hz // 1000, gateware_hash=gateware_hash or simulation_hash(),
            board="sim",
        )
        self.registers: dict[int, int] = {}
        self._access: dict[int, Access] = {}
        for reg in REGISTER_MAP:
            for address in reg.addresses():
                self.registers[address] = reg.reset
                self._access[address] = reg.access
        self._set("protocol_version", protocol_version)
        self._set("channel_count", self.channels)
        self._set("bin_ps", self.bin_ps)
        self._set("oversampling", fpga.oversampling)
        self._set("sys_clk_khz", fpga.sys_clk_hz // 1000)
        ghash = int(self.identity.gateware_hash, 16)
        self._set("gateware_hash", ghash & 0xFFFF_FFFF, 0)
        self._set("gateware_hash", ghash >> 32, 1)

        self._set("herald_latency_clocks", PIN_LATENCY)  # this build has the herald unit

        self.lab = lab
        PhotonSource(config).generate(1_000_000)  # load the compiled kernels before serving
        _warm_up_twin(config)
        self.source = PhotonSource(config, phase_rad=lab.phase_rad if lab is not None else None)
        # Every register starts at its reset value, as the gateware's do after power-up: the
        # host writes the config's settings (channels, coincidence patterns, herald rule). A write
        # acts from the next production step on.
        self._carry_bins = np.zeros(0, np.int64)  # sync clicks whose attempts the last step left open
        self._carry_channel = -1
        self._first_attempt = 0  # attempt number (since reset) of the next step's first attempt
        self.pulse_width_bins = max(1, PULSE_WIDTH_PS // self.bin_ps)
        self.word_index = 0  # words handed to the link so far (the EVENTS frame index)
        self.epoch = -1  # epoch the receiver holds
        self.dropped = np.zeros(self.channels, np.int64)  # words not taken, per channel
        self.first_dropped_bins = np.full(self.channels, -1, np.int64)
        self._started = False

    def _set(self, name: str, value: int, index: int = 0) -> None:
        self.registers[REGISTER_MAP.address(name, index)] = value

    def _get(self, name: str, index: int = 0) -> int:
        return self.registers[REGISTER_MAP.address(name, index)]

    @property
    def delay_bins(self) -> dict[int, int]:
        """Per-channel delay in bins, from the ``ts_delay_bins`` registers."""
        return {c: self._get("ts_delay_bins", c) for c in range(self.channels)}

    @property
    def enabled(self) -> dict[int, bool]:
        """Channels whose ``ts_enable`` register is set."""
        return {c: bool(self._get("ts_enable", c)) for c in range(self.channels)}

    # -- requests -------------------------------------------------------------------

    def handle(self, frame: link.Frame) -> bytes:
        """The reply frame to one request frame."""
        T = link.FrameType
        try:
            if frame.type == T.HELLO:
                return link.encode_frame(T.IDENTIFY, frame.seq, self.identity.pack())
            if frame.type == T.REG_READ:
                address, count = link.struct.unpack("<HB", frame.payload)
                values = []
                for a in range(address, address + count):
                    if a not in self.registers:
                        return self._error(frame, link.ErrorCode.BAD_ADDRESS, a)
                    values.append(0 if self._access[a] == Access.WO else self.registers[a])
                return link.encode_frame(T.REG_DATA, frame.seq, link.reg_data_payload(address, values))
            if frame.type == T.REG_WRITE:
                address, value = link.struct.unpack("<HI", frame.payload)
                if address not in self.registers:
                    return self._error(frame, link.ErrorCode.BAD_ADDRESS, address)
                if self._access[address] == Access.RO:
                    return self._error(frame, link.ErrorCode.READ_ONLY, address)
                if self._access[address] == Access.RW:
                    self.registers[address] = value
                elif value & 1:
                    self._clear(address)
                readback = self.registers[address] if self._access[address] == Access.RW else 0
                return link.encode_frame(T.REG_ACK, frame.seq, link.struct.pack("<HI", address, readback))
        except link.struct.error:
            pass
        return self._error(frame, link.ErrorCode.BAD_REQUEST, 0)

    def _clear(self, address: int) -> None:
        """A write of 1 to one of the counters_clear strobes: zero its block's counters."""
        blocks = {"ts_counters_clear": COUNTER_NAMES,
                  "coinc_counters_clear": ("coinc_count",),
                  "herald_counters_clear": tuple(n for n in UNIT_COUNTER_NAMES if n.startswith("herald_"))}
        for strobe, names in blocks.items():
            if address == REGISTER_MAP.address(strobe):
                for name in names:
                    for c in range(REGISTER_MAP[name].count):
                        self.registers[REGISTER_MAP.address(name, c)] = 0

    def _error(self, frame: link.Frame, code: link.ErrorCode, address: int) -> bytes:
        return link.encode_frame(link.FrameType.ERROR, frame.seq, link.error_payload(frame.type, code, address))

    # -- the event stream ---------------------------------------------------------------

    def herald_settings(self) -> HeraldSettings:
        """The herald unit's registers as they stand now."""
        return HeraldSettings(
            rule=self._get("herald_rule"), sync_channel=self._get("herald_sync_channel"),
            detector_mask=self._get("herald_detector_mask"), veto_mask=self._get("herald_veto_mask"),
            offset_bins=self._get("herald_offset_bins"), length_bins=self._get("herald_length_bins"),
            late_bins=self._get("herald_late_bins"), pin_clocks=self._get("herald_pin_clocks"))

    def twin_config(self) -> TwinConfig:
        """The twin's build parameters and the timestamper, coincidence and herald registers as
        they stand now."""
        n = self.channels
        return TwinConfig(
            channels=n, oversampling=self.config.fpga.oversampling, sys_clk_hz=self.config.fpga.sys_clk_hz,
            enable=[self._get("ts_enable", c) for c in range(n)],
            edge=[self._get("ts_edge", c) for c in range(n)],
            delay_bins=[self._get("ts_delay_bins", c) for c in range(n)],
            dead_time_bins=[self._get("ts_dead_time_bins", c) for c in range(n)],
            coinc_mask=[self._get("coinc_mask", p) for p in range(PATTERNS)],
            coinc_window_bins=[self._get("coinc_window_bins", p) for p in range(PATTERNS)],
            coinc_min_fold=[self._get("coinc_min_fold", p) for p in range(PATTERNS)],
            coinc_emit=self._get("coinc_emit"),
            herald=self.herald_settings(),
        )

    def produce(self, duration_ps: int) -> np.ndarray:
        """Event words for the next ``duration_ps`` of lab time, from the gateware's twin.

        Each step runs the twin from its first click (the pipeline drains at the end of the
        step), so dead time does not carry across steps and, when channels have different
        delays, a tag at a step boundary may trail one from the previous step by up to the
        delay difference: documented limits of the simulated FPGA, not of the gateware.

        Herald attempts do carry across steps: an attempt whose window (49 us after its sync in
        the reference lab) is not complete by the step's last click is decided in the next step,
        whose run starts with that sync again (its TAG is not sent twice, its attempt not counted
        twice), and attempts are numbered from reset, as the gateware numbers them.
        """
        if self.lab is not None:
            self.lab.apply_to(self.source)
        clicks = self.source.generate(duration_ps)
        if len(clicks) == 0:
            return np.empty(0, np.uint64)
        cfg = self.twin_config()
        h = cfg.herald
        bins = clicks["time_ps"] // self.bin_ps
        chans = clicks["channel"]
        first_new_bin = int(bins[0])
        if len(self._carry_bins) and self._carry_channel == h.sync_channel:
            bins = np.concatenate([self._carry_bins, bins])
            chans = np.concatenate([np.full(len(self._carry_bins), h.sync_channel, chans.dtype), chans])
        cfg.start_now = int(bins[0]) // cfg.oversampling
        edges = edges_from_pulses(bins, chans, self.pulse_width_bins, cfg)
        result = Twin(cfg).run(edges=edges)
        words = result.words
        counters = {name: np.array(v, np.int64) for name, v in result.counters.items()}
        counters.update({name: np.array(v, np.int64) for name, v in result.unit_counters.items()})
        words = self._carry_attempts(cfg, edges, bins, chans, first_new_bin, result, words, counters)
        for name, values in counters.items():
            for c, v in enumerate(values):
                address = REGISTER_MAP.address(name, c)
                self.registers[address] = (self.registers[address] + int(v)) & 0xFFFF_FFFF
        return words[1:] if len(words) and (int(words[0]) >> 60) == Kind.HEADER else words

    def _carry_attempts(self, cfg: TwinConfig, edges, bins, chans, first_new_bin: int, result, words,
                        counters) -> np.ndarray:
        """Attempts across steps: drop what the run repeated (the carried syncs' TAGs and
        attempts), drop the heralds of attempts left open (their windows reach past the step's
        last click: decided next step), number attempts from reset, and carry the open ones."""
        h = cfg.herald
        sync = h.sync_channel
        only_sync = [e if c == sync else e[:0] for c, e in enumerate(edges)]
        sync_entries = timestamp(only_sync, cfg)
        sync_edges = sync_entries.time[sync_entries.channel(sync)] - cfg.delay_bins[sync]
        repeated = int(np.count_nonzero(sync_edges < first_new_bin))  # the carried syncs, run again
        deciding = h.rule != RULE_OFF and h.length_bins > 0
        if deciding:
            watched = [c for c in range(cfg.channels) if ((h.detector_mask | h.veto_mask) >> c) & 1]
            d_min = min((cfg.delay_bins[c] for c in watched), default=0)
            span = h.late_bins + h.length_bins if h.rule == RULE_TWO else h.length_bins
            # an attempt is complete once every click up to its last window bin is in: clicks
            # up to the last one of this step are (the next step's come later)
            last_seen = int(bins[-1]) + d_min
            open_from = int(np.count_nonzero(sync_edges + cfg.delay_bins[sync] + h.offset_bins + span - 1
                                             <= last_seen))
        else:
            open_from = len(sync_edges)
        open_from = max(open_from, repeated)  # an attempt carried before is decided now at the latest

        kinds = words >> np.uint64(60)
        keep = np.ones(len(words), bool)
        if repeated:
            is_sync_tag = (kinds == Kind.TAG) & (((words >> np.uint64(54)) & np.uint64(63)) == sync)
            keep[np.flatnonzero(is_sync_tag)[:repeated]] = False
            counters["ts_tag_count"][sync] -= repeated
            if "herald_attempt_count" in counters:
                counters["herald_attempt_count"][0] -= repeated
        res = result.heralds
        if res is not None:
            herald_at = np.flatnonzero(kinds == Kind.HERALD)
            if len(herald_at) == len(res.attempt_index):  # every herald reached the stream
                done = res.attempt_index < open_from
                keep[herald_at[~done]] = False
                mask = np.uint64((1 << 18) - 1) << np.uint64(32)
                number = ((self._first_attempt + res.attempt_index[done]) & ((1 << 18) - 1)).astype(np.uint64)
                words = words.copy()
                words[herald_at[done]] = (words[herald_at[done]] & ~mask) | (number << np.uint64(32))
                counters["herald_success_count"] = np.bincount(res.outcome[done] - 1, minlength=4)[:4]
        self._first_attempt += open_from
        self._carry_bins = np.sort(bins[chans == sync])[-(len(sync_edges) - open_from):] \
            if len(sync_edges) > open_from else np.zeros(0, np.int64)
        self._carry_channel = sync
        return words[keep]

    def drop(self, words: np.ndarray) -> None:
        """Words the link could not take: counted per channel, to be sent as LOSS records."""
        if len(words) == 0:
            return
        decoder = StreamDecoder(bin_ps=self.bin_ps, channels=self.channels)
        events = decoder.decode(words)  # each step's words decode on their own (epoch 0 start)
        counts = np.where(events["kind"] == Kind.LOSS, events["aux"] & LOSS_COUNT_MAX, 1)
        per_channel = np.bincount(events["channel"], weights=counts, minlength=self.channels)
        bins = events["time_ps"] // self.bin_ps
        for c in np.flatnonzero(per_channel):
            if self.first_dropped_bins[c] < 0:
                self.first_dropped_bins[c] = bins[np.argmax(events["channel"] == c)]
        self.dropped += per_channel.astype(np.int64)

    def with_losses(self, words: np.ndarray) -> np.ndarray:
        """The words the link carries: a HEADER first of all, then LOSS records (reason OUTPUT)
        for what was dropped since the last call, then ``words``."""
        kinds, chans, aux, times = [], [], [], []
        for c in np.flatnonzero(self.dropped):
            left = int(self.dropped[c])
            while left:  # a loss record carries at most LOSS_COUNT_MAX events
                n = min(left, LOSS_COUNT_MAX)
                kinds.append(Kind.LOSS)
                chans.append(c)
                aux.append((LossReason.OUTPUT << 18) | n)
                times.append(self.first_dropped_bins[c])
                left -= n
        self.dropped[:] = 0
        self.first_dropped_bins[:] = -1
        parts = []
        if not self._started:
            self._started = True
            parts.append(np.array([header_word(self.bin_ps, self.channels)], np.uint64))
            self.epoch = 0
        if kinds:
            loss, self.epoch = encode_events(np.array(kinds, np.uint8), np.array(chans, np.uint8),
                                             np.array(aux, np.uint32), np.array(times, np.int64),
                                             epoch=self.epoch)
            parts.append(loss)
        if len(words):
            # A step's words assume the receiver holds epoch 0 and start with an EPOCH otherwise.
            if self.epoch not in (0, -1) and (int(words[0]) >> 60) != Kind.EPOCH:
                parts.append(np.array([epoch_word(0)], np.uint64))
            parts.append(words)
            self.epoch = _last_epoch(words, 0)
        return np.concatenate(parts).astype(np.uint64) if parts else np.empty(0, np.uint64)

    def frames(self, words: np.ndarray, epoch_before: int) -> list[bytes]:
        """EVENTS frames for ``words``; ``epoch_before`` is the epoch in force before them."""
        out = []
        epoch = max(epoch_before, 0)
        for start in range(0, len(words), link.MAX_EVENT_WORDS):
            chunk = words[start : start + link.MAX_EVENT_WORDS]
            out.append(link.encode_frame(link.FrameType.EVENTS, 0,
                                         link.events_payload(self.word_index, epoch, chunk)))
            self.word_index += len(chunk)
            epoch = _last_epoch(chunk, epoch)
        return out


def _warm_up_twin(config: LabConfig) -> None:
    """Compile (or load from numba's cache) the twin's kernels, the coincidence and herald
    units' included, before serving: a first production step that compiles them holds the
    link's replies for tens of seconds on a fresh checkout of a busy machine."""
    cfg = TwinConfig(channels=max(ch.index for ch in config.fpga.channels) + 1,
                     oversampling=config.fpga.oversampling, sys_clk_hz=config.fpga.sys_clk_hz,
                     coinc_mask=[0b11], coinc_window_bins=[40], coinc_emit=1,
                     herald=HeraldSettings(detector_mask=0b10, offset_bins=34, length_bins=8))
    bins = np.arange(0, 4000, 37, dtype=np.int64)
    Twin(cfg).run(edges=edges_from_pulses(bins, (bins // 37 % 2).astype(np.uint8), 1, cfg))


def _last_epoch(words: np.ndarray, epoch: int) -> int:
    kinds = words >> np.uint64(60)
    epochs = np.flatnonzero(kinds == Kind.EPOCH)
    headers = np.flatnonzero(kinds == Kind.HEADER)
    if len(headers) and (not len(epochs) or headers[-1] > epochs[-1]):
        return 0
    if len(epochs):
        return int(words[epochs[-1]] & np.uint64((1 << 60) - 1))
    return epoch


class FpgaServer:
    """Serves a SimulatedFpga over TCP on 127.0.0.1, one host at a time (like a UART)."""

    def __init__(self, device: SimulatedFpga, host: str = "127.0.0.1", port: int = 0, speed: float = 1.0):
        self.device = device
        self.host, self.port = host, port
        self.speed = speed  # lab seconds per wall second
        self._writer: asyncio.StreamWriter | None = None
        self._server: asyncio.base_events.Server | None = None
        self.frames_sent = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._producer = asyncio.create_task(self._produce())
        return self.port

    async def stop(self) -> None:
        self._producer.cancel()
        if self._writer is not None:
            self._writer.close()
        self._server.close()
        await self._server.wait_closed()

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:
            log.warning("second host refused: the simulated FPGA serves one link at a time")
            writer.close()
            return
        self._writer = writer
        parser = link.FrameParser()
        try:
            while data := await reader.read(65536):
                for frame in parser.feed(data):
                    writer.write(self.device.handle(frame))
        except (ConnectionError, OSError):
            pass
        finally:
            self._writer = None
            writer.close()

    async def _produce(self) -> None:
        lab = self.device.lab
        if lab is not None:
            # One clock zero for the events and the lab model: the stream is stamped in the
            # model's time, on which the stretcher's steps (and every instrument) act, so a
            # command at lab time t shows in the events after t, however long the start took.
            def clock_ps() -> int:
                return int(lab.now_s() * 1e12)
            lab_ps = self.device.source.now_ps = clock_ps()
        else:
            t0 = time.monotonic()

            def clock_ps() -> int:
                return int((time.monotonic() - t0) * self.speed * 1e12)
            lab_ps = 0
        while True:
            await asyncio.sleep(STEP_PS * 1e-12 / self.speed)
            target_ps = clock_ps()
            while lab_ps < target_ps:
                step = min(STEP_PS, target_ps - lab_ps)
                self._emit(step)
                lab_ps += step
                await asyncio.sleep(0)

    def _emit(self, step_ps: int) -> None:
        words = self.device.produce(step_ps)
        writer = self._writer
        if writer is None or writer.is_closing() or writer.transport.get_write_buffer_size() > SEND_BUFFER_LIMIT:
            self.device.drop(words)
            return
        epoch_before = self.device.epoch
        for frame in self.device.frames(self.device.with_losses(words), epoch_before):
            if writer.is_closing():  # the host went away mid-step: the rest is lost on the link
                break
            writer.write(frame)
            self.frames_sent += 1


class FpgaServerThread:
    """An FpgaServer on its own event loop in a background thread (daemon, tests, demo)."""

    # A production step runs on the loop; the first one compiles the twin's kernels (numba,
    # cached afterwards), which on a fresh checkout of a busy machine takes tens of seconds.
    # Starting and stopping wait that out rather than fail.
    WAIT_S = 120.0

    def __init__(self, device: SimulatedFpga, port: int = 0, speed: float = 1.0):
        self.loop = asyncio.new_event_loop()
        self.server = FpgaServer(device, port=port, speed=speed)
        self.thread = threading.Thread(target=self.loop.run_forever, name="sim-fpga", daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(self.WAIT_S)

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def stop(self) -> None:
        async def shutdown():
            await self.server.stop()
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(self.WAIT_S)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(self.WAIT_S)
        self.loop.close()
