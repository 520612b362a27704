"""Host driver for the qnode time tagger (the gateware, or the simulated FPGA) over its link.

Opens any pyserial URL: ``/dev/ttyUSB0`` (the ULX3S FTDI UART), ``socket://127.0.0.1:PORT``
(the simulated FPGA), ``loop://`` (tests). Opening identifies the device and refuses one that
speaks another protocol version. Registers are read and written by their names in the firmware
register map, or through typed methods with units in their names (``set_delay_ps``,
``set_dead_time_ps``, ``set_edge``, ``set_enabled``, ``apply_channels``,
``set_coincidence_pattern``, ``set_herald_rule``, the counters); ``apply_config`` writes a lab
config's whole ``[fpga]`` (channels, coincidence patterns, herald rule). ``read_events`` returns numpy
batches of decoded events; words lost on the link come back as LOSS records (reason LINK,
channel ``LINK_LOSS_CHANNEL``) with their exact count.

Every call has a finite timeout. A broken link (device unplugged, server restarted) is reopened
with capped backoff on the next call; the words that went missing meanwhile are counted.
"""

from __future__ import annotations

import logging
import select
import time
from dataclasses import dataclass

import numpy as np
import serial

from qnode.firmware import link
from qnode.firmware.events import (
    EVENT_DTYPE, LOSS_COUNT_MAX, MAX_CHANNELS, PROTOCOL_VERSION, Kind, LossReason, ProtocolVersionError,
    StreamDecoder,
)
from qnode.firmware.registers import REGISTER_MAP

log = logging.getLogger(__name__)

LINK_LOSS_CHANNEL = MAX_CHANNELS - 1  # link losses belong to no one input: channel 63
READ_CHUNK = 1 << 16
BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


EDGES = ("rising", "falling")  # ts_edge values
HERALD_RULES = ("off", "single_click", "two_click")  # herald_rule values
CHANNEL_COUNTERS = {"tags": "ts_tag_count", "same_clock_lost": "ts_same_clock_lost",
                    "fifo_lost": "ts_fifo_lost", "output_lost": "ts_output_lost"}


@dataclass(frozen=True)
class CoincidenceSetting:
    channels: list[int]
    window_ps: int
    min_fold: int  # 0: all of the channels
    emit: bool  # each counted window also streams as a COINCIDENCE word


@dataclass(frozen=True)
class HeraldSetting:
    rule: str  # one of HERALD_RULES
    sync_channel: int
    detectors: list[int]  # the lowest one's click is psi+
    veto: list[int]
    offset_ps: int  # window start after the sync tag
    length_ps: int
    late_ps: int  # two-click rule: late window start after the early one
    pin_clocks: int


@dataclass
class LinkStats:
    frames: int = 0
    event_frames: int = 0
    words: int = 0
    lost_words: int = 0  # counted from gaps in the EVENTS word index
    crc_errors: int = 0
    bytes_skipped: int = 0
    reconnects: int = 0
    stream_restarts: int = 0  # the device started a new stream (reset, restarted server)


