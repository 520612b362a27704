"""The link protocol and the time-tagger driver, against the simulated FPGA over real TCP."""

import asyncio
import re
import threading
import time
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnode.drivers.timetagger import LINK_LOSS_CHANNEL, TimeTagger
from qnode.firmware import link
from qnode.firmware.events import (
    PROTOCOL_VERSION, Kind, LossReason, ProtocolVersionError, header_word, split_aux,
)
from qnode.host.config import load_config
from qnode.sim.fpga import FpgaServerThread, SimulatedFpga
from qnode.sim.twin_herald import PIN_LATENCY

# --- framing ---------------------------------------------------------------------------

frames_st = st.lists(
    st.tuples(st.sampled_from(list(link.FrameType)), st.integers(0, 255), st.binary(max_size=300)),
    min_size=1, max_size=20,
)


@settings(max_examples=100, deadline=None)
@given(frames_st, st.data())
def test_frames_survive_any_split_of_the_byte_stream(frames, data):
    stream = b"".join(link.encode_frame(t, s, p) for t, s, p in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    parser, got = link.FrameParser(), []
    for a, b in zip([0, *cuts], [*cuts, len(stream)]):
        got += parser.feed(stream[a:b])
    assert [(f.type, f.seq, f.payload) for f in got] == [(int(t), s, p) for t, s, p in frames]
    assert parser.stats.bytes_skipped == 0 and parser.pending_bytes == 0


@settings(max_examples=200, deadline=None)
@given(frames_st, st.lists(st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=40)), max_size=6),
       st.lists(st.integers(0, 10_000), max_size=4))
def test_garbage_and_corruption_never_invent_a_frame_and_resync(frames, insertions, flips):
    """Random garbage and flipped bytes: every frame out was sent, intact ones all come out."""
    encoded = [link.encode_frame(t, s, p) for t, s, p in frames]
    stream = bytearray(b"".join(encoded))
    for pos, junk in insertions:
        pos = pos % (len(stream) + 1)
        stream[pos:pos] = junk
    for pos in flips:
        stream[pos % len(stream)] ^= 0x5A
    got = link.FrameParser().feed(bytes(stream))
    sent = {(int(t), s, p) for t, s, p in frames}
    assert all((f.type, f.seq, f.payload) in sent for f in got)
    if not insertions and not flips:
        assert len(got) == len(frames)


def test_a_corrupted_frame_is_counted_and_the_next_one_recovered():
    a = link.encode_frame(link.FrameType.REG_ACK, 1, b"\x01\x00\x05\x00\x00\x00")
    b = link.encode_frame(link.FrameType.REG_ACK, 2, b"\x02\x00\x06\x00\x00\x00")
    broken = bytearray(a)
    broken[8] ^= 0xFF
    parser = link.FrameParser()
    got = parser.feed(b"\x00garbage" + bytes(broken) + b)
    assert [f.seq for f in got] == [2]
    assert parser.stats.crc_errors == 1
    assert parser.stats.bytes_skipped == len(b"\x00garbage") + len(a)


def test_a_frame_whose_crc_ends_in_the_first_magic_byte_leaves_nothing_behind():
    """A frame's last CRC byte can be 0x51, the first byte of the magic: it belongs to the frame,
    so nothing is pending and nothing was skipped (found by the split test above)."""
    seq = next(s for s in range(256) if link.encode_frame(link.FrameType.REG_DATA, s, b"")[-1] == link.MAGIC[0])
    frame = link.encode_frame(link.FrameType.REG_DATA, seq, b"")
    parser = link.FrameParser()
    assert [f.seq for f in parser.feed(frame)] == [seq]
    assert parser.stats.bytes_skipped == 0 and parser.pending_bytes == 0
    # ... while a lone 0x51 after a frame is kept: the magic's second byte may be on its way
    assert [f.seq for f in parser.feed(frame + link.MAGIC[:1])] == [seq] and parser.pending_bytes == 1
    assert [f.seq for f in parser.feed(frame[1:])] == [seq] and parser.stats.bytes_skipped == 0


