"""InputCapture: one word of N oversampled bits per channel per system clock.

Bit b of a channel's word is the input level at bin ``now * N + b`` (bit 0 is the earliest
sample). In simulation the testbench drives the words directly; on hardware a platform layer
(gateware/ulx3s.py) fills them from the FPGA's DDR/SERDES input primitives. This component
registers the words together with the coarse time they belong to, so everything downstream sees
a word and its time in the same clock.
"""

from amaranth import Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .params import TIME_BITS


def coarse_bits(oversampling: int) -> int:
    """Width of the clock counter: together with log2(N) fine bits it makes TIME_BITS bins."""
    return TIME_BITS - (oversampling.bit_length() - 1)


class InputCapture(wiring.Component):
    def __init__(self, channels: int, oversampling: int):
        self.channels = channels
        self.oversampling = oversampling
        words = data.ArrayLayout(oversampling, channels)
        super().__init__({
            "pins": In(words),  # word per channel for this clock, bit 0 earliest
            "now": In(coarse_bits(oversampling)),  # coarse time of this clock
            "samples": Out(words),  # the same words one clock later ...
            "sample_now": Out(coarse_bits(oversampling)),  # ... with the clock they were taken in
        })

    def elaborate(self, platform):
        m = Module()
        m.d.sync += [
            self.samples.eq(self.pins),
            self.sample_now.eq(self.now),
        ]
        return m
