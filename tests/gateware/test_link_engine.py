"""LinkEngine in the Amaranth simulator, spoken to in the host's own framing: requests are made
by firmware/link.encode_frame, replies and EVENTS frames are read back by link.FrameParser and the
link payload helpers, against a RegisterFile built from the firmware register map."""

import random
import struct

import numpy as np
import pytest
from amaranth import Module
from amaranth.sim import Simulator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qnode.firmware import link
from qnode.firmware.events import PROTOCOL_VERSION, Kind, epoch_word, header_word, pack_words
from qnode.firmware.registers import REGISTER_MAP
from qnode.gateware.link_engine import MAX_REQUEST_PAYLOAD, LinkEngine, event_rate_words_per_s
from qnode.gateware.regfile import RegisterFile

T = link.FrameType
HASH = "0123456789abcdef"
IDENTITY = dict(protocol_version=PROTOCOL_VERSION, channel_count=8, bin_ps=1250, oversampling=4,
                sys_clk_khz=200_000)
MAX_CLOCKS = 30_000  # a hang guard, not a timing requirement


def register_file(read_latency: int) -> RegisterFile:
    ghash = int(HASH, 16)
    return RegisterFile(REGISTER_MAP, constants={
        **IDENTITY, "gateware_hash": [ghash & 0xFFFF_FFFF, ghash >> 32]},
        implemented={r.name: 8 for r in REGISTER_MAP if r.name.startswith("ts_")},
        read_latency=read_latency)


# The engine waits the register file's read latency: 1 (one registered decode and mux), or 2
# (the registered two-stage read path the linked top uses for timing closure).
latencies = pytest.mark.parametrize("read_latency", [1, 2, 3])


class Bench:
    """Engine + register file; ``run`` feeds bytes and words and collects what the engine sends."""

    def __init__(self, *, max_event_words=link.MAX_EVENT_WORDS, word_fifo_depth=64, read_latency=1):
        self.engine = LinkEngine(board="ulx3s", word_fifo_depth=word_fifo_depth,
                                 max_event_words=max_event_words, read_latency=read_latency)
        self.regs = register_file(read_latency)
        top = Module()
        top.submodules.engine = e = self.engine
        top.submodules.regs = r = self.regs
        top.d.comb += [r.addr.eq(e.addr), r.w_en.eq(e.w_en), r.w_data.eq(e.w_data), e.r_data.eq(r.r_data)]
        self.top = top
        self.parser = link.FrameParser()
        self.frames: list[link.Frame] = []
        self.words_accepted: list[int] = []
        self.words_refused_clocks = 0
        self.counters: dict[str, int] = {}

    def run(self, data: bytes, *, until, words=(), tx_ready=1.0, seed=0, max_clocks=MAX_CLOCKS):
        """Send ``data`` and offer ``words``; stop once ``until(frames)`` or after max_clocks."""
        e = self.engine
        rng = random.Random(seed)
        done = []

        async def send_bytes(ctx):
            for byte in data:
                ctx.set(e.rx.payload, byte)
                ctx.set(e.rx.valid, 1)
                await ctx.tick().until(e.rx.ready)
            ctx.set(e.rx.valid, 0)

        async def send_words(ctx):
            for w in words:
                ctx.set(e.words.payload, int(w))
                ctx.set(e.words.valid, 1)
                while True:
                    _, _, ready = await ctx.tick().sample(e.words.ready)
                    if ready:
                        self.words_accepted.append(int(w))
                        break
                    self.words_refused_clocks += 1
            ctx.set(e.words.valid, 0)

        async def collect(ctx):
            for _ in range(max_clocks):
                ready = rng.random() < tx_ready
                ctx.set(e.tx.ready, ready)
                _, _, valid, payload = await ctx.tick().sample(e.tx.valid, e.tx.payload)
                if valid and ready:
                    self.frames += self.parser.feed(bytes([payload]))
                    if until(self.frames):
                        break
            for name in ("frames_received", "crc_errors", "bad_lengths", "bytes_skipped",
                         "replies_sent", "event_frames_sent", "words_sent"):
                self.counters[name] = ctx.get(getattr(e, name))
            done.append(True)

        sim = Simulator(self.top)
        sim.add_clock(1e-8)
        sim.add_testbench(send_bytes, background=True)
        sim.add_testbench(send_words, background=True)
        sim.add_testbench(collect)
        sim.run()
        assert done
        return self.frames


def replies(frames):
    return [f for f in frames if f.type != T.EVENTS]


def n_replies(n):
    return lambda frames: len(replies(frames)) >= n


def request(frame_type, seq, payload=b""):
    return link.encode_frame(frame_type, seq, payload)