def test_crc_is_crc32_iso_hdlc_over_header_and_payload():
    frame = link.encode_frame(link.FrameType.HELLO, 7, b"")
    assert frame[:2] == link.MAGIC
    assert int.from_bytes(frame[-4:], "little") == zlib.crc32(frame[2:-4])


# --- the simulated FPGA over TCP ---------------------------------------------------------


def stop_loop(loop, thread):
    """Cancel what still runs on a test's event loop, then stop it and its thread."""

    async def cancel_rest():
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(cancel_rest(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def ServerThread(device, port=0, speed=1.0):
    return FpgaServerThread(device, port=port, speed=speed)


@pytest.fixture
def config():
    return load_config()


@pytest.fixture
def server(config):
    srv = ServerThread(SimulatedFpga(config))
    yield srv
    srv.stop()


def read_for(tagger, seconds):
    batches, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        batches.append(tagger.read_events(0.05))
    return np.concatenate(batches)


def test_identify_and_registers(server, config):
    with TimeTagger(server.url, timeout_s=2.0) as tagger:
        ident = tagger.identity
        assert ident.protocol_version == PROTOCOL_VERSION
        assert ident.board == "sim" and ident.channels == 8 and ident.bin_ps == 1000
        assert tagger.read_register("bin_ps") == 1000
        assert tagger.read_register("channel_count") == 8
        assert tagger.write_register("scratch", 0xDEADBEEF) == 0xDEADBEEF
        assert tagger.read_register("scratch") == 0xDEADBEEF
        with pytest.raises(link.LinkError, match="READ_ONLY"):
            tagger.write_register("bin_ps", 5)
        with pytest.raises(ValueError, match="does not fit"):
            tagger.write_register("bin_ps", 1 << 20)


def test_events_stream_in_time_order_with_the_lab_rates(server):
    with TimeTagger(server.url, timeout_s=2.0) as tagger:
        events = read_for(tagger, 0.6)
    tags = events[events["kind"] == Kind.TAG]
    assert len(tags) > 100_000
    assert np.all(np.diff(tags["time_ps"]) >= 0)
    assert np.all(tags["time_ps"] % 1000 == 0)
    span_s = (tags["time_ps"][-1] - tags["time_ps"][0]) * 1e-12
    sync_rate = np.count_nonzero(tags["channel"] == 0) / span_s
    assert 0.85e6 < sync_rate < 0.95e6  # 900 attempts a 1 ms cycle
    assert tagger.decode_stats.invalid_words == 0


def test_version_mismatch_is_refused_naming_both_versions(config):
    srv = ServerThread(SimulatedFpga(config, protocol_version=PROTOCOL_VERSION + 1))
    try:
        with pytest.raises(ProtocolVersionError) as err:
            TimeTagger(srv.url, timeout_s=2.0).open()
        assert f"version {PROTOCOL_VERSION + 1}" in str(err.value)
        assert f"version {PROTOCOL_VERSION}" in str(err.value)
    finally:
        srv.stop()


def test_connection_refused_is_a_clear_error():
    srv_port = ServerThread(SimulatedFpga(load_config()))
    url = srv_port.url
    srv_port.stop()
    with pytest.raises(link.LinkError, match="cannot open socket://127.0.0.1"):
        TimeTagger(url, timeout_s=0.5).open()


def test_server_restart_reconnects_and_reports_the_gap(config):
    srv = ServerThread(SimulatedFpga(config))
    tagger = TimeTagger(srv.url, timeout_s=2.0)
    tagger.open()
    before = read_for(tagger, 0.2)
    port = srv.port
    srv.stop()
    srv = ServerThread(SimulatedFpga(config), port=port)
    try:
        after = read_for(tagger, 1.0)
    finally:
        tagger.close()
        srv.stop()
    assert tagger.stats.reconnects >= 1
    assert tagger.stats.stream_restarts == 1
    loss = after[after["kind"] == Kind.LOSS]
    reason = split_aux(loss)["loss_reason"]
    # The restart itself (count unknown: 0) on the link channel ...
    assert np.any((reason == LossReason.LINK) & (loss["channel"] == LINK_LOSS_CHANNEL))
    # ... and what the new device dropped before the host was back, in band, per channel.
    assert set(reason.tolist()) <= {LossReason.LINK, LossReason.OUTPUT}
    tags = np.concatenate([before, after])
    tags = tags[tags["kind"] == Kind.TAG]
    assert np.all(np.diff(tags["time_ps"]) >= 0)  # time stays monotonic across the restart


class LossyLink:
    """A TCP proxy between host and simulated FPGA that loses chosen EVENTS frames whole,
    as a link losing packets would (the device keeps counting words it sent)."""

    def __init__(self, target_port, drop_every=7):
        self.target_port, self.drop_every = target_port, drop_every
        self.dropped_words = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)

    async def _start(self):
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _client(self, host_r, host_w):
        dev_r, dev_w = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def upstream():
            while data := await host_r.read(65536):
                dev_w.write(data)

        async def downstream():
            parser, n_events = link.FrameParser(), 0
            while data := await dev_r.read(65536):
                for f in parser.feed(data):
                    if f.type == link.FrameType.EVENTS:
                        n_events += 1
                        if n_events % self.drop_every == 0:
                            self.dropped_words += (len(f.payload) - 8) // 8
                            continue
                    host_w.write(link.encode_frame(f.type, f.seq, f.payload))

        await asyncio.gather(upstream(), downstream(), return_exceptions=True)

    def stop(self):
        self.server.close()
        stop_loop(self.loop, self.thread)


def test_lost_frames_are_counted_exactly(server):
    proxy = LossyLink(server.port)
    try:
        with TimeTagger(f"socket://127.0.0.1:{proxy.port}", timeout_s=2.0) as tagger:
            events = read_for(tagger, 0.5)
            dropped = proxy.dropped_words
            events = np.concatenate([events, read_for(tagger, 0.2)])
    finally:
        proxy.stop()
    assert dropped > 0
    # Words dropped after our snapshot may also be counted, never fewer than the snapshot.
    assert tagger.stats.lost_words >= dropped
    loss = events[(events["kind"] == Kind.LOSS) & (events["channel"] == LINK_LOSS_CHANNEL)]
    assert int(split_aux(loss)["loss_count"].sum()) == tagger.stats.lost_words
    assert tagger.decode_stats.invalid_words == 0  # each frame decodes on its own epoch
    tags = events[events["kind"] == Kind.TAG]
    assert np.all(np.diff(tags["time_ps"]) >= 0)


def test_device_drops_become_in_band_output_loss_records(config):
    """Words the link could not take (no host, a slow host) come back as LOSS records, per
    channel, with every count kept, before the next words the host gets."""
    from qnode.firmware.events import decode_words

    device = SimulatedFpga(config)
    dropped = device.produce(5_000_000_000)
    lost, _ = decode_words(np.concatenate([[header_word(1000, 8)], dropped]).astype(np.uint64))
    device.drop(dropped)
    events, stats = decode_words(device.with_losses(device.produce(1_000_000_000)))
    assert stats.invalid_words == 0
    loss = events[events["kind"] == Kind.LOSS]
    assert np.all(split_aux(loss)["loss_reason"] == LossReason.OUTPUT)
    per_channel = np.bincount(loss["channel"], weights=split_aux(loss)["loss_count"], minlength=8)
    np.testing.assert_array_equal(per_channel[:8], np.bincount(lost["channel"], minlength=8)[:8])


def test_simulated_fpga_serves_the_twin_with_register_settings(config):
    """Dead time and enable registers act on the stream, and counters count, as in the gateware."""
    from qnode.firmware.events import decode_words

    device = SimulatedFpga(config)
    for ch in range(8):
        device._set("ts_dead_time_bins", 0, ch)
    device._set("ts_enable", 0, 5)
    events, _ = decode_words(device.with_losses(device.produce(20_000_000_000)))
    tags = events[events["kind"] == Kind.TAG]
    assert not np.any(tags["channel"] == 5)
    assert np.count_nonzero(tags["channel"] == 0) == 18_000  # 900 attempts a 1 ms cycle, for 20 ms
    assert device._get("ts_tag_count", 0) == 18_000


def test_simulated_fpga_starts_at_the_register_reset_values(config):
    """Like the gateware after power-up: nothing of the config until the host writes it."""
    from qnode.firmware.registers import REGISTER_MAP

    device = SimulatedFpga(config)
    assert config.fpga.channels[0].dead_time_ps == 8000 and config.fpga.herald.rule == "single_click"
    assert device._get("ts_dead_time_bins", 0) == REGISTER_MAP["ts_dead_time_bins"].reset == 0
    assert device._get("herald_rule") == 0 and device._get("coinc_mask", 0) == 0
    assert device._get("herald_latency_clocks") == PIN_LATENCY  # this build has a herald unit


def _write_reference_units(device):
    """The reference lab's herald rule and SPDC pattern, register by register (bins)."""
    for name, value in (("herald_rule", 1), ("herald_sync_channel", 0), ("herald_detector_mask", 0b11000),
                        ("herald_offset_bins", 49_012), ("herald_length_bins", 10), ("coinc_mask", 0b110),
                        ("coinc_window_bins", 10), ("coinc_emit", 0b1)):
        device._set(name, value)


def test_simulated_fpga_heralds_as_one_run_of_the_herald_unit_would_across_its_steps(config):
    """The herald and coincidence registers act on the stream. Attempts whose 49 us window spans
    a production step are decided with the next step's clicks, numbered from reset, their sync
    sent once: the heralds equal the herald unit's twin run once over all the clicks served."""
    from qnode.firmware.events import decode_words
    from qnode.sim.twin import timestamp
    from qnode.sim.twin_herald import heralds

    device = SimulatedFpga(config)
    _write_reference_units(device)
    steps = [device.with_losses(device.produce(10_000_000_000)) for _ in range(12)]  # 120 ms
    events, stats = decode_words(np.concatenate(steps))
    assert stats.invalid_words == 0 and stats.lost_events == 0
    tags = events[events["kind"] == Kind.TAG]
    got = events[events["kind"] == Kind.HERALD]
    sync = tags["time_ps"][tags["channel"] == 0]
    assert len(sync) == 108_000 and len(np.unique(sync)) == len(sync)  # 900 a 1 ms cycle, each once
    assert device._get("herald_attempt_count") == device._get("ts_tag_count", 0) == 108_000

    # The herald unit's twin, once over every tag of the stream (delays and dead times are 0).
    cfg = device.twin_config()
    bins = tags["time_ps"] // device.bin_ps
    entries = timestamp([bins[tags["channel"] == c] for c in range(cfg.channels)], cfg)
    want = heralds(entries, cfg.herald, channels=cfg.channels, oversampling=cfg.oversampling,
                   delay_bins=cfg.delay_bins)
    decided = want.time * device.bin_ps < tags["time_ps"][-1] - 20_000  # windows the stream has closed
    fields = split_aux(got)
    served = sorted(zip(fields["herald_attempt"].tolist(), got["channel"].tolist(), got["time_ps"].tolist(),
                        fields["herald_outcome"].tolist()))
    one_run = sorted(zip((want.attempt[decided]).tolist(), want.channel[decided].tolist(),
                         (want.time[decided] * device.bin_ps).tolist(), want.outcome[decided].tolist()))
    assert len(one_run) > 50 and served[:len(one_run)] == one_run
    assert [device._get("herald_success_count", k) for k in range(2)] == \
        [int((fields["herald_outcome"] == k + 1).sum()) for k in range(2)]
    coincidences = events[events["kind"] == Kind.COINCIDENCE]
    assert len(coincidences) == device._get("coinc_count", 0) > 500  # ~8.7e3 /s
    assert np.all(coincidences["channel"] == 0) and np.all(coincidences["aux"] == 0b110)


def test_counters_clear_strobes_zero_their_own_block(config):
    device = SimulatedFpga(config)
    _write_reference_units(device)
    device.produce(5_000_000_000)
    assert device._get("herald_attempt_count") > 0 and device._get("coinc_count", 0) > 0
    from qnode.firmware.registers import REGISTER_MAP

    def write(name):
        frame = link.Frame(link.FrameType.REG_WRITE, 1, link.reg_write_payload(REGISTER_MAP.address(name), 1))
        device.handle(frame)

    write("herald_counters_clear")
    assert device._get("herald_attempt_count") == 0 and device._get("coinc_count", 0) > 0
    write("coinc_counters_clear")
    assert device._get("coinc_count", 0) == 0 and device._get("ts_tag_count", 0) > 0


# --- fuzzing the host driver end to end: mangled EVENTS streams over a real socket ------------


class MangledDevice:
    """A device on a real TCP socket on 127.0.0.1: HELLO gets an IDENTIFY, then ``stream`` (EVENTS
    frames, mangled by the test) and 8.3 kB of zeros, so a frame the mangling left half-told is
    given up on; any later request is answered after all of that (TCP keeps the order), so the
    host's reply to it is proof that everything before it was read."""

    IDENTITY = link.Identity(protocol_version=PROTOCOL_VERSION, channels=8, oversampling=8, bin_ps=1000,
                             sys_clk_khz=125_000, gateware_hash="00" * 8, board="fuzz")

    def __init__(self, stream: bytes):
        import socket

        self.stream = stream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.listener.accept()
        with conn:
            parser = link.FrameParser()
            while data := conn.recv(65536):
                for frame in parser.feed(data):
                    if frame.type == link.FrameType.HELLO:
                        conn.sendall(link.encode_frame(link.FrameType.IDENTIFY, frame.seq, self.IDENTITY.pack())
                                     + self.stream + bytes(link.MAX_PAYLOAD + 100))
                    elif frame.type == link.FrameType.REG_READ:
                        address, count = link.struct.unpack("<HB", frame.payload)
                        conn.sendall(link.encode_frame(link.FrameType.REG_DATA, frame.seq,
                                                       link.reg_data_payload(address, [0] * count)))

    def stop(self):
        self.listener.close()
        self.thread.join(5)


def events_frames(tag_chunks):
    """EVENTS frames as a device sends them: a HEADER first, each frame with its word index and
    the epoch in force before it; returns the frames' bytes and each frame's (TAG times, words)."""
    from qnode.firmware.events import encode_tags

    frames, contents, index, epoch = [], [], 0, -1
    for n, (channels, time_bins) in enumerate(tag_chunks):
        words, after = encode_tags(channels, time_bins, epoch=epoch)
        if n == 0:
            words = np.concatenate([[header_word(1000, 8)], words]).astype(np.uint64)
        frames.append(link.encode_frame(link.FrameType.EVENTS, 0, link.events_payload(index, max(epoch, 0), words)))
        contents.append((time_bins * 1000, len(words)))
        index, epoch = index + len(words), after
    return frames, contents


tag_chunks_st = st.lists(
    st.lists(st.tuples(st.integers(0, 7), st.one_of(st.integers(1, 5000), st.integers(1, 3 << 32))),
             min_size=1, max_size=30),
    min_size=1, max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(tag_chunks_st,
       st.lists(st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=40)), max_size=4),
       st.lists(st.integers(0, 10_000), max_size=4),
       st.one_of(st.none(), st.tuples(st.integers(0, 10_000), st.integers(1, 3_000))))
