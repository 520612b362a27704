"""Run TimeTaggerCore in the Amaranth simulator on sample words and a ready pattern.

Clock c (counted from reset) puts ``samples[c]`` on the pins and ``ready[c]`` on the output
stream; a word counts as delivered in clock c when valid and ready are both high at that edge.
This is the same clock numbering as sim/twin.py, so the two are compared word for word.
"""

from __future__ import annotations

import numpy as np
from amaranth.sim import Simulator

from .core import TimeTaggerCore


def pack_pins(words_row, oversampling: int) -> int:
    value = 0
    for ch, word in enumerate(words_row):
        value |= int(word) << (ch * oversampling)
    return value


def simulate_core(core: TimeTaggerCore, samples: np.ndarray, ready: np.ndarray | None = None,
                  settings: dict[str, list[int]] | None = None,
                  read: list[int] = ()) -> tuple[np.ndarray, dict[int, int]]:
    """Returns the delivered words and the values of the ``read`` register addresses after the
    last clock. ``settings`` (register name -> per-channel values) are in place from reset, as
    a host sets them while the core is held in reset."""
    n = core.oversampling
    ready = np.ones(len(samples), bool) if ready is None else np.asarray(ready, bool)
    out: list[int] = []
    values: dict[int, int] = {}
    pins = [pack_pins(row, n) for row in np.asarray(samples)]

    async def bench(ctx):
        for name, per_channel in (settings or {}).items():
            for i, value in enumerate(per_channel):
                ctx.set(core.regs.rw[name][i], value)
        for c in range(len(samples)):
            ctx.set(core.pins.as_value(), pins[c])
            ctx.set(core.words.ready, int(ready[c]))
            if ready[c] and ctx.get(core.words.valid):
                out.append(ctx.get(core.words.payload))
            await ctx.tick()
        ctx.set(core.words.ready, 0)
        for addr in read:
            ctx.set(core.addr, addr)
            await ctx.tick()
            values[addr] = ctx.get(core.r_data)

    sim = Simulator(core)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return np.array(out, dtype=np.uint64), values
