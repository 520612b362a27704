"""CoincidenceUnit in the Amaranth simulator: the host's window definition (opens at a click,
holds clicks up to and including window later, each click in at most one window, counts once at
min_fold distinct channels), bursts and overlapping windows, clicks exactly at the window edge,
records behind their entry, back-pressure; and against sim/twin_herald.py and the host's
CoincidenceCounter on random streams."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from qnode.gateware.coincidence import PATTERNS, CoincidenceUnit
from qnode.host.measurements import CoincidenceCounter, CoincidencePattern
from qnode.sim.twin_herald import coincidences, marked_stream


def run(stream, patterns, emit=None, ready_every=1, loss=None):
    """stream: (time_bins, channel) in merged order; patterns: (mask, window_bins, min_fold).
    Returns the rows the unit passes on (coincidence, channel, time, count) and the counts."""
    dut = CoincidenceUnit()
    emit = (1 << len(patterns)) - 1 if emit is None else emit
    loss = loss or set()
    out, counts = [], [0] * PATTERNS
    expected_rows = len(stream) + 64 * len(patterns)

    async def bench(ctx):
        for p, (mask, window, fold) in enumerate(patterns):
            ctx.set(dut.masks[p], mask)
            ctx.set(dut.windows[p], window)
            ctx.set(dut.min_folds[p], fold)
        ctx.set(dut.emit, emit)
        await ctx.tick()  # the fold each pattern needs is registered from the settings
        i = clock = 0
        idle = 0
        while idle < 12 and clock < 40 * expected_rows:
            if i < len(stream):
                t, ch = stream[i]
                ctx.set(dut.merged.valid, 1)
                ctx.set(dut.merged.payload, {"entry": {"time": t, "loss": int(i in loss)},
                                             "channel": ch})
            else:
                ctx.set(dut.merged.valid, 0)
            ready = clock % ready_every == 0
            ctx.set(dut.marked.ready, ready)
            took = ctx.get(dut.merged.ready) and i < len(stream)
            c = ctx.get(dut.counted)
            for p in range(PATTERNS):
                counts[p] += (c >> p) & 1
            if ctx.get(dut.marked.valid) and ready:
                q = ctx.get(dut.marked.payload)
                out.append((q.coincidence, q.channel, q.entry.time,
                            q.entry.count if q.coincidence else q.entry.loss))
                idle = 0
            else:
                idle += i >= len(stream)
            if took:
                i += 1
            clock += 1
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out, counts


def coincidence_rows(out):
    return [row for row in out if row[0] == 1]


def test_pair_inside_and_exactly_at_the_window_edge():
    # window 10 bins: 100 -> 110 is in (inclusive), 200 -> 211 is not
    out, counts = run([(100, 1), (110, 2), (200, 1), (211, 2)], [(0b110, 10, 2)])
    assert coincidence_rows(out) == [(1, 0, 100, 0b110)]
    assert counts[0] == 1
    # every entry passes through, the record right behind the entry that completed it
    assert [r[:3] for r in out] == [(0, 1, 100), (0, 2, 110), (1, 0, 100), (0, 1, 200), (0, 2, 211)]


def test_a_burst_counts_once_and_each_click_belongs_to_one_window():
    # 1 1 2 2 1 within 10 bins: one window, one count; the click at 111 opens a new window
    # (it is 11 after the opener even though only 1 after the previous click) and 112 joins it
    stream = [(100, 1), (102, 1), (104, 2), (106, 2), (108, 1), (111, 2), (112, 1)]
    out, counts = run(stream, [(0b110, 10, 2)])
    assert coincidence_rows(out) == [(1, 0, 100, 0b110), (1, 0, 111, 0b110)]
    assert counts[0] == 2


def test_two_of_three_counts_once_and_the_mask_names_the_channels():
    patterns = [(0b1110, 20, 2), (0b1110, 20, 0)]  # 2-of-3, and 3-of-3 (fold 0 = all)
    stream = [(100, 3), (105, 1), (110, 2), (200, 2), (210, 3)]
    out, counts = run(stream, patterns)
    assert coincidence_rows(out) == [(1, 0, 100, 0b1010), (1, 1, 100, 0b1110), (1, 0, 200, 0b1100)]
    assert counts[:2] == [2, 1]


def test_one_entry_completing_several_patterns_emits_in_pattern_order():
    patterns = [(0b11, 5, 2), (0b110, 5, 2), (0b111, 5, 0), (0b1, 5, 1)]
    out, counts = run([(10, 0), (11, 2), (12, 1)], patterns, ready_every=3)
    assert out[:2] == [(0, 0, 10, 0), (1, 3, 10, 0b1)]
    assert out[3:] == [(0, 1, 12, 0), (1, 0, 10, 0b11), (1, 1, 11, 0b110),
                                    (1, 2, 10, 0b111)]
    assert counts[:4] == [1, 1, 1, 1]


def test_loss_records_pass_through_and_take_no_part():
    out, counts = run([(100, 1), (101, 2), (102, 2)], [(0b110, 10, 2)], loss={1})
    assert coincidence_rows(out) == [(1, 0, 100, 0b110)]
    assert [r[3] for r in out if r[0] == 0] == [0, 1, 0]


def test_emit_off_counts_without_records():
    out, counts = run([(100, 1), (101, 2)], [(0b110, 10, 2)], emit=0)
    assert coincidence_rows(out) == [] and counts[0] == 1 and len(out) == 2


def random_stream(rng, n, channels=4, span=4000):
    t = np.sort(rng.integers(0, span, n))
    ch = rng.integers(0, channels, n)
    order = np.lexsort((ch, t))
    return [(int(a), int(b)) for a, b in zip(t[order], ch[order])]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_stream_against_the_twin_and_the_host(seed):
    rng = np.random.default_rng(seed)
    stream = random_stream(rng, 400)
    patterns = [(int(rng.integers(1, 16)), int(rng.integers(0, 40)), int(rng.integers(0, 3)))
                for _ in range(PATTERNS)]
    patterns = [(m, w, min(f, bin(m).count("1"))) for m, w, f in patterns]
    emit = int(rng.integers(0, 256))
    out, counts = run(stream, patterns, emit=emit, ready_every=int(rng.integers(1, 3)))
    t = np.array([s[0] for s in stream])
    ch = np.array([s[1] for s in stream])
    masks, windows, folds = zip(*patterns)
    rows, twin_counts = marked_stream(t, ch, masks, windows, folds, emit)
    assert out == [tuple(int(x) for x in r) for r in rows]
    assert counts == list(twin_counts)
    assert sum(r[0] for r in out) > 5
    # the host's CoincidenceCounter counts the same windows (1 bin = 1 ps here)
    host = CoincidenceCounter([CoincidencePattern(tuple(c for c in range(4) if m >> c & 1), w, f or None)
                               for m, w, f in patterns])
    events = np.zeros(len(t), dtype=[("time_ps", "i8"), ("channel", "u1"), ("kind", "u1"), ("aux", "u4")])
    events["time_ps"], events["channel"], events["kind"] = t, ch, 1
    host.add(events)
    assert list(host.counts) == list(coincidences(t, ch, masks, windows, folds).counts)


@pytest.mark.parametrize("seed", [5, 6])
def test_windows_across_high_part_blocks_against_the_twin(seed):
    # The unit tests a window's high time bits per block of 2**LOW_BITS bins, tracked from tag
    # to tag: clicks close to block edges, windows that carry into the next block, gaps of
    # exactly one and two blocks and far ones, non-member tags in between and long windows.
    from qnode.gateware.coincidence import LOW_BITS

    rng = np.random.default_rng(seed)
    block = 1 << LOW_BITS
    edges = np.cumsum(rng.choice([0, 1, 1, 2, 3, 1000], 40)) * block
    t = (edges[:, None] + rng.integers(-70_000, 70_000, (len(edges), 8))).ravel()  # 8 clicks per edge
    t = t[t >= 0]
    ch = rng.integers(0, 6, len(t))
    order = np.lexsort((ch, t))
    stream = [(int(a), int(b)) for a, b in zip(t[order], ch[order])]
    patterns = [(0b11, 65_535, 2), (0b111, 40_000, 2), (0b1010, 30_000, 0), (0b110000, 65_535, 1)]
    out, counts = run(stream, patterns, ready_every=2)
    t, ch = t[order], ch[order]
    masks, windows, folds = zip(*patterns)
    rows, twin_counts = marked_stream(t, ch, masks, windows, folds, (1 << len(patterns)) - 1)
    assert out == [tuple(int(x) for x in r) for r in rows]
    assert counts[:len(patterns)] == list(twin_counts) and min(counts[:3]) > 3


def test_one_entry_per_clock_when_no_record_is_owed():
    # the unit must not slow the merger's 1 event/clock: 40 entries, no coincidence, ready always
    dut = CoincidenceUnit()
    stream = [(10 * i, i % 3) for i in range(40)]
    taken = []

    async def bench(ctx):
        ctx.set(dut.masks[0], 0b11)
        ctx.set(dut.windows[0], 2)  # entries 10 bins apart never coincide
        ctx.set(dut.min_folds[0], 2)
        ctx.set(dut.marked.ready, 1)
        i = 0
        for clock in range(60):
            if i < len(stream):
                ctx.set(dut.merged.valid, 1)
                ctx.set(dut.merged.payload, {"entry": {"time": stream[i][0]}, "channel": stream[i][1]})
            else:
                ctx.set(dut.merged.valid, 0)
            if ctx.get(dut.merged.ready) and i < len(stream):
                taken.append(clock)
                i += 1
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert taken == list(range(40))
