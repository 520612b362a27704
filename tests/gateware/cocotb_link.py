"""cocotb testbench: LinkedTimeTagger (core + link engine + UART, Verilog from Amaranth) on
Verilator, spoken to as the host does -- through a bit-level UART model on its two pins, with
frames made and parsed by firmware/link.py (the framing drivers/timetagger.py uses).

Driven by tests/gateware/test_link_cosim.py; configuration in QNODE_* environment variables.
One simulation: HELLO -> IDENTIFY; register writes read back; a read-only write refused; then
random pulses on the pins, and every word of the EVENTS frames compared with the twin's words for
the same stimulus, with the frames' index and epoch checked. Results go to QNODE_RESULTS (JSON).
"""

import json
import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge

from qnode.firmware import link
from qnode.firmware.events import Kind
from qnode.firmware.registers import REGISTER_MAP
from qnode.sim.twin import Twin, TwinConfig, samples_from_pulses

CHANNELS = int(os.environ["QNODE_CHANNELS"])
N = int(os.environ["QNODE_OVERSAMPLING"])
SYS_CLK_HZ = int(os.environ["QNODE_SYS_CLK_HZ"])
DIVISOR = int(os.environ["QNODE_DIVISOR"])
FIFO_DEPTH = int(os.environ["QNODE_FIFO_DEPTH"])
OUTPUT_DEPTH = int(os.environ["QNODE_OUTPUT_DEPTH"])
START_NOW = int(os.environ["QNODE_START_NOW"])
GATEWARE_HASH = os.environ["QNODE_GATEWARE_HASH"]
BOARD = os.environ["QNODE_BOARD"]
SEED = int(os.environ["QNODE_SEED"])
RESULTS = os.environ["QNODE_RESULTS"]
STIMULUS_CLOCKS = 3000
T = link.FrameType