def test_mangled_event_streams_never_invent_an_event_and_count_every_lost_word(chunks, insertions, flips, cut):
    """Random garbage inserted, bytes flipped, a stretch of the stream cut out (or its tail): the
    driver never crashes, every event it gives was sent, with its exact time (also after a lost
    frame that held an EPOCH), and every word of a frame it lost between two it got is a counted
    LINK loss."""
    chunk_bins, t = [], 0
    for chunk in chunks:
        steps = np.array([s for _, s in chunk], np.int64)
        times = t + np.cumsum(steps)
        t = int(times[-1])
        chunk_bins.append((np.array([c for c, _ in chunk], np.uint8), times))
    frames, contents = events_frames(chunk_bins)
    stream = bytearray(b"".join(frames))
    mangled = bool(insertions or flips or cut)
    for pos, junk in insertions:
        pos %= len(stream) + 1
        stream[pos:pos] = junk
    for pos in flips:
        stream[pos % len(stream)] ^= 0x5A
    if cut is not None:
        start = cut[0] % len(stream)
        del stream[start : start + cut[1]]

    device = MangledDevice(bytes(stream))
    try:
        with TimeTagger(f"socket://127.0.0.1:{device.port}", timeout_s=5.0) as tagger:
            assert tagger.read_register("scratch") == 0  # the barrier: every byte before it was read
            events = tagger.read_events(0.0)
    finally:
        device.stop()

    tags = events[events["kind"] == Kind.TAG]
    sent = {(int(ps), int(ch)) for (chs, bins), (ps_all, _) in zip(chunk_bins, contents)
            for ps, ch in zip(ps_all, chs)}
    got = [(int(ps), int(ch)) for ps, ch in zip(tags["time_ps"], tags["channel"])]
    assert set(got) <= sent and len(set(got)) == len(got)  # nothing invented, nothing twice
    assert tagger.decode_stats.invalid_words == 0
    # Frames arrive whole or not at all; the words of those missing between two that came are lost.
    got_times = set(int(ps) for ps in tags["time_ps"])
    received = [bool(got_times & set(ps.tolist())) for ps, _ in contents]
    for (ps, _), came in zip(contents, received):
        assert came == bool(got_times.issuperset(ps.tolist()))
    if any(received):
        first, last = received.index(True), len(received) - 1 - received[::-1].index(True)
        expected_lost = sum(n for (_, n), came in zip(contents[first : last + 1], received[first : last + 1])
                            if not came)
    else:
        expected_lost = 0
    assert tagger.stats.lost_words == expected_lost
    link_loss = events[(events["kind"] == Kind.LOSS) & (events["channel"] == LINK_LOSS_CHANNEL)]
    assert int(split_aux(link_loss)["loss_count"].sum()) == expected_lost
    if not mangled:
        assert all(received) and tagger.stats.bytes_skipped == link.MAX_PAYLOAD + 100
    elif not all(received):
        assert tagger.stats.bytes_skipped > link.MAX_PAYLOAD + 100 or cut is not None