@latencies
def test_hello_gets_identify_from_the_register_map_with_the_gateware_hash_and_board(read_latency):
    frames = Bench(read_latency=read_latency).run(request(T.HELLO, 17), until=n_replies(1))
    (reply,) = frames
    assert (reply.type, reply.seq) == (T.IDENTIFY, 17)
    assert link.Identity.unpack(reply.payload) == link.Identity(
        protocol_version=PROTOCOL_VERSION, channels=8, oversampling=4, bin_ps=1250,
        sys_clk_khz=200_000, gateware_hash=HASH, board="ulx3s")


@latencies
def test_register_writes_read_back_and_multi_register_reads(read_latency):
    scratch = REGISTER_MAP.address("scratch")
    delay3 = REGISTER_MAP.address("ts_delay_bins", 3)
    data = (request(T.REG_WRITE, 1, link.reg_write_payload(scratch, 0xDEADBEEF))
            + request(T.REG_WRITE, 2, link.reg_write_payload(delay3, 0x1_2345))  # 16-bit register
            + request(T.REG_READ, 3, link.reg_read_payload(scratch))
            + request(T.REG_READ, 4, link.reg_read_payload(REGISTER_MAP.address("protocol_version"), 8))
            + request(T.REG_READ, 5, link.reg_read_payload(delay3 - 1, 3))
            + request(T.REG_READ, 6, link.reg_read_payload(scratch, 0)))
    frames = Bench(read_latency=read_latency).run(data, until=n_replies(6))
    assert [(f.type, f.seq) for f in frames] == [
        (T.REG_ACK, 1), (T.REG_ACK, 2), (T.REG_DATA, 3), (T.REG_DATA, 4), (T.REG_DATA, 5), (T.REG_DATA, 6)]
    assert struct.unpack("<HI", frames[0].payload) == (scratch, 0xDEADBEEF)
    assert struct.unpack("<HI", frames[1].payload) == (delay3, 0x2345)  # what the register holds
    assert link.parse_reg_data(frames[2].payload) == (scratch, [0xDEADBEEF])
    ghash = int(HASH, 16)
    assert link.parse_reg_data(frames[3].payload) == (0, [
        PROTOCOL_VERSION, ghash & 0xFFFF_FFFF, ghash >> 32, 8, 1250, 4, 200_000, 0xDEADBEEF])
    assert link.parse_reg_data(frames[4].payload) == (delay3 - 1, [0, 0x2345, 0])
    assert link.parse_reg_data(frames[5].payload) == (scratch, [])


@latencies
def test_refused_requests_get_error_replies_naming_the_address(read_latency):
    pv = REGISTER_MAP.address("protocol_version")
    clear = REGISTER_MAP.address("ts_counters_clear")
    last = max(a for r in REGISTER_MAP for a in r.addresses())
    data = (request(T.REG_WRITE, 1, link.reg_write_payload(pv, 2))  # read-only
            + request(T.REG_WRITE, 2, link.reg_write_payload(0x0999, 1))  # nothing there
            + request(T.REG_READ, 3, link.reg_read_payload(last, 2))  # runs off the end
            + request(T.REG_READ, 4, b"\x07\x00")  # payload too short
            + request(0x55, 5)  # unknown type
            + request(T.REG_WRITE, 6, link.reg_write_payload(clear, 1))  # write-only: acked, reads 0
            + request(T.REG_READ, 7, link.reg_read_payload(pv)))  # and the version is unchanged
    frames = Bench(read_latency=read_latency).run(data, until=n_replies(7))
    assert [f.seq for f in frames] == list(range(1, 8))
    errors = [link.struct.unpack("<BBH", f.payload) for f in frames[:5]]
    assert all(f.type == T.ERROR for f in frames[:5])
    assert errors == [
        (T.REG_WRITE, link.ErrorCode.READ_ONLY, pv),
        (T.REG_WRITE, link.ErrorCode.BAD_ADDRESS, 0x0999),
        (T.REG_READ, link.ErrorCode.BAD_ADDRESS, last + 1),
        (T.REG_READ, link.ErrorCode.BAD_REQUEST, 0),
        (0x55, link.ErrorCode.BAD_REQUEST, 0),
    ]
    assert (frames[5].type, struct.unpack("<HI", frames[5].payload)) == (T.REG_ACK, (clear, 0))
    assert link.parse_reg_data(frames[6].payload) == (pv, [PROTOCOL_VERSION])


