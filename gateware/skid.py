"""SkidBuffer: a two-entry register slice on a stream, so neither side's logic reaches the other's.

Behaviour: a FIFO of two entries. The input is ready while fewer than two are held (a register:
no path from the output's ready to the input's), the output shows the oldest entry from a
register (no path from the input's payload to the output's), and an entry written in one clock
shows at the output in the next. With the output always ready it passes one entry per clock,
one clock late; a stall of the output fills the second entry, then stops the input.

sim/twin.py models it as exactly that two-entry FIFO (``sk_*``).
"""

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out


class SkidBuffer(wiring.Component):
    def __init__(self, layout):
        super().__init__({
            "input": In(stream.Signature(layout)),
            "output": Out(stream.Signature(layout)),
        })

    def elaborate(self, platform):
        m = Module()
        main_valid = Signal()  # the oldest entry, shown at the output
        main = Signal.like(self.input.payload)
        extra_valid = Signal()  # the second entry, which arrived while the output stalled
        extra = Signal.like(self.input.payload)
        m.d.comb += [
            self.output.valid.eq(main_valid), self.output.payload.eq(main),
            self.input.ready.eq(~extra_valid),
        ]
        pushed = self.input.valid & ~extra_valid
        popped = main_valid & self.output.ready
        with m.If(popped | ~main_valid):
            # main takes the second entry if there is one, else whatever arrives
            with m.If(extra_valid):
                m.d.sync += [main.eq(extra), main_valid.eq(1), extra_valid.eq(0)]
            with m.Else():
                m.d.sync += [main.eq(self.input.payload), main_valid.eq(pushed)]
        with m.Elif(pushed):
            m.d.sync += [extra.eq(self.input.payload), extra_valid.eq(1)]
        return m