# --- typed settings over the link ---------------------------------------------------------------


def test_channel_settings_in_ps_reach_their_registers_in_bins(server, config):
    with TimeTagger(server.url, timeout_s=2.0) as tagger:
        assert tagger.set_delay_ps(3, 12_400) == 12_000  # whole 1000 ps bins
        assert tagger.read_register("ts_delay_bins", 3) == 12 and tagger.delay_ps(3) == 12_000
        assert tagger.set_delay_ps(0, 49_000_000) == 49_000_000  # the scenario's 49 us reaches
        assert tagger.set_dead_time_ps(2, 20_000) == 20_000 and tagger.read_register("ts_dead_time_bins", 2) == 20
        assert tagger.set_edge(4, "falling") == "falling" and tagger.read_register("ts_edge", 4) == 1
        assert tagger.edge(3) == "rising"
        assert tagger.set_enabled(5, False) is False and tagger.read_register("ts_enable", 5) == 0
        applied = tagger.apply_channels(config.fpga.channels)  # the config's own settings back
        assert applied[2]["dead_time_ps"] == 8000 and applied[5]["enabled"] is True
        assert tagger.dead_time_ps(2) == 8000 and tagger.enabled(5) and tagger.edge(4) == "rising"
        counters = tagger.channel_counters()
        assert set(counters) == {"tags", "same_clock_lost", "fifo_lost", "output_lost"}
        assert len(counters["tags"]) == 8


