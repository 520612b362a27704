"""The decoder's compiled fast path gives exactly what the numpy path gives: events, statistics
and the epoch it carries, on valid streams, garbage and any cut into batches."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnode.firmware.events import (
    MAX_CHANNELS,
    TIME_BITS,
    Kind,
    ProtocolVersionError,
    StreamDecoder,
    encode_events,
    epoch_word,
    header_word,
    max_epoch,
    pack_words,
)


def _decode_both(words, n_batches=1, bin_ps=None, channels=MAX_CHANNELS):
    """Decode with both paths, batch by batch; return (events, stats, epoch) of each, or the
    exception type each raised."""
    results = []
    for fast in (True, False):
        decoder = StreamDecoder(bin_ps=bin_ps, channels=channels, fast=fast)
        try:
            parts = [decoder.decode(chunk) for chunk in np.array_split(words, n_batches)]
        except ProtocolVersionError as err:
            results.append((type(err), err.seen))
            continue
        results.append((np.concatenate(parts), decoder.stats, decoder.epoch, decoder.bin_ps, decoder.channels))
    return results


def _assert_same(words, **kwargs):
    fast, slow = _decode_both(words, **kwargs)
    if isinstance(slow[0], type):
        assert fast == slow
        return slow
    np.testing.assert_array_equal(fast[0], slow[0])
    assert fast[0].dtype == slow[0].dtype
    assert fast[1:] == slow[1:]
    return slow


def _random_stream(rng, n, bin_ps=1000, channels=8):
    kinds = rng.choice([Kind.TAG] * 6 + [Kind.SYNC, Kind.HERALD, Kind.COINCIDENCE, Kind.LOSS], n)
    channel = rng.integers(0, channels, n)
    aux = np.where(kinds == Kind.TAG, 0, rng.integers(0, 1 << 22, n))
    time_bins = np.sort(rng.integers(0, 5 << TIME_BITS, n))
    words, _ = encode_events(kinds, channel, aux, time_bins)
    return np.concatenate([[header_word(bin_ps, channels)], words]).astype(np.uint64)


@pytest.mark.parametrize("seed", range(5))
def test_valid_streams_decode_identically_in_any_batches(seed):
    rng = np.random.default_rng(seed)
    words = _random_stream(rng, 20_000, bin_ps=[1000, 1250, 65535][seed % 3])
    events, stats, *_ = _assert_same(words, n_batches=1 + seed * 3)
    assert stats.invalid_words == 0 and len(events) == 20_000
    assert stats.lost_events > 0  # LOSS records were in the stream and were summed


@pytest.mark.parametrize("seed", range(5))
def test_garbage_is_counted_identically(seed):
    """Valid words, random words of every kind, bad epochs, bad channels, TAGs with aux, and
    headers (good ones, and kind-15 words without the magic) in one stream."""
    rng = np.random.default_rng(100 + seed)
    good = _random_stream(rng, 5000)[1:]
    noise = rng.integers(0, 1 << 63, 3000, dtype=np.int64).astype(np.uint64) << np.uint64(1)
    noise |= rng.integers(0, 2, 3000).astype(np.uint64)
    # random words of kind 15 fail the magic check (or carry a wrong version: see below)
    noise = noise[(noise >> np.uint64(60)) != 15]
    specials = np.array(
        [
            int(epoch_word(max_epoch(1000) + 1)),  # epoch past int64 ps
            int(epoch_word(max_epoch(1000))),  # the last epoch that fits
            int(pack_words(Kind.TAG, 9, 0, 5)),  # channel 9 of 8
            int(pack_words(Kind.TAG, 1, 7, 5)),  # TAG with aux
            int(pack_words(Kind.LOSS, 12, 5, 5)),  # LOSS on a channel that does not exist
            int(header_word(1250, 4)),  # a new time base mid-stream
            int(header_word(1000, 8)) | 1,  # header with reserved bits set: invalid
            0,
        ],
        np.uint64,
    )
    words = np.concatenate([good, noise, specials, np.repeat(specials, 3)])
    rng.shuffle(words)
    words = np.concatenate([[header_word(1000, 8)], words]).astype(np.uint64)
    events, stats, *_ = _assert_same(words, n_batches=1 + seed)
    assert stats.invalid_words > 3000 and stats.headers >= 2


def test_words_before_a_header_are_invalid_in_both_paths():
    rng = np.random.default_rng(7)
    headless = _random_stream(rng, 100)[1:]  # its EPOCH words are as undecodable as its events
    words = np.concatenate([headless, _random_stream(rng, 100)]).astype(np.uint64)
    events, stats, *_ = _assert_same(words)
    assert len(events) == 100 and stats.invalid_words == len(headless)


def test_version_mismatch_raises_in_both_paths():
    words = np.array([header_word(1000, 8), pack_words(Kind.TAG, 1, 0, 5),
                      header_word(1000, 8, version=9)], np.uint64)
    fast, slow = _decode_both(words)
    assert fast == slow == (ProtocolVersionError, 9)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, (1 << 64) - 1), max_size=60), st.integers(1, 4),
       st.sampled_from([None, 1000]))
def test_any_words_decode_identically(raw, n_batches, bin_ps):
    words = np.array(raw, np.uint64)
    _assert_same(words, n_batches=n_batches, bin_ps=bin_ps, channels=8)