def reference_parse(data: bytes) -> link.ParserStats:
    """link.FrameParser's algorithm with the device's request length limit."""
    stats = link.ParserStats()
    pos = 0
    while True:
        start = data.find(link.MAGIC, pos)
        if start < 0:
            stats.bytes_skipped += len(data) - pos
            return stats
        stats.bytes_skipped += start - pos
        pos = start
        _, _, _, length = link.HEADER.unpack_from(data, pos)
        if length > MAX_REQUEST_PAYLOAD:
            stats.bad_lengths += 1
            stats.bytes_skipped += 1
            pos += 1
            continue
        end = pos + link.HEADER.size + length + link.CRC.size
        body = data[pos + 2:end - 4]
        if link.zlib.crc32(body) != link.CRC.unpack_from(data, end - 4)[0]:
            stats.crc_errors += 1
            stats.bytes_skipped += 1
            pos += 1
            continue
        stats.frames += 1
        pos = end


HELLOS = b"".join(request(T.HELLO, seq) for seq in (101, 102, 103))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage=st.one_of(
    st.binary(max_size=60),
    # garbage rich in frame starts: magic bytes and headers with short lengths
    st.lists(st.sampled_from([b"\x51", b"\xae", b"\x51\xae", b"\x51\xae\x01\x00\x04\x00", b"\x00", b"\x10\x00"]),
             max_size=20).map(b"".join)))
def test_garbage_is_skipped_and_counted_and_the_engine_resyncs(garbage):
    # Three requests after the garbage: a candidate frame starting in the garbage needs at most
    # 6 + 16 + 4 bytes, so it completes (and fails its CRC) within them, and the parser
    # rescans what it read from the ring: all three are answered.
    data = garbage + HELLOS
    bench = Bench()
    frames = bench.run(data, until=n_replies(3))
    assert [(f.type, f.seq) for f in frames] == [(T.IDENTIFY, 101), (T.IDENTIFY, 102), (T.IDENTIFY, 103)]
    expected = reference_parse(data)
    assert bench.counters["frames_received"] == expected.frames == 3
    assert bench.counters["bytes_skipped"] == expected.bytes_skipped
    assert bench.counters["crc_errors"] == expected.crc_errors
    assert bench.counters["bad_lengths"] == expected.bad_lengths


@latencies
def test_a_corrupted_frame_is_counted_and_not_executed(read_latency):
    scratch = REGISTER_MAP.address("scratch")
    bad = bytearray(request(T.REG_WRITE, 1, link.reg_write_payload(scratch, 0x1111)))
    bad[8] ^= 0x04  # one bit of the value
    long = request(T.REG_WRITE, 2, bytes(MAX_REQUEST_PAYLOAD + 1))  # valid CRC, but no request is that long
    data = bytes(bad) + long + request(T.REG_READ, 3, link.reg_read_payload(scratch))
    bench = Bench(read_latency=read_latency)
    frames = bench.run(data, until=n_replies(1))
    assert [(f.type, f.seq) for f in frames] == [(T.REG_DATA, 3)]
    assert link.parse_reg_data(frames[0].payload) == (scratch, [0])  # the write never happened
    assert bench.counters["crc_errors"] == 1 and bench.counters["bad_lengths"] == 1
    assert bench.counters["bytes_skipped"] == len(bad) + len(long)


