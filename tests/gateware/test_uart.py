"""UART PHY in the Amaranth simulator: the exact waveform it sends, what it receives from a
bit-level line model (also off-baud), loopback, and framing errors and overruns counted."""

import random

import pytest
from amaranth import Module
from amaranth.sim import Simulator

from qnode.gateware.uart import UART, UARTRx, UARTTx, divisor_for


def line_bits(data: bytes, *, stop: int = 1) -> list[int]:
    """8N1 bits of ``data``: start 0, data LSB first, stop."""
    bits = []
    for byte in data:
        bits += [0] + [(byte >> i) & 1 for i in range(8)] + [stop]
    return bits


def waveform(bits: list[int], clocks_per_bit: int, idle: int = 5) -> list[int]:
    """One line level per clock: ``idle`` clocks high, then each bit for ``clocks_per_bit``."""
    return [1] * idle + [b for b in bits for _ in range(clocks_per_bit)] + [1] * (3 * clocks_per_bit)


def run_rx(levels: list[int], divisor: int, ready: bool = True):
    """Drive the receiver's pin with one level per clock; return bytes taken and counters."""
    rx = UARTRx(divisor)
    got = []
    counters = {}

    async def bench(ctx):
        ctx.set(rx.bytes.ready, int(ready))
        for level in levels:
            ctx.set(rx.pin, level)
            await ctx.tick()
            if ctx.get(rx.bytes.valid) and ready:
                got.append(ctx.get(rx.bytes.payload))
        counters.update(framing_errors=ctx.get(rx.framing_errors), overruns=ctx.get(rx.overruns),
                        held=ctx.get(rx.bytes.payload) if ctx.get(rx.bytes.valid) else None)

    sim = Simulator(rx)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return bytes(got), counters


@pytest.mark.parametrize("divisor", [4, 7, 16])
def test_tx_sends_exactly_divisor_clocks_per_bit_back_to_back(divisor):
    data = bytes([0x55, 0xA3, 0x00, 0xFF, 0x51])
    tx = UARTTx(divisor)
    levels = []

    async def feed(ctx):
        for byte in data:
            ctx.set(tx.bytes.payload, byte)
            ctx.set(tx.bytes.valid, 1)
            await ctx.tick().until(tx.bytes.ready)
        ctx.set(tx.bytes.valid, 0)

    async def probe(ctx):
        for _ in range(len(data) * 10 * divisor + 40):
            levels.append(ctx.get(tx.pin))
            await ctx.tick()

    sim = Simulator(tx)
    sim.add_clock(1e-8)
    sim.add_testbench(feed, background=True)
    sim.add_testbench(probe)
    sim.run()
    start = levels.index(0)
    expected = [b for b in line_bits(data) for _ in range(divisor)]
    assert all(levels[:start])  # idle high before
    assert levels[start:start + len(expected)] == expected  # every bit exactly divisor clocks
    assert all(levels[start + len(expected):])  # and idle high after the last stop bit


@pytest.mark.parametrize("clocks_per_bit", [31, 32, 33])  # 3 % slow, exact, 3 % fast
def test_rx_samples_mid_bit_and_tolerates_three_percent_baud_error(clocks_per_bit):
    data = bytes(random.Random(clocks_per_bit).randrange(256) for _ in range(12)) + b"\x00\xff"
    got, counters = run_rx(waveform(line_bits(data), clocks_per_bit), divisor=32)
    assert got == data
    assert counters["framing_errors"] == 0 and counters["overruns"] == 0


def test_rx_ignores_a_glitch_shorter_than_half_a_bit():
    levels = [1] * 10 + [0] * 3 + [1] * 40 + waveform(line_bits(b"\x5a"), 16)
    got, counters = run_rx(levels, divisor=16)
    assert got == b"\x5a" and counters["framing_errors"] == 0


def test_missing_stop_bit_is_a_counted_framing_error_and_the_next_byte_arrives():
    bits = line_bits(b"\x42", stop=0) + [0] * 20 + [1] * 3 + line_bits(b"\x99")  # a break, then a byte
    got, counters = run_rx(waveform(bits, 8), divisor=8)
    assert got == b"\x99"  # the byte without a stop bit is discarded, not delivered
    assert counters["framing_errors"] == 1  # one count for the byte and the break that followed


def test_a_byte_arriving_while_the_last_is_unread_is_a_counted_overrun():
    got, counters = run_rx(waveform(line_bits(b"\x01\x02\x03"), 8), divisor=8, ready=False)
    assert counters["held"] == 0x01  # the unread byte stays
    assert counters["overruns"] == 2  # the two that found it unread are counted


def test_loopback_returns_every_byte():
    divisor = 5
    data = bytes(random.Random(7).randrange(256) for _ in range(40))
    uart = UART(divisor)
    top = Module()
    top.submodules.uart = uart
    top.d.comb += uart.rx_pin.eq(uart.tx_pin)
    got = []

    async def feed(ctx):
        for byte in data:
            ctx.set(uart.tx.payload, byte)
            ctx.set(uart.tx.valid, 1)
            await ctx.tick().until(uart.tx.ready)
        ctx.set(uart.tx.valid, 0)

    async def take(ctx):
        ctx.set(uart.rx.ready, 1)
        while len(got) < len(data):
            await ctx.tick()
            if ctx.get(uart.rx.valid):
                got.append(ctx.get(uart.rx.payload))

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(feed, background=True)
    sim.add_testbench(take)
    sim.run_until(1e-8 * (len(data) + 2) * 10 * divisor)
    assert bytes(got) == data
    # take() checks valid after every edge, so a byte held two clocks would count twice
    assert len(got) == len(data)


def test_divisor_for_the_ulx3s_default():
    assert divisor_for(200_000_000, 3_000_000) == 67
    with pytest.raises(ValueError):
        divisor_for(200_000_000, 80_000_000)
