"""UART PHY: 8N1 bytes on two pins, as ``amaranth.lib.stream`` byte streams.

``divisor`` is the bit time in system clocks (``round(sys_clk_hz / baud)``): 200 MHz / 3 Mbaud gives
67 (2.985 Mbaud, -0.5 %, well inside the +-4 % an 8N1 receiver tolerates at mid-bit sampling).

- ``UARTRx``: the pin passes a 2-FF synchroniser (it is asynchronous to the system clock); a
  low level after an idle line starts a byte; each bit is sampled at its middle (start bit at
  ``divisor // 2`` clocks, then every ``divisor``); a start bit that is high again at its middle
  was a glitch and is ignored. A stop bit that reads 0 is a framing error: the byte is discarded,
  ``framing_errors`` counts it, and the receiver waits for the line to go high (a break or a
  baud mismatch costs one count per low stretch, not one per bit time). A byte that completes
  while the previous one is still unread is an overrun: the new byte is dropped and counted in
  ``overruns`` -- never silently.
- ``UARTTx``: idle high; takes a byte when idle and sends start, 8 data bits LSB first, stop,
  each exactly ``divisor`` clocks.
"""

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

COUNTER_BITS = 16  # error counters wrap


def divisor_for(sys_clk_hz: int, baud: int) -> int:
    """Clocks per bit for ``baud``; refuses rates the clock cannot make within 2 %."""
    divisor = round(sys_clk_hz / baud)
    if divisor < 4:
        raise ValueError(f"{baud} baud needs at least 4 clocks per bit at {sys_clk_hz} Hz")
    error = abs(sys_clk_hz / divisor - baud) / baud
    if error > 0.02:
        raise ValueError(f"{baud} baud is {error:.1%} off at {sys_clk_hz} Hz / {divisor}")
    return divisor


class UARTRx(wiring.Component):
    """Pin -> bytes. ``bytes`` is a stream: a byte waits in ``payload`` until taken."""

    def __init__(self, divisor: int):
        if divisor < 4:
            raise ValueError("divisor must be >= 4 clocks per bit")
        self.divisor = divisor
        super().__init__({
            "pin": In(1, init=1),
            "bytes": Out(stream.Signature(8)),
            "framing_errors": Out(COUNTER_BITS),
            "overruns": Out(COUNTER_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        rx = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.pin, rx, init=1)

        timer = Signal(range(self.divisor))
        bit = Signal(range(8))
        shift = Signal(8)

        with m.If(self.bytes.valid & self.bytes.ready):
            m.d.sync += self.bytes.valid.eq(0)

        with m.If(timer != 0):
            m.d.sync += timer.eq(timer - 1)

        with m.FSM():
            with m.State("IDLE"):  # line high: wait for a start bit
                with m.If(~rx):
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    with m.If(rx):  # high again at mid start bit: a glitch
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [timer.eq(self.divisor - 1), bit.eq(0)]
                        m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [shift.eq(shift[1:] | (rx << 7)), timer.eq(self.divisor - 1),
                                 bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(rx):
                        with m.If(self.bytes.valid & ~self.bytes.ready):
                            m.d.sync += self.overruns.eq(self.overruns + 1)
                        with m.Else():
                            m.d.sync += [self.bytes.payload.eq(shift), self.bytes.valid.eq(1)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += self.framing_errors.eq(self.framing_errors + 1)
                        m.next = "BREAK"
            with m.State("BREAK"):  # after a framing error: wait for the idle level
                with m.If(rx):
                    m.next = "IDLE"
        return m


class UARTTx(wiring.Component):
    """Bytes -> pin. ``bytes.ready`` is high while the transmitter is idle."""

    def __init__(self, divisor: int):
        if divisor < 4:
            raise ValueError("divisor must be >= 4 clocks per bit")
        self.divisor = divisor
        super().__init__({
            "bytes": In(stream.Signature(8)),
            "pin": Out(1, init=1),
        })

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        frame = Signal(9)  # data[7:0] then stop, shifted out LSB first after the start bit
        remaining = Signal(range(10))  # bits still to start after the one on the pin
        busy = Signal()

        # ``ready`` is ~busy | (the stop bit's last clock), kept in a register so that the
        # link engine's handshake logic starts from a flip-flop: it rises with the clock in which
        # timer goes 1 -> 0 on the stop bit (divisor >= 4, so never right after a load).
        ready = Signal(init=1)
        last_clock = busy & (timer == 0) & (remaining == 0)  # the stop bit's last clock
        m.d.comb += self.bytes.ready.eq(ready)
        with m.If(self.bytes.valid & ready):
            # back to back: the next start bit follows the stop bit with no idle clock
            m.d.sync += [self.pin.eq(0), frame.eq((1 << 8) | self.bytes.payload), remaining.eq(9),
                         timer.eq(self.divisor - 1), busy.eq(1), ready.eq(0)]
        with m.Elif(last_clock):
            m.d.sync += busy.eq(0)
        with m.Elif(busy & (timer == 0)):
            m.d.sync += [self.pin.eq(frame[0]), frame.eq(frame >> 1), remaining.eq(remaining - 1),
                         timer.eq(self.divisor - 1)]
        with m.Elif(busy):
            m.d.sync += timer.eq(timer - 1)
            with m.If((timer == 1) & (remaining == 0)):
                m.d.sync += ready.eq(1)
        return m


class UART(wiring.Component):
    """Both directions at one bit time: ``rx_pin`` -> ``rx`` bytes, ``tx`` bytes -> ``tx_pin``."""

    def __init__(self, divisor: int):
        self.divisor = divisor
        super().__init__({
            "rx_pin": In(1, init=1),
            "tx_pin": Out(1, init=1),
            "rx": Out(stream.Signature(8)),
            "tx": In(stream.Signature(8)),
            "framing_errors": Out(COUNTER_BITS),
            "overruns": Out(COUNTER_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.receiver = rx = UARTRx(self.divisor)
        m.submodules.transmitter = tx = UARTTx(self.divisor)
        m.d.comb += [rx.pin.eq(self.rx_pin), self.tx_pin.eq(tx.pin),
                     self.framing_errors.eq(rx.framing_errors), self.overruns.eq(rx.overruns)]
        wiring.connect(m, wiring.flipped(self.rx), rx.bytes)
        wiring.connect(m, wiring.flipped(self.tx), tx.bytes)
        return m