@pytest.mark.parametrize("call, message", [
    (lambda t: t.set_delay_ps(1, 70_000_000), r"delay 70000000 ps outside 0..65535000 ps"),
    (lambda t: t.set_delay_ps(1, -1000), r"outside 0\.\."),
    (lambda t: t.set_dead_time_ps(8, 1000), r"channel 8 outside 0..7"),
    (lambda t: t.set_edge(1, "both"), r"edge 'both' is not one of rising, falling"),
    (lambda t: t.set_coincidence_pattern(8, [1, 2], 1000), r"pattern 8 outside 0..7"),
    (lambda t: t.set_coincidence_pattern(0, [1, 2], 1000, min_fold=3), r"min_fold 3 outside 0..2"),
    (lambda t: t.set_coincidence_pattern(0, [], 1000), r"at least one channel"),
    (lambda t: t.set_herald_rule("single_click", detectors=[3, 4], length_ps=1e9), r"herald window length"),
    (lambda t: t.set_herald_rule("three_click", detectors=[3]), r"'three_click' is not one of"),
    (lambda t: t.set_herald_rule("single_click", detectors=[]), r"needs at least one detector"),
])
def test_a_setting_out_of_range_is_refused_before_anything_is_sent(server, call, message):
    from qnode.firmware.registers import Access

    device = server.server.device

    def settings():  # the RW registers (the counters move on their own)
        return {a: v for a, v in device.registers.items() if device._access[a] == Access.RW}

    with TimeTagger(server.url, timeout_s=2.0) as tagger:
        before = settings()
        seq = tagger._seq
        with pytest.raises(ValueError, match=message):
            call(tagger)
        assert tagger._seq == seq  # no request went out
        assert settings() == before