def event_stream(n: int, seed: int) -> np.ndarray:
    """A HEADER, tags with EPOCH words, a second HEADER (a restart resets the epoch)."""
    rng = np.random.default_rng(seed)
    words = pack_words(Kind.TAG, rng.integers(0, 8, n), 0, rng.integers(0, 1 << 32, n))
    for i in sorted(rng.choice(np.arange(1, n), 6, replace=False), reverse=True):
        words = np.insert(words, i, epoch_word(int(rng.integers(1, 1 << 24))))
    words = np.insert(words, len(words) // 2, header_word(1250, 8))
    return np.concatenate([[header_word(1250, 8)], words]).astype(np.uint64)


def epoch_before(words: np.ndarray, i: int) -> int:
    epoch = 0
    for w in words[:i]:
        kind = int(w) >> 60
        if kind == Kind.EPOCH:
            epoch = int(w) & 0xFFFF_FFFF
        elif kind == Kind.HEADER:
            epoch = 0
    return epoch


def check_events(frames, words):
    events = [f for f in frames if f.type == T.EVENTS]
    got, index = [], 0
    for f in events:
        first, epoch, chunk = link.parse_events(f.payload)
        assert first == index  # every word counted, none skipped
        assert epoch == epoch_before(words, index)
        got.append(chunk)
        index += len(chunk)
    np.testing.assert_array_equal(np.concatenate(got), words)
    return events


def total_words(n):
    return lambda frames: sum((len(f.payload) - 8) // 8 for f in frames if f.type == T.EVENTS) >= n


def test_events_go_out_in_frames_with_index_and_epoch_and_replies_interleave():
    words = event_stream(150, seed=3)
    bench = Bench(max_event_words=32, word_fifo_depth=64)
    # a slow UART (ready 1 clock in 4) so words pile up and frames fill to the limit
    hello = request(T.HELLO, 9)
    frames = bench.run(hello, words=words, tx_ready=0.25, seed=1, max_clocks=100_000,
                       until=lambda fr: total_words(len(words))(fr) and n_replies(1)(fr))
    events = check_events(frames, words)
    sizes = [(len(f.payload) - 8) // 8 for f in events]
    assert max(sizes) == 32 and min(sizes) >= 1
    # the reply went out between two EVENTS frames, not after the whole stream
    where = [i for i, f in enumerate(frames) if f.type == T.IDENTIFY]
    assert where and where[0] < len(frames) - 1
    assert bench.counters["words_sent"] == len(words)
    assert bench.counters["event_frames_sent"] == len(events)


def test_a_stalled_uart_back_pressures_the_word_stream_and_loses_nothing():
    words = event_stream(200, seed=5)
    bench = Bench(max_event_words=link.MAX_EVENT_WORDS, word_fifo_depth=16)
    frames = bench.run(b"", words=words, tx_ready=0.05, seed=2, max_clocks=200_000,
                       until=total_words(len(words)))
    assert bench.words_refused_clocks > 0  # the FIFO did fill: the engine said "not ready"
    assert bench.words_accepted == [int(w) for w in words]
    check_events(frames, words)


def test_event_rate_of_the_uart():
    # 1024 words in 8210 bytes of 10 line bits
    assert event_rate_words_per_s(3_000_000) == 300_000 * 1024 / 8210
    assert 37_000 < event_rate_words_per_s(3_000_000) < 37_500


def read_every_address(read_latency: int, writes: dict[int, int], ro_values: dict[tuple[str, int], int],
                       addresses: list[int]) -> dict[int, int]:
    """Write ``writes`` over the bus, set read-only registers, then read ``addresses`` back to
    back: a new address every clock, each value taken ``read_latency`` clocks after its address."""
    regs = register_file(read_latency)
    got = {}

    async def bench(ctx):
        for (name, i), value in ro_values.items():
            ctx.set(regs.ro[name][i], value)
        for address, value in writes.items():
            ctx.set(regs.addr, address)
            ctx.set(regs.w_data, value)
            ctx.set(regs.w_en, 1)
            await ctx.tick()
        ctx.set(regs.w_en, 0)
        pending = []
        for address in addresses + [None] * read_latency:
            if address is not None:
                ctx.set(regs.addr, address)
            await ctx.tick()
            pending.append(address)
            if len(pending) == read_latency:  # set read_latency clocks ago: its value is out
                done = pending.pop(0)
                if done is not None:
                    got[done] = ctx.get(regs.r_data)

    sim = Simulator(regs)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got


def test_every_read_latency_returns_every_register_and_a_write_at_once():
    rng = random.Random(7)
    rw = [a for r in REGISTER_MAP if r.access.value == "rw" for a in r.addresses()]
    writes = {a: rng.getrandbits(32) for a in rw}
    ro_values = {(r.name, i): rng.getrandbits(r.width) for r in REGISTER_MAP
                 if r.access.value == "ro" and r.name not in IDENTITY and r.name != "gateware_hash"
                 for i in range(min(r.count, 8 if r.name.startswith("ts_") else r.count))}
    addresses = list(range(0x400)) + [0xFFFF, 0x1007]  # every bank, holes, beyond the map
    rng.shuffle(addresses)
    one = read_every_address(1, writes, ro_values, addresses)
    two = read_every_address(2, writes, ro_values, addresses)
    three = read_every_address(3, writes, ro_values, addresses)  # its writes land a clock later
    assert one == two == three
    ghash = int(HASH, 16)
    for r in REGISTER_MAP:
        for i, a in enumerate(r.addresses()):
            built = i < 8 or not r.name.startswith("ts_")
            if not built or r.access.value == "wo":
                expected = 0
            elif r.access.value == "rw":
                expected = writes[a] & r.mask
            elif r.name == "gateware_hash":
                expected = [ghash & 0xFFFF_FFFF, ghash >> 32][i]
            elif r.name in IDENTITY:
                expected = IDENTITY[r.name]
            else:
                expected = ro_values[r.name, i]
            assert two[a] == expected, (r.name, i)
    assert all(two[a] == 0 for a in addresses if all(a not in r.addresses() for r in REGISTER_MAP))


def test_a_register_file_with_another_read_latency_is_refused():
    with pytest.raises(ValueError, match="read_latency"):
        LinkEngine(board="ulx3s", read_latency=4)
    with pytest.raises(ValueError, match="read_latency"):
        Simulator(register_file(0))