class UartHost:
    """The host's end of the serial line, bit by bit: 8N1 at DIVISOR clocks per bit."""

    def __init__(self, dut):
        self.dut = dut
        self.parser = link.FrameParser()
        self.frames: list[link.Frame] = []
        dut.uart_rx.value = 1
        cocotb.start_soon(self._receive())

    async def send(self, data: bytes):
        for byte in data:
            for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                self.dut.uart_rx.value = bit
                await ClockCycles(self.dut.clk, DIVISOR)

    async def _receive(self):
        tx = self.dut.uart_tx
        while True:
            await FallingEdge(tx)
            await ClockCycles(self.dut.clk, DIVISOR // 2)  # middle of the start bit
            assert int(tx.value) == 0, "start bit too short"
            byte = 0
            for i in range(8):
                await ClockCycles(self.dut.clk, DIVISOR)
                byte |= int(tx.value) << i
            await ClockCycles(self.dut.clk, DIVISOR)
            assert int(tx.value) == 1, "missing stop bit"
            self.frames += self.parser.feed(bytes([byte]))

    async def request(self, frame_type: int, seq: int, payload: bytes = b"") -> link.Frame:
        await self.send(link.encode_frame(frame_type, seq, payload))
        for _ in range(200):  # a hang guard: replies come within a few hundred bit times
            for i, frame in enumerate(self.frames):
                if frame.type != T.EVENTS and frame.seq == seq:
                    return self.frames.pop(i)
            await ClockCycles(self.dut.clk, 50 * DIVISOR)
        raise AssertionError(f"no reply to {T(frame_type).name} seq {seq}")

    async def write(self, seq: int, name: str, value: int, index: int = 0) -> int:
        reply = await self.request(T.REG_WRITE, seq, link.reg_write_payload(REGISTER_MAP.address(name, index), value))
        assert reply.type == T.REG_ACK, reply
        return link.struct.unpack("<HI", reply.payload)[1]

    async def read(self, seq: int, name: str, index: int = 0, count: int = 1) -> list[int]:
        reply = await self.request(T.REG_READ, seq, link.reg_read_payload(REGISTER_MAP.address(name, index), count))
        assert reply.type == T.REG_DATA, reply
        return link.parse_reg_data(reply.payload)[1]


def epoch_before(words, i: int) -> int:
    epoch = 0
    for w in words[:i]:
        if int(w) >> 60 == Kind.EPOCH:
            epoch = int(w) & 0xFFFF_FFFF
        elif int(w) >> 60 == Kind.HEADER:
            epoch = 0
    return epoch


@cocotb.test()
async def host_link_against_twin(dut):
    rng = np.random.default_rng(SEED)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.pins.value = 0
    host = UartHost(dut)
    clock = [0]

    async def count_clocks():
        while True:
            await RisingEdge(dut.clk)
            clock[0] += 1

    await ClockCycles(dut.clk, 4)
    await FallingEdge(dut.clk)
    dut.rst.value = 0  # the next rising edge is the core's clock 0
    cocotb.start_soon(count_clocks())
    results = {}

    # who are you?
    identity = link.Identity.unpack((await host.request(T.HELLO, 1)).payload)
    results["identity"] = identity.__dict__
    assert identity == link.Identity(
        protocol_version=1, channels=CHANNELS, oversampling=N, bin_ps=10**12 // (SYS_CLK_HZ * N),
        sys_clk_khz=SYS_CLK_HZ // 1000, gateware_hash=GATEWARE_HASH, board=BOARD)
    ghash = int(GATEWARE_HASH, 16)
    assert await host.read(2, "gateware_hash", 0, 2) == [ghash & 0xFFFF_FFFF, ghash >> 32]

    # registers: the settings for the stimulus, each read back as written
    cfg = TwinConfig(channels=CHANNELS, oversampling=N, sys_clk_hz=SYS_CLK_HZ, fifo_depth=FIFO_DEPTH,
                     output_depth=OUTPUT_DEPTH, start_now=START_NOW,
                     delay_bins=list(rng.integers(0, 40, CHANNELS)),
                     dead_time_bins=list(rng.integers(0, 2 * N, CHANNELS)),
                     enable=[1] * (CHANNELS - 1) + [0])
    seq = 3
    for name, values in (("ts_delay_bins", cfg.delay_bins), ("ts_dead_time_bins", cfg.dead_time_bins),
                         ("ts_enable", cfg.enable)):
        for i, value in enumerate(values):
            assert await host.write(seq, name, value, i) == value
            seq += 1
        assert await host.read(seq, name, 0, CHANNELS) == values
        seq += 1
    assert await host.write(seq, "scratch", 0xC0FFEE) == 0xC0FFEE
    refused = await host.request(T.REG_WRITE, seq + 1, link.reg_write_payload(0, 7))
    assert (refused.type, link.struct.unpack("<BBH", refused.payload)) == (T.ERROR, (T.REG_WRITE, 2, 0))

    # events: pulses on the pins from clock c0 on, every word compared with the twin's
    await FallingEdge(dut.clk)
    c0 = clock[0]  # the clock whose rising edge comes next
    span = (STIMULUS_CLOCKS - 200) * N
    count = 60 * CHANNELS
    t = rng.integers(0, span, count) + (START_NOW + c0) * N
    ch = rng.integers(0, CHANNELS, count)
    total = c0 + STIMULUS_CLOCKS
    samples = samples_from_pulses(t, ch, 2, total, cfg)
    pins = [sum(int(w) << (c * N) for c, w in enumerate(row)) for row in samples[c0:]]
    for value in pins:
        dut.pins.value = value
        await FallingEdge(dut.clk)
    dut.pins.value = 0
    twin = Twin(cfg).run(samples=samples).words

    got, index, epochs_ok = [], 0, True
    for _ in range(1000):  # hang guard
        events = [f for f in host.frames if f.type == T.EVENTS]
        if sum((len(f.payload) - 8) // 8 for f in events) >= len(twin):
            break
        await ClockCycles(dut.clk, 100 * DIVISOR)
    for f in (f for f in host.frames if f.type == T.EVENTS):
        first, epoch, words = link.parse_events(f.payload)
        assert first == index, (first, index)
        epochs_ok &= epoch == epoch_before(twin, index)
        got.extend(int(w) for w in words)
        index += len(words)
    results.update(words=len(got), twin_words=len(twin), frames=len(host.frames),
                   equal=got == [int(w) for w in twin], epochs_ok=bool(epochs_ok),
                   epoch_words=int(np.count_nonzero((np.asarray(twin) >> np.uint64(60)) == Kind.EPOCH)),
                   crc_errors=host.parser.stats.crc_errors, bytes_skipped=host.parser.stats.bytes_skipped)
    with open(RESULTS, "w") as out:
        json.dump(results, out)
    assert got == [int(w) for w in twin], "EVENTS words differ from the twin's"
    assert epochs_ok