def test_coincidence_patterns_and_herald_rules_round_trip(server):
    with TimeTagger(server.url, timeout_s=2.0) as tagger:
        got = tagger.set_coincidence_pattern(0, [2, 1], window_ps=2_000, min_fold=2, emit=True)
        assert (got.channels, got.window_ps, got.min_fold, got.emit) == ([1, 2], 2_000, 2, True)
        assert tagger.read_register("coinc_mask", 0) == 0b110 and tagger.read_register("coinc_window_bins", 0) == 2
        tagger.set_coincidence_pattern(1, [3, 4], window_ps=1_000)
        assert tagger.read_register("coinc_emit") == 0b01  # pattern 1 does not emit; pattern 0 still does
        tagger.disable_coincidence_pattern(0)
        assert tagger.coincidence_pattern(0).channels == [] and len(tagger.coincidence_counts()) == 8

        rule = tagger.set_herald_rule("single_click", sync_channel=0, detectors=[4, 3], offset_ps=49_000_000,
                                      length_ps=10_000, pin_clocks=4)
        assert rule.rule == "single_click" and rule.detectors == [3, 4] and rule.veto == []
        assert (rule.offset_ps, rule.length_ps, rule.pin_clocks) == (49_000_000, 10_000, 4)
        assert tagger.read_register("herald_rule") == 1 and tagger.read_register("herald_detector_mask") == 0b11000
        assert tagger.read_register("herald_offset_bins") == 49_000
        assert tagger.set_herald_rule("off").rule == "off"
        counts = tagger.herald_counts()
        assert len(counts["success"]) == 4 and counts["attempts"] >= 0
        tagger.clear_counters()