class TimeTagger:
    """The time tagger behind a link URL."""

    def __init__(self, url: str, *, baud: int = 3_000_000, timeout_s: float = 1.0, name: str = "fpga"):
        self.url = url
        self.baud = baud
        self.timeout_s = timeout_s
        self.name = name
        self.identity: link.Identity | None = None
        self.stats = LinkStats()
        self.suspect = False
        self._port: serial.SerialBase | None = None
        self._parser = link.FrameParser()
        self._seq = 0
        self._replies: dict[int, link.Frame] = {}
        self._batches: list[np.ndarray] = []
        self._early_frames: list[link.Frame] = []
        self._decoder: StreamDecoder | None = None
        self._next_index: int | None = None
        self._last_time_ps = 0
        self._time_offset_ps = 0  # keeps time monotonic across device restarts

    # -- connection -------------------------------------------------------------------

    def open(self) -> link.Identity:
        """Connect and identify; raises ProtocolVersionError on a version mismatch."""
        try:
            # timeout=0: reads return what has arrived; _pump waits with select instead.
            self._port = serial.serial_for_url(self.url, baudrate=self.baud, timeout=0,
                                               write_timeout=self.timeout_s)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise link.LinkError(f"{self.name}: cannot open {self.url}: {exc}") from None
        self._parser = link.FrameParser()
        identity = link.Identity.unpack(self._request(link.FrameType.HELLO, b"").payload)
        if identity.protocol_version != PROTOCOL_VERSION:
            self.close()
            raise ProtocolVersionError(identity.protocol_version)
        if self.identity is not None and identity.gateware_hash != self.identity.gateware_hash:
            log.warning("%s: gateware changed from %s to %s", self.name,
                        self.identity.gateware_hash, identity.gateware_hash)
        self.identity = identity
        if self._decoder is None:
            self._decoder = StreamDecoder(bin_ps=identity.bin_ps, channels=identity.channels)
        self.suspect = False
        early, self._early_frames = self._early_frames, []
        for frame in early:  # events that came in while we asked who the device is
            self._take_events(frame)
        return identity

    def close(self) -> None:
        if self._port is not None:
            try:
                self._port.close()
            except (serial.SerialException, OSError):
                pass
            self._port = None

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def bin_ps(self) -> int:
        return self.identity.bin_ps

    def reconnect(self) -> link.Identity:
        """Reopen the link with capped backoff (total under ~4 s), then identify again."""
        self.close()
        self.stats.reconnects += 1
        last: Exception | None = None
        for delay in BACKOFF_S:
            time.sleep(delay)
            try:
                return self.open()
            except link.LinkError as exc:
                last = exc
                self.close()
        raise link.LinkError(f"{self.name}: {self.url} did not come back: {last}")

    # -- registers ----------------------------------------------------------------------

    def read_register(self, name: str, index: int = 0) -> int:
        address = REGISTER_MAP.address(name, index)
        reply = self._request(link.FrameType.REG_READ, link.reg_read_payload(address, 1))
        _, values = link.parse_reg_data(reply.payload)
        return values[0]

    def write_register(self, name: str, value: int, index: int = 0) -> int:
        """Write, and return the value the device reads back."""
        reg = REGISTER_MAP[name]
        if not 0 <= value <= reg.mask:
            raise ValueError(f"{name}[{index}] = {value} does not fit its {reg.width} bits")
        address = REGISTER_MAP.address(name, index)
        reply = self._request(link.FrameType.REG_WRITE, link.reg_write_payload(address, value))
        return link.struct.unpack("<HI", reply.payload)[1]

    # -- typed settings: units in the names, the register map underneath -----------------
    #
    # Each setter checks its value against the register before anything is sent (ValueError
    # naming the range in the caller's units), writes, and returns what the device reads back,
    # converted to the same units (a time rounds to whole bins: bin_ps each).

    def _channel(self, channel: int) -> int:
        channels = self.identity.channels if self.identity is not None else REGISTER_MAP["ts_enable"].count
        if not 0 <= channel < channels:
            raise ValueError(f"{self.name}: channel {channel} outside 0..{channels - 1}")
        return channel

    def _bins(self, register: str, value_ps: float, what: str) -> int:
        bins = round(value_ps / self.bin_ps)
        top = REGISTER_MAP[register].mask
        if not 0 <= bins <= top:
            raise ValueError(f"{self.name}: {what} {value_ps} ps outside 0..{top * self.bin_ps} ps "
                             f"({register}: {REGISTER_MAP[register].width} bits of {self.bin_ps} ps); nothing was sent")
        return bins

    def set_delay_ps(self, channel: int, delay_ps: float) -> int:
        """Delay added to every timestamp of ``channel``; returns the delay applied, in ps."""
        bins = self._bins("ts_delay_bins", delay_ps, "delay")
        return self.write_register("ts_delay_bins", bins, self._channel(channel)) * self.bin_ps

    def delay_ps(self, channel: int) -> int:
        return self.read_register("ts_delay_bins", self._channel(channel)) * self.bin_ps

    def set_dead_time_ps(self, channel: int, dead_time_ps: float) -> int:
        """Hold-off after each recorded edge of ``channel``; returns the dead time applied, in ps."""
        bins = self._bins("ts_dead_time_bins", dead_time_ps, "dead time")
        return self.write_register("ts_dead_time_bins", bins, self._channel(channel)) * self.bin_ps

    def dead_time_ps(self, channel: int) -> int:
        return self.read_register("ts_dead_time_bins", self._channel(channel)) * self.bin_ps

    def set_edge(self, channel: int, edge: str) -> str:
        """Which edge of ``channel`` is an event: "rising" or "falling"."""
        if edge not in EDGES:
            raise ValueError(f"{self.name}: edge {edge!r} is not one of {', '.join(EDGES)}; nothing was sent")
        return EDGES[self.write_register("ts_edge", EDGES.index(edge), self._channel(channel))]

    def edge(self, channel: int) -> str:
        return EDGES[self.read_register("ts_edge", self._channel(channel))]

    def set_enabled(self, channel: int, enabled: bool) -> bool:
        return bool(self.write_register("ts_enable", int(bool(enabled)), self._channel(channel)))

    def enabled(self, channel: int) -> bool:
        return bool(self.read_register("ts_enable", self._channel(channel)))

    def apply_channels(self, channels) -> dict[int, dict]:
        """Write each channel of a lab config's ``[[fpga.channels]]`` (delay_ps, dead_time_ps,
        edge, enabled); returns what the device reads back, per channel index."""
        applied = {}
        for ch in channels:
            applied[ch.index] = {"delay_ps": self.set_delay_ps(ch.index, ch.delay_ps),
                                 "dead_time_ps": self.set_dead_time_ps(ch.index, ch.dead_time_ps),
                                 "edge": self.set_edge(ch.index, ch.edge),
                                 "enabled": self.set_enabled(ch.index, ch.enabled)}
        return applied

    def apply_config(self, fpga) -> dict:
        """Write a lab config's ``[fpga]`` settings: every channel's input switched off first (no
        tags flow while the units change, as docs/gateware.md asks), the coincidence patterns
        (the ones the config does not name switched off), the herald rule, then each channel
        (delay, dead time, edge, enabled), and the counters zeroed. Times round to whole bins
        (nearest, ties to even). Returns what the device reads back."""
        herald = fpga.herald
        channels = fpga.herald_channels()
        patterns = [(p, fpga.coincidence_channels(p), c) for p, c in enumerate(fpga.coincidence)]
        for ch in fpga.channels:
            self.set_enabled(ch.index, False)
        self.write_register("coinc_emit", 0)
        coincidence = []
        for p, chans, pattern in patterns:
            coincidence.append(self.set_coincidence_pattern(p, chans, pattern.window_ps, min_fold=pattern.min_fold,
                                                            emit=pattern.emit))
        for p in range(len(patterns), REGISTER_MAP["coinc_mask"].count):
            self.disable_coincidence_pattern(p)
        applied_herald = self.set_herald_rule(
            herald.rule, sync_channel=channels["sync_channel"], detectors=channels["detectors"],
            veto=channels["veto"], offset_ps=herald.offset_ps, length_ps=herald.length_ps,
            late_ps=herald.late_ps, pin_clocks=fpga.pin_clocks())
        applied_channels = self.apply_channels(fpga.channels)
        self.clear_counters()
        return {"channels": applied_channels, "coincidence": coincidence, "herald": applied_herald}

    def channel_counters(self) -> dict[str, list[int]]:
        """Per channel: tags recorded and events lost (same clock, channel FIFO, output); wrap at 2^32."""
        n = self.identity.channels
        return {name: self._read_block(register, n) for name, register in CHANNEL_COUNTERS.items()}

    def clear_counters(self) -> None:
        """Zero the timestamper's, the coincidence unit's and the herald unit's counters."""
        for register in ("ts_counters_clear", "coinc_counters_clear", "herald_counters_clear"):
            self.write_register(register, 1)

    def set_coincidence_pattern(self, pattern: int, channels, window_ps: float, *, min_fold: int = 0,
                                emit: bool = False) -> CoincidenceSetting:
        """Pattern ``pattern`` counts windows of ``window_ps`` in which ``min_fold`` distinct
        ``channels`` click (0: all of them); ``emit`` also streams each as a COINCIDENCE word."""
        pattern = self._pattern(pattern)
        channels = sorted({self._channel(c) for c in channels})
        if not channels:
            raise ValueError(f"{self.name}: coincidence pattern {pattern} needs at least one channel "
                             "(disable_coincidence_pattern turns it off); nothing was sent")
        if not 0 <= min_fold <= len(channels):
            raise ValueError(f"{self.name}: min_fold {min_fold} outside 0..{len(channels)} for channels "
                             f"{channels}; nothing was sent")
        window_bins = self._bins("coinc_window_bins", window_ps, "coincidence window")
        emit_bits = self.read_register("coinc_emit")
        emit_bits = emit_bits | (1 << pattern) if emit else emit_bits & ~(1 << pattern)
        self.write_register("coinc_mask", 0, pattern)  # off while it changes: no half-set pattern counts
        self.write_register("coinc_window_bins", window_bins, pattern)
        self.write_register("coinc_min_fold", min_fold, pattern)
        self.write_register("coinc_emit", emit_bits)
        self.write_register("coinc_mask", sum(1 << c for c in channels), pattern)
        return self.coincidence_pattern(pattern)

    def disable_coincidence_pattern(self, pattern: int) -> None:
        self.write_register("coinc_mask", 0, self._pattern(pattern))

    def coincidence_pattern(self, pattern: int) -> CoincidenceSetting:
        pattern = self._pattern(pattern)
        mask = self.read_register("coinc_mask", pattern)
        return CoincidenceSetting(
            channels=[c for c in range(REGISTER_MAP["coinc_mask"].width) if mask >> c & 1],
            window_ps=self.read_register("coinc_window_bins", pattern) * self.bin_ps,
            min_fold=self.read_register("coinc_min_fold", pattern),
            emit=bool(self.read_register("coinc_emit") >> pattern & 1))

    def coincidence_counts(self) -> list[int]:
        """Windows counted by each pattern (wraps at 2^32)."""
        return self._read_block("coinc_count", REGISTER_MAP["coinc_count"].count)

    def _pattern(self, pattern: int) -> int:
        count = REGISTER_MAP["coinc_mask"].count
        if not 0 <= pattern < count:
            raise ValueError(f"{self.name}: coincidence pattern {pattern} outside 0..{count - 1}")
        return pattern

    def set_herald_rule(self, rule: str, *, sync_channel: int = 0, detectors=(), veto=(),
                        offset_ps: float = 0, length_ps: float = 0, late_ps: float = 0,
                        pin_clocks: int = 1) -> HeraldSetting:
        """The herald unit's rule ("off", "single_click", "two_click"), the channel whose tags
        start attempts, the heralding detectors, veto channels, and the window(s) after the sync
        tag; every value is checked before the first write."""
        if rule not in HERALD_RULES:
            raise ValueError(f"{self.name}: herald rule {rule!r} is not one of {', '.join(HERALD_RULES)}; "
                             "nothing was sent")
        sync_channel = self._channel(sync_channel)
        if sync_channel > REGISTER_MAP["herald_sync_channel"].mask:
            raise ValueError(f"{self.name}: herald sync channel {sync_channel} does not fit its register")
        detectors = sorted({self._channel(c) for c in detectors})
        veto = sorted({self._channel(c) for c in veto})
        if rule != "off" and not detectors:
            raise ValueError(f"{self.name}: herald rule {rule!r} needs at least one detector; nothing was sent")
        if not 0 <= pin_clocks <= REGISTER_MAP["herald_pin_clocks"].mask:
            raise ValueError(f"{self.name}: herald pin_clocks {pin_clocks} outside "
                             f"0..{REGISTER_MAP['herald_pin_clocks'].mask}; nothing was sent")
        values = {
            "herald_sync_channel": sync_channel,
            "herald_detector_mask": sum(1 << c for c in detectors),
            "herald_veto_mask": sum(1 << c for c in veto),
            "herald_offset_bins": self._bins("herald_offset_bins", offset_ps, "herald window offset"),
            "herald_length_bins": self._bins("herald_length_bins", length_ps, "herald window length"),
            "herald_late_bins": self._bins("herald_late_bins", late_ps, "herald late-window offset"),
            "herald_pin_clocks": pin_clocks,
        }
        self.write_register("herald_rule", 0)  # off while the windows change
        for register, value in values.items():
            self.write_register(register, value)
        self.write_register("herald_rule", HERALD_RULES.index(rule))
        return self.herald_rule()

    def herald_rule(self) -> HeraldSetting:
        def channels(mask):
            return [c for c in range(REGISTER_MAP["herald_detector_mask"].width) if mask >> c & 1]

        rule = self.read_register("herald_rule")
        return HeraldSetting(
            rule=HERALD_RULES[rule] if rule < len(HERALD_RULES) else str(rule),
            sync_channel=self.read_register("herald_sync_channel"),
            detectors=channels(self.read_register("herald_detector_mask")),
            veto=channels(self.read_register("herald_veto_mask")),
            offset_ps=self.read_register("herald_offset_bins") * self.bin_ps,
            length_ps=self.read_register("herald_length_bins") * self.bin_ps,
            late_ps=self.read_register("herald_late_bins") * self.bin_ps,
            pin_clocks=self.read_register("herald_pin_clocks"))

    def herald_counts(self) -> dict[str, int | list[int]]:
        """Attempts, heralds per outcome (psi+, psi-, two-click same, two-click different), vetoed,
        late and lost attempts (wrap at 2^32), and the unit's fixed latency in clocks."""
        return {"attempts": self.read_register("herald_attempt_count"),
                "success": self._read_block("herald_success_count", REGISTER_MAP["herald_success_count"].count),
                "vetoed": self.read_register("herald_veto_count"),
                "late": self.read_register("herald_late_count"),
                "lost": self.read_register("herald_lost_count"),
                "latency_clocks": self.read_register("herald_latency_clocks")}

    def _read_block(self, name: str, count: int) -> list[int]:
        """``count`` consecutive registers of one array in one REG_READ."""
        reply = self._request(link.FrameType.REG_READ, link.reg_read_payload(REGISTER_MAP.address(name), count))
        return link.parse_reg_data(reply.payload)[1]

    # -- events -------------------------------------------------------------------------

    def read_events(self, timeout_s: float = 0.1) -> np.ndarray:
        """Decoded events that arrived within ``timeout_s`` (possibly none), in stream order."""
        deadline = time.monotonic() + timeout_s
        while not self._batches and time.monotonic() < deadline:
            self._pump()
        for _ in range(64):  # then take what else has arrived, up to 64 reads (4 MiB)
            if not self._pump(block=False):
                break
        batches, self._batches = self._batches, []
        if not batches:
            return np.empty(0, EVENT_DTYPE)
        return batches[0] if len(batches) == 1 else np.concatenate(batches)

    @property
    def decode_stats(self):
        return self._decoder.stats if self._decoder else None

    # -- internals ----------------------------------------------------------------------

    def _request(self, frame_type: int, payload: bytes) -> link.Frame:
        self._seq = (self._seq + 1) & 0xFF
        seq = self._seq
        self._write(link.encode_frame(frame_type, seq, payload))
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            self._pump()
            reply = self._replies.pop(seq, None)
            if reply is None:
                continue
            if reply.type == link.FrameType.ERROR:
                req, code, address = link.struct.unpack("<BBH", reply.payload)
                raise link.LinkError(
                    f"{self.name}: {link.FrameType(frame_type).name} at 0x{address:04x} refused: "
                    f"{link.ErrorCode(code).name}")
            return reply
        self.suspect = True
        raise link.LinkError(
            f"{self.name}: no reply to {link.FrameType(frame_type).name} from {self.url} within "
            f"{self.timeout_s} s")

    def _write(self, data: bytes) -> None:
        if self._port is None:
            self.reconnect()
        try:
            self._port.write(data)
        except (serial.SerialException, OSError) as exc:
            log.warning("%s: write failed (%s), reconnecting", self.name, exc)
            self.reconnect()
            self._port.write(data)

    def _pump(self, block: bool = True) -> int:
        """Read what the link has and route it: replies to waiters, events to batches.
        Returns the number of bytes read."""
        if self._port is None:
            self.reconnect()
        try:
            if block:
                self._wait_readable(0.01)
            data = self._port.read(READ_CHUNK)
        except (serial.SerialException, OSError) as exc:
            log.warning("%s: link broke (%s), reconnecting", self.name, exc)
            self.suspect = True
            self.reconnect()
            return 0
        if not data:
            return 0
        before = self._parser.stats
        frames = self._parser.feed(data)
        self.stats.crc_errors = before.crc_errors
        self.stats.bytes_skipped = before.bytes_skipped
        for frame in frames:
            self.stats.frames += 1
            if frame.type == link.FrameType.EVENTS:
                if self._decoder is None:
                    self._early_frames.append(frame)
                else:
                    self._take_events(frame)
            else:
                self._replies[frame.seq] = frame
        return len(data)

    def _wait_readable(self, timeout_s: float) -> None:
        try:
            fd = self._port.fileno()
        except (AttributeError, OSError, serial.SerialException):
            fd = None  # loop:// and other in-memory ports: poll
        if fd is None:
            if not self._port.in_waiting:
                time.sleep(min(timeout_s, 0.001))
            return
        select.select([fd], [], [], timeout_s)

    def _take_events(self, frame: link.Frame) -> None:
        try:
            index, epoch, words = link.parse_events(frame.payload)
        except link.LinkError:
            self.stats.crc_errors += 1
            return
        self.stats.event_frames += 1
        self.stats.words += len(words)
        out = []
        decoder = self._decoder
        if self._next_index is not None and index != self._next_index:
            gap = (index - self._next_index) & 0xFFFF_FFFF
            if gap < 1 << 31:  # words went missing on the link
                self.stats.lost_words += gap
                out.append(self._link_loss(gap))
            else:  # the index went back: the device started a new stream
                self.stats.stream_restarts += 1
                self._time_offset_ps = self._last_time_ps + decoder.bin_ps
                out.append(self._link_loss(0))
        self._next_index = (index + len(words)) & 0xFFFF_FFFF
        decoder.epoch = epoch
        events = decoder.decode(words)
        if self._time_offset_ps:
            events["time_ps"] += self._time_offset_ps
        if len(events):
            self._last_time_ps = int(events["time_ps"].max())
        out.append(events)
        self._batches.extend(b for b in out if len(b))

    def _link_loss(self, count: int) -> np.ndarray:
        """LOSS records for ``count`` words lost on the link (count 0: unknown, a restart)."""
        n_records = max(1, -(-count // LOSS_COUNT_MAX))
        rec = np.zeros(n_records, EVENT_DTYPE)
        rec["time_ps"] = self._last_time_ps
        rec["channel"] = LINK_LOSS_CHANNEL
        rec["kind"] = Kind.LOSS
        counts = np.full(n_records, LOSS_COUNT_MAX, np.uint32)
        counts[-1] = count - LOSS_COUNT_MAX * (n_records - 1)
        rec["aux"] = (int(LossReason.LINK) << 18) | counts
        return rec
