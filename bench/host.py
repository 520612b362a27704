"""Benchmark: the host's hot paths, against peers on identical input.

Input: a Poisson stream like the reference lab's pair source (lab_configs/sim.toml): 10 M tags
on two channels, spdc_a at 85 kHz and spdc_b at 102 kHz, 8.7 k pairs/s with spdc_b 4700 ps
after spdc_a (71 ps RMS), times on the simulated gateware's 1000-ps bins (53 s of lab time).

Sections (each a function returning its JSON keys and table rows; add one to SECTIONS):
- decode: 64-bit words -> EVENT_DTYPE batches (StreamDecoder, fast path), unwrap included
- coincidence: CoincidenceCounter, the (1, 2) pair pattern in a 10 ns window
- g2: CorrelationHistogram(1, 2, 1000-ps bins, +-100 ns) against tttrlib's Correlator and
  pycorrelate.pcorrelate computing the same 200 bins; results_equal says whether both peers
  gave exactly qnode's counts.

Median of repeats; in the g2 section qnode and the peers take turns, so load from other jobs
on the shared machine hits them alike. Prints a table and writes bench/results/host.json;
other sections (recording, RPC) merge their keys into the same file.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from qnode.firmware.events import EVENT_DTYPE, Kind, StreamDecoder, encode_tags, header_word
from qnode.host.measurements import CoincidenceCounter, CorrelationHistogram, CountRates

RESULTS = Path(__file__).resolve().parent / "results"
N_TAGS = 10_000_000
BIN_PS = 1000  # the simulated gateware's time bin: all times are multiples of it
RATE_A_HZ, RATE_B_HZ, PAIR_RATE_HZ = 85e3, 102e3, 8.7e3  # spdc_a, spdc_b, detected pairs
DELAY_PS, JITTER_PS = 4700, 71  # spdc_b after spdc_a; two 50-ps detectors in quadrature
G2_BIN_PS, G2_RANGE_PS = 1000, 100_000
COINCIDENCE_WINDOW_PS = 10_000
# 8 MiB of words a batch: 3 ms of a 300 M tags/s stream. Smaller batches decode slower (fixed
# cost per call) and their outputs, under numpy's 4 MiB huge-page threshold, fault in 4 KiB pages.
DECODE_BATCH_WORDS = 1 << 20
MEASURE_BATCH_EVENTS = 1 << 20
REPEATS = 7
G2_ROUNDS = 5  # qnode and both peers in turn, five times (pycorrelate takes seconds a run)


def poisson_pairs(n_tags: int, seed: int = 1) -> np.ndarray:
    """Time-ordered TAG events (EVENT_DTYPE) on channels 1 and 2, pair-correlated."""
    rng = np.random.default_rng(seed)
    span_ps = n_tags / (RATE_A_HZ + RATE_B_HZ) * 1e12

    def poisson(rate_hz):
        return np.sort(rng.uniform(0, span_ps, rng.poisson(rate_hz * span_ps * 1e-12)))

    pairs = poisson(PAIR_RATE_HZ)
    t_a = np.concatenate([poisson(RATE_A_HZ - PAIR_RATE_HZ), pairs])
    t_b = np.concatenate([poisson(RATE_B_HZ - PAIR_RATE_HZ),
                          pairs + DELAY_PS + rng.normal(0, JITTER_PS, len(pairs))])
    time_ps = (np.concatenate([t_a, t_b]) // BIN_PS).astype(np.int64) * BIN_PS
    channel = np.concatenate([np.full(len(t_a), 1), np.full(len(t_b), 2)]).astype(np.uint8)
    order = np.lexsort((channel, time_ps))
    events = np.zeros(len(order), EVENT_DTYPE)
    events["time_ps"] = time_ps[order]
    events["channel"] = channel[order]
    events["kind"] = Kind.TAG
    return events


def median_time(fn, repeats=REPEATS):
    fn()  # compile, warm caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def batches(array, size):
    return [array[i:i + size] for i in range(0, len(array), size)]


# ---------------------------------------------------------------------------------------
# Sections: each takes the shared input and returns (json keys, table rows)


def section_decode(events):
    words, _ = encode_tags(events["channel"], events["time_ps"] // BIN_PS)
    words = np.concatenate([[header_word(BIN_PS, 8)], words]).astype(np.uint64)
    word_batches = batches(words, DECODE_BATCH_WORDS)

    def decode(fast=True, keep=False):
        decoder = StreamDecoder(fast=fast)
        kept = []
        for batch in word_batches:
            out = decoder.decode(batch)
            if keep:
                kept.append(out)
        assert decoder.stats.events == len(events) and decoder.stats.invalid_words == 0
        return kept

    check = np.concatenate(decode(keep=True))
    assert np.array_equal(check, events)
    n = len(events)
    fast = n / median_time(decode) / 1e6
    # Keeping every batch (a 140 MB result) makes the OS map fresh pages for each: that costs
    # more than the decode, so it is reported apart; the daemon drops a batch once fanned out.
    kept = n / median_time(lambda: decode(keep=True), 3) / 1e6
    numpy_path = n / median_time(lambda: decode(fast=False), 3) / 1e6
    keys = {"decode_mtags_s": fast, "decode_kept_mtags_s": kept, "decode_numpy_mtags_s": numpy_path,
            "decode_words": len(words), "decode_batch_words": DECODE_BATCH_WORDS}
    rows = [("decode + unwrap (fast path)", f"{fast:.0f}", ">= 300", ""),
            ("  same, every batch kept in memory", f"{kept:.0f}", "", "page faults"),
            ("  same, numpy path", f"{numpy_path:.0f}", "", "")]
    return keys, rows


def section_coincidence(events):
    event_batches = batches(events, MEASURE_BATCH_EVENTS)
    pattern = ((1, 2), COINCIDENCE_WINDOW_PS, 2)

    def run():
        counter = CoincidenceCounter([pattern])
        for batch in event_batches:
            counter.add(batch)
        return counter.counts

    rate = len(events) / median_time(run) / 1e6
    keys = {"coincidence_mtags_s": rate, "coincidence_pattern": list(pattern[0]),
            "coincidence_window_ps": COINCIDENCE_WINDOW_PS, "coincidences": int(run()[0])}
    return keys, [("coincidences, pair (1, 2), 10 ns", f"{rate:.0f}", ">= 100", "")]


def _tttrlib_g2(t_a_bins, t_b_bins, n_bins):
    """tttrlib's correlator on integer bins. It correlates positive lags only, so b is shifted
    by the range: lag k of (a, b + n_bins / 2) is qnode's bin k, one run for all 200 bins."""
    import tttrlib

    # 'felekyan' counts lag 0 too ('wahl' leaves it out); one cascade = linear lags 0..n_bins
    corr = tttrlib.Correlator(method="felekyan", n_bins=n_bins, n_casc=1)
    corr.set_events(t_a_bins, np.ones(len(t_a_bins)), t_b_bins + np.uint64(n_bins // 2),
                    np.ones(len(t_b_bins)))
    return np.rint(np.asarray(corr.get_corr())[:n_bins]).astype(np.int64)


def _pycorrelate_g2(t_a, t_b, edges_ps):
    import pycorrelate

    density = pycorrelate.pcorrelate(t_a, t_b, edges_ps)  # counts / bin width
    return np.rint(density * np.diff(edges_ps)).astype(np.int64)


def section_g2(events):
    """qnode and the peers run in turn, round after round, so a change in the shared machine's
    load hits all of them alike and the ratios hold."""
    event_batches = batches(events, MEASURE_BATCH_EVENTS)
    n = len(events)

    def run():
        hist = CorrelationHistogram(1, 2, G2_BIN_PS, G2_RANGE_PS)
        for batch in event_batches:
            hist.add(batch)
        return hist

    # The same kernel on columns (time_ps, channel), as a recording is read: no kind to check.
    time_ps, channel = np.ascontiguousarray(events["time_ps"]), np.ascontiguousarray(events["channel"])

    def run_columns():
        hist = CorrelationHistogram(1, 2, G2_BIN_PS, G2_RANGE_PS)
        for i in range(0, n, MEASURE_BATCH_EVENTS):
            hist.add_tags(time_ps[i:i + MEASURE_BATCH_EVENTS], channel[i:i + MEASURE_BATCH_EVENTS])
        return hist

    def scan():
        # What any kernel on EVENT_DTYPE batches pays to read them: one pass that reads kind,
        # channel and time of every event and counts tags per channel.
        rates = CountRates()
        for batch in event_batches:
            rates.add(batch)

    # Peers take each channel's times in their own input form, prepared outside the timing.
    t_a = np.ascontiguousarray(events["time_ps"][events["channel"] == 1])
    t_b = np.ascontiguousarray(events["time_ps"][events["channel"] == 2])
    t_a_bins, t_b_bins = (t_a // G2_BIN_PS).astype(np.uint64), (t_b // G2_BIN_PS).astype(np.uint64)
    n_bins = 2 * G2_RANGE_PS // G2_BIN_PS
    edges_ps = np.arange(-G2_RANGE_PS, G2_RANGE_PS + 1, G2_BIN_PS, dtype=np.int64)
    tools = {"qnode": run, "qnode_columns": run_columns, "scan": scan,
             "tttrlib": lambda: _tttrlib_g2(t_a_bins, t_b_bins, n_bins),
             "pycorrelate": lambda: _pycorrelate_g2(t_a, t_b, edges_ps)}

    ours = run()
    assert np.array_equal(run_columns().counts, ours.counts)
    results, missing = {}, {}
    for name in ("tttrlib", "pycorrelate"):
        try:
            results[name] = tools[name]()  # also compiles pycorrelate's numba code
        except ImportError as err:  # `make bench-host` installs them; a bare run may not have
            missing[name] = str(err)
            del tools[name]
    seconds = {name: [] for name in tools}
    for _ in range(G2_ROUNDS):
        for name, fn in tools.items():
            t0 = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - t0)
    rate = {name: n / statistics.median(s) / 1e6 for name, s in seconds.items()}

    keys = {"g2_mtags_s": rate["qnode"], "g2_columns_mtags_s": rate["qnode_columns"],
            "scan_mtags_s": rate["scan"], "g2_rounds": G2_ROUNDS, "g2_bin_ps": G2_BIN_PS,
            "g2_range_ps": G2_RANGE_PS, "g2_pairs": int(ours.counts.sum()),
            "g2_car": ours.car(window_ps=2 * G2_BIN_PS).car}
    rows = [("stream scan floor (CountRates)", f"{rate['scan']:.0f}", "", "reads every event"),
            ("g2, 200 bins of 1 ns: qnode", f"{rate['qnode']:.0f}", ">= 100", ""),
            ("  same, on columns (file form)", f"{rate['qnode_columns']:.0f}", "", "")]
    equal = not missing
    for name in ("tttrlib", "pycorrelate"):
        if name in missing:
            keys[f"{name}_g2_mtags_s"] = None
            rows.append((f"  {name}", "-", "", f"not installed: {missing[name]}"))
            continue
        same = bool(np.array_equal(results[name], ours.counts))
        equal &= same
        keys[f"{name}_g2_mtags_s"] = rate[name]
        keys[f"{name}_g2_equal"] = same
        keys[f"{name}_g2_speedup"] = rate["qnode"] / rate[name]
        rows.append((f"  {name}", f"{rate[name]:.2f}", "", f"qnode {rate['qnode'] / rate[name]:.0f}x; "
                     + ("equal" if same else "DIFFERENT")))
    keys["results_equal"] = equal
    return keys, rows


SECTIONS = {"decode": section_decode, "coincidence": section_coincidence, "g2": section_g2}


def main(sections=SECTIONS):
    events = poisson_pairs(N_TAGS)
    counts = np.bincount(events["channel"], minlength=3)
    span_s = (int(events["time_ps"][-1]) - int(events["time_ps"][0])) * 1e-12
    out = {"benchmark": "host", "machine": platform.machine(), "processor": platform.processor(),
           "python": platform.python_version(), "repeats": REPEATS, "g2_rounds": G2_ROUNDS,
           "input": {"tags": len(events), "tags_ch1": int(counts[1]), "tags_ch2": int(counts[2]),
                     "span_s": span_s, "bin_ps": BIN_PS, "delay_ps": DELAY_PS,
                     "measure_batch_events": MEASURE_BATCH_EVENTS}}
    table = Table(title=f"host: {len(events) / 1e6:.0f} M tags, 2 channels, {span_s:.0f} s of lab time "
                        "(M tags/s per core, median)")
    for col, justify in (("what", "left"), ("M tags/s", "right"), ("target", "right"), ("", "left")):
        table.add_column(col, justify=justify)
    for name, section in sections.items():
        keys, rows = section(events)
        out.update(keys)
        for row in rows:
            table.add_row(*row)
    Console().print(table)
    print(f"results_equal: {out.get('results_equal')}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "host.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous.update(out)  # keep keys other sections wrote
    path.write_text(json.dumps(previous, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
