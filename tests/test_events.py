"""The event word contract: round trips, epoch unwrap, garbage handling, the documented example."""

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnode.firmware.events import (
    EVENT_DTYPE,
    PROTOCOL_VERSION,
    TIME_BITS,
    Kind,
    LossReason,
    ProtocolVersionError,
    StreamDecoder,
    StreamHeader,
    decode_words,
    encode_events,
    encode_tags,
    epoch_word,
    header_word,
    max_epoch,
    pack_words,
    split_aux,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "formats.md"
EVENT_KINDS = [Kind.TAG, Kind.SYNC, Kind.HERALD, Kind.COINCIDENCE, Kind.LOSS]


def _stream(kinds, channels, aux, time_bins, bin_ps=1000, channel_count=64):
    words, _ = encode_events(kinds, channels, aux, time_bins)
    return np.concatenate([[header_word(bin_ps, channel_count)], words]).astype(np.uint64)


def test_worked_example_in_docs():
    text = DOCS.read_text()
    words_block = re.search(r"```words\n(.*?)```", text, re.S).group(1)
    decoded_block = re.search(r"```decoded\n(.*?)```", text, re.S).group(1)
    words = np.array([int(line.split()[0], 16) for line in words_block.strip().splitlines()], np.uint64)
    rows = [line.split() for line in decoded_block.strip().splitlines()[1:]]

    events, stats = decode_words(words)

    assert len(events) == len(rows)
    for event, (time_ps, channel, kind, aux) in zip(events, rows):
        assert int(event["time_ps"]) == int(time_ps)
        assert int(event["channel"]) == int(channel)
        assert Kind(event["kind"]).name == kind
        assert int(event["aux"]) == int(aux)
    assert stats.invalid_words == 1
    assert stats.lost_events == 12 and stats.lost_by_channel == {5: 12}
    herald = split_aux(events[events["kind"] == Kind.HERALD])
    assert herald["herald_outcome"][0] == 1 and herald["herald_attempt"][0] == 17


event_lists = st.lists(
    st.tuples(
        st.sampled_from(EVENT_KINDS),
        st.integers(0, 63),
        st.integers(0, (1 << 22) - 1),
        st.integers(0, max_epoch(1000) * (1 << TIME_BITS)),
    ),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(event_lists, st.sampled_from([1000, 1250, 65535]))
def test_every_kind_round_trips(events, bin_ps):
    last_bin = ((max_epoch(bin_ps) + 1) << TIME_BITS) - 1
    events = [(k, c, 0 if k == Kind.TAG else a, min(t, last_bin)) for k, c, a, t in events]
    kinds = np.array([e[0] for e in events], np.uint8)
    channels = np.array([e[1] for e in events], np.uint8)
    aux = np.array([e[2] for e in events], np.uint32)
    time_bins = np.array([e[3] for e in events], np.int64)

    decoded, stats = decode_words(_stream(kinds, channels, aux, time_bins, bin_ps))

    assert stats.invalid_words == 0
    np.testing.assert_array_equal(decoded["kind"], kinds)
    np.testing.assert_array_equal(decoded["channel"], channels)
    np.testing.assert_array_equal(decoded["aux"], aux)
    np.testing.assert_array_equal(decoded["time_ps"], time_bins * bin_ps)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10), st.lists(st.integers(0, 3 * (1 << 32)), min_size=1, max_size=300),
       st.integers(1, 7))
def test_epoch_unwrap_across_rollover_and_batches(start_epoch, offsets, n_batches):
    """Times across 32-bit rollovers unwrap exactly, however the words are cut into batches."""
    time_bins = np.sort((start_epoch << 32) + np.array(offsets, np.int64))
    channels = np.arange(len(time_bins)) % 8
    words, _ = encode_tags(channels, time_bins)
    words = np.concatenate([[header_word(1000, 8)], words]).astype(np.uint64)

    decoder = StreamDecoder()
    parts = [decoder.decode(chunk) for chunk in np.array_split(words, n_batches)]
    decoded = np.concatenate(parts)

    np.testing.assert_array_equal(decoded["time_ps"], time_bins * 1000)
    np.testing.assert_array_equal(decoded["channel"], channels)
    assert decoder.stats.invalid_words == 0