# --- `qnode sim fpga` as a user runs it ----------------------------------------------------------


def test_sim_fpga_command_serves_the_twin_to_the_host_driver_in_another_process():
    import os
    import select
    import signal
    import subprocess
    import sys

    # Ctrl-C reaches it even when the tests run as a background job (which ignores SIGINT).
    process = subprocess.Popen([sys.executable, "-m", "qnode.host.cli", "sim", "fpga", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        ready, _, _ = select.select([process.stdout], [], [], 120)  # generous: a shared machine
        line = process.stdout.readline() if ready else ""
        match = re.search(r"simulated FPGA on (socket://127\.0\.0\.1:\d+) \(protocol (\d+), gateware ([0-9a-f]{16}), "
                          r"8 channels, 1000 ps bins", line)
        assert match, line
        with TimeTagger(match.group(1), timeout_s=5.0) as tagger:
            assert tagger.identity.protocol_version == int(match.group(2)) == PROTOCOL_VERSION
            assert tagger.identity.gateware_hash == match.group(3) and tagger.identity.board == "sim"
            events = np.empty(0)
            while len(events) == 0:
                events = tagger.read_events(0.5)
            assert tagger.decode_stats.invalid_words == 0
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)


def test_sim_fpga_command_names_a_bad_config(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.toml"
    bad.write_text("[fpga]\nboard = 'sim'\nchannels = []\n")
    out = subprocess.run([sys.executable, "-m", "qnode.host.cli", "sim", "fpga", "--config", str(bad),
                          "--seconds", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "bad.toml" in out.stderr