def test_late_word_after_rollover_keeps_its_epoch():
    """A herald that leaves after a rollover but clicked before it: the EPOCH steps back."""
    time_bins = np.array([(1 << 32) - 5, (1 << 32) + 2, (1 << 32) - 3, (1 << 32) + 9])
    kinds = np.array([Kind.TAG, Kind.TAG, Kind.HERALD, Kind.TAG])
    decoded, _ = decode_words(_stream(kinds, [1, 2, 3, 1], 0, time_bins))
    np.testing.assert_array_equal(decoded["time_ps"], time_bins * 1000)


def test_header_carries_version_bin_and_channels():
    header = StreamHeader.from_word(header_word(1250, 8))
    assert header == StreamHeader(version=PROTOCOL_VERSION, bin_ps=1250, channels=8)


def test_version_mismatch_names_both_versions():
    with pytest.raises(ProtocolVersionError) as err:
        decode_words(np.array([header_word(1000, 8, version=PROTOCOL_VERSION + 1)], np.uint64))
    assert f"version {PROTOCOL_VERSION + 1}" in str(err.value)
    assert f"version {PROTOCOL_VERSION}" in str(err.value)


def test_garbage_is_counted_never_decoded():
    good = pack_words(Kind.TAG, 1, 0, 100)
    garbage = np.array(
        [
            0,  # all zeros: invalid kind
            (7 << 60) | 5,  # reserved kind
            int(pack_words(Kind.TAG, 9, 0, 50)),  # channel 9 of an 8-channel stream
            int(pack_words(Kind.TAG, 1, 3, 50)),  # TAG with aux set
            int(epoch_word(max_epoch(1000) + 1)),  # epoch past int64 ps
        ],
        np.uint64,
    )
    words = np.concatenate([[header_word(1000, 8)], garbage, [good]]).astype(np.uint64)
    decoded, stats = decode_words(words)
    assert stats.invalid_words == len(garbage)
    assert len(decoded) == 1 and decoded["time_ps"][0] == 100_000


def test_words_before_any_header_are_counted_when_time_base_unknown():
    decoder = StreamDecoder()
    out = decoder.decode(np.array([pack_words(Kind.TAG, 1, 0, 5)], np.uint64))
    assert len(out) == 0 and decoder.stats.invalid_words == 1
    out = decoder.decode(np.array([header_word(1000, 8), pack_words(Kind.TAG, 1, 0, 5)], np.uint64))
    assert out["time_ps"].tolist() == [5000]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, (1 << 64) - 1), max_size=300))
def test_random_words_never_crash_and_every_word_is_accounted(raw):
    """Whatever arrives, each word is an event, an epoch, a header, or counted invalid."""
    words = np.concatenate([[header_word(1000, 8)], np.array(raw, np.uint64)]).astype(np.uint64)
    try:
        decoded, stats = decode_words(words)
    except ProtocolVersionError:
        return  # a random word that is a header of another version: refused, by design
    assert stats.events + stats.invalid_words + stats.epochs + stats.headers == len(words)
    assert decoded.dtype == EVENT_DTYPE
    assert np.all(decoded["channel"] < 8)
    assert np.all(decoded["time_ps"] >= 0)


def test_loss_records_are_totalled_per_channel():
    aux = [(LossReason.CHANNEL_FIFO << 18) | 7, (LossReason.OUTPUT << 18) | 5, (LossReason.CHANNEL_FIFO << 18) | 1]
    decoded, stats = decode_words(_stream([Kind.LOSS] * 3, [2, 2, 4], aux, [1, 2, 3]))
    assert stats.lost_events == 13
    assert stats.lost_by_channel == {2: 12, 4: 1}
    assert split_aux(decoded)["loss_reason"].tolist() == [0, 2, 0]


def test_pack_refuses_fields_that_do_not_fit():
    with pytest.raises(ValueError):
        pack_words(Kind.TAG, 64, 0, 0)
    with pytest.raises(ValueError):
        pack_words(Kind.SYNC, 0, 1 << 22, 0)
