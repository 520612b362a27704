"""The 64-bit event word: layout, time base, and vectorised encode/decode.

This module is the single definition of what the gateware sends and the host reads.
docs/formats.md explains it with a worked example; tests/test_events.py decodes that example.

Layout of every word except EPOCH and HEADER::

    63      60 59      54 53                     32 31                      0
    +---------+----------+-------------------------+-------------------------+
    |  kind   | channel  |        aux (22)         |   time_bins low 32 bits |
    +---------+----------+-------------------------+-------------------------+

EPOCH carries the high bits of the time in bins: ``epoch = time_bins >> 32`` in bits [59:0].
Every following word's time is ``(epoch << 32) | time_low`` until the next EPOCH. The gateware
sends an EPOCH before any word whose high bits differ from the last EPOCH it sent, so an EPOCH
can repeat or even step back (a herald that leaves after a rollover but clicked before it).

HEADER opens a stream and resets the epoch to 0. It carries a magic byte, the protocol version,
the bin width in ps and the channel count, so a stream explains itself.

Time base: ``time_ps = time_bins * bin_ps``, with ``bin_ps = clock period / oversampling``
(an integer: 125 MHz x 8 gives 1000 ps, 200 MHz x 4 gives 1250 ps). int64 picoseconds last
106 days, so epochs past that are refused as garbage.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
from numba import njit

PROTOCOL_VERSION = 1
"""Version of the event format and link protocol. Host and gateware must agree exactly."""

HEADER_MAGIC = 0x71  # ASCII 'q'

KIND_SHIFT = 60
CHANNEL_SHIFT = 54
AUX_SHIFT = 32
CHANNEL_BITS = 6
AUX_BITS = 22
TIME_BITS = 32
EPOCH_BITS = 60

MAX_CHANNELS = 1 << CHANNEL_BITS
AUX_MASK = (1 << AUX_BITS) - 1
TIME_MASK = (1 << TIME_BITS) - 1
EPOCH_MASK = (1 << EPOCH_BITS) - 1

# HERALD aux: outcome (4 bits) over the attempt number modulo 2**18.
HERALD_ATTEMPT_BITS = 18
# LOSS aux: reason (4 bits) over the number of dropped events (up to 2**18 - 1 per record).
LOSS_COUNT_BITS = 18
LOSS_COUNT_MAX = (1 << LOSS_COUNT_BITS) - 1


class Kind(enum.IntEnum):
    """Word kinds (bits 63:60). 0 and 7-14 are invalid: an all-zero word is garbage."""

    TAG = 1  # detector pulse: channel, time. aux must be 0.
    SYNC = 2  # attempt marker from the sync channel: aux = attempt number mod 2**22
    HERALD = 3  # success: channel = deciding detector, aux = outcome << 18 | attempt mod 2**18
    COINCIDENCE = 4  # channel = pattern index, aux = mask of channels that clicked, time = first
    LOSS = 5  # dropped events: channel, aux = reason << 18 | count, time = first dropped event
    EPOCH = 6  # high bits of time for the words that follow
    HEADER = 15  # stream start: magic, protocol version, bin width, channel count


class LossReason(enum.IntEnum):
    """Where events were dropped (LOSS aux bits 21:18)."""

    CHANNEL_FIFO = 0  # a channel's FIFO was full when an edge arrived
    SAME_CLOCK = 1  # more edges in one clock than the timestamper records
    OUTPUT = 2  # the packer's output stream was stalled (link back-pressure)
    LINK = 3  # counted by the host: frames lost or corrupted on the link
    DECODE = 4  # counted by the host: words that failed validation


EVENT_DTYPE = np.dtype(
    [("time_ps", "<i8"), ("channel", "u1"), ("kind", "u1"), ("aux", "<u4")]
)
"""One decoded event. ``aux`` means what its kind says (see Kind)."""


class EventFormatError(ValueError):
    """A stream that cannot be decoded at all (wrong protocol version, bad header)."""


class ProtocolVersionError(EventFormatError):
    def __init__(self, seen: int, expected: int = PROTOCOL_VERSION):
        super().__init__(
            f"gateware speaks protocol version {seen}, this host speaks version {expected}: "
            "rebuild and flash the gateware from this checkout (qnode gateware build/flash) "
            "or install the host version that matches it"
        )
        self.seen = seen
        self.expected = expected


def max_epoch(bin_ps: int) -> int:
    """Largest epoch whose times (any low 32 bits) still fit int64 picoseconds."""
    return ((np.iinfo(np.int64).max // bin_ps) >> TIME_BITS) - 1


# ---------------------------------------------------------------------------------------
# Encoding (used by the twin, the simulated FPGA and the tests)


def pack_words(kind, channel, aux, time_bins) -> np.ndarray:
    """Pack arrays (or scalars) into uint64 words. ``time_bins`` keeps its low 32 bits."""
    kind = np.asarray(kind, dtype=np.uint64)
    channel = np.asarray(channel, dtype=np.uint64)
    aux = np.asarray(aux, dtype=np.uint64)
    time_bins = np.asarray(time_bins).astype(np.uint64)
    if np.any(channel >= MAX_CHANNELS) or np.any(aux > AUX_MASK):
        raise ValueError("channel or aux out of range for the event word")
    return (
        (kind << np.uint64(KIND_SHIFT))
        | (channel << np.uint64(CHANNEL_SHIFT))
        | (aux << np.uint64(AUX_SHIFT))
        | (time_bins & np.uint64(TIME_MASK))
    )


def epoch_word(epoch: int) -> np.uint64:
    if not 0 <= epoch <= EPOCH_MASK:
        raise ValueError(f"epoch {epoch} does not fit {EPOCH_BITS} bits")
    return np.uint64((int(Kind.EPOCH) << KIND_SHIFT) | epoch)


def header_word(bin_ps: int, channels: int, version: int = PROTOCOL_VERSION) -> np.uint64:
    if not 0 < bin_ps < 1 << 16:
        raise ValueError(f"bin_ps {bin_ps} does not fit 16 bits")
    if not 0 < channels <= MAX_CHANNELS:
        raise ValueError(f"channel count {channels} outside 1..{MAX_CHANNELS}")
    return np.uint64(
        (int(Kind.HEADER) << KIND_SHIFT)
        | (HEADER_MAGIC << 52)
        | ((version & 0xFFFF) << 36)
        | (bin_ps << 20)
        | (channels << 12)
    )


@dataclass(frozen=True)
class StreamHeader:
    version: int
    bin_ps: int
    channels: int

    @classmethod
    def from_word(cls, word: int) -> "StreamHeader":
        word = int(word)
        if word >> KIND_SHIFT != Kind.HEADER or (word >> 52) & 0xFF != HEADER_MAGIC:
            raise EventFormatError(f"0x{word:016x} is not a stream header")
        if word & 0xFFF:
            raise EventFormatError(f"stream header 0x{word:016x} has reserved bits set")
        return cls(
            version=(word >> 36) & 0xFFFF,
            bin_ps=(word >> 20) & 0xFFFF,
            channels=(word >> 12) & 0xFF,
        )


def encode_events(
    kind, channel, aux, time_bins, *, epoch: int = -1
) -> tuple[np.ndarray, int]:
    """Encode time-stamped events (absolute ``time_bins``) into words, inserting EPOCH words.

    ``epoch`` is the epoch the receiver currently holds (-1: none yet, so the first event gets
    one). Returns the words and the epoch the receiver holds afterwards.
    """
    time_bins = np.asarray(time_bins, dtype=np.int64)
    words = pack_words(kind, channel, aux, time_bins)
    epochs = time_bins >> TIME_BITS
    if len(words) == 0:
        return words, epoch
    previous = np.empty_like(epochs)
    previous[0] = epoch
    previous[1:] = epochs[:-1]
    where = np.flatnonzero(epochs != previous)
    epoch_words = (np.uint64(int(Kind.EPOCH) << KIND_SHIFT)) | epochs[where].astype(np.uint64)
    return np.insert(words, where, epoch_words), int(epochs[-1])


def encode_tags(channel, time_bins, *, epoch: int = -1) -> tuple[np.ndarray, int]:
    """Detector tags in time order -> words (with EPOCH words where the high bits change)."""
    channel = np.asarray(channel)
    return encode_events(Kind.TAG, channel, 0, time_bins, epoch=epoch)


# ---------------------------------------------------------------------------------------
# Decoding (the host side)


@dataclass
class DecodeStats:
    """What a decoder saw besides events. ``invalid_words`` are counted, never decoded."""

    words: int = 0
    events: int = 0
    invalid_words: int = 0
    epochs: int = 0
    headers: int = 0
    lost_events: int = 0  # sum of LOSS record counts
    lost_by_channel: dict[int, int] = field(default_factory=dict)

    def add(self, other: "DecodeStats") -> None:
        self.words += other.words
        self.events += other.events
        self.invalid_words += other.invalid_words
        self.epochs += other.epochs
        self.headers += other.headers
        self.lost_events += other.lost_events
        for ch, n in other.lost_by_channel.items():
            self.lost_by_channel[ch] = self.lost_by_channel.get(ch, 0) + n


class StreamDecoder:
    """Decodes word batches into EVENT_DTYPE arrays, carrying the epoch across batches.

    Validation (a failing word is counted in ``stats.invalid_words`` and skipped, so garbage
    never becomes a wrong timestamp): kind must be known, channel below the header's channel
    count, TAG aux zero, EPOCH within int64 picoseconds, no event before the first header
    (unless the decoder was built with a known ``bin_ps``). A header with another protocol
    version raises ProtocolVersionError.
    """

    def __init__(self, bin_ps: int | None = None, channels: int = MAX_CHANNELS, *, fast: bool = True):
        self.bin_ps = bin_ps
        self.channels = channels
        self.epoch = 0
        self.header: StreamHeader | None = None
        self.stats = DecodeStats()
        # fast: one compiled pass per segment (_decode_segment_fast); False keeps the
        # vectorised numpy path, which is the reference the fast path is tested against.
        self.fast = fast

    def decode(self, words: np.ndarray) -> np.ndarray:
        words = np.ascontiguousarray(words, dtype=np.uint64)
        if self.fast:
            return self._decode_fast(words)
        kinds = (words >> np.uint64(KIND_SHIFT)).astype(np.uint8)
        header_at = np.flatnonzero(kinds == Kind.HEADER)
        # Segments between headers decode with one time base; headers are rare.
        bounds = [0, *header_at.tolist(), len(words)]
        parts = []
        for start, stop in zip(bounds[:-1], bounds[1:]):
            if start < stop and kinds[start] == Kind.HEADER:
                self._take_header(words[start])
                start += 1
            if start < stop:
                parts.append(self._decode_segment(words[start:stop], kinds[start:stop]))
        self.stats.words += len(words)
        if not parts:
            return np.empty(0, EVENT_DTYPE)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _decode_fast(self, words: np.ndarray) -> np.ndarray:
        """The same validation and statistics as the numpy path, in one compiled pass that
        stops at each HEADER word so the header is taken here, in Python."""
        stats = self.stats
        signed = words.view(np.int64)
        out = np.empty(len(words), EVENT_DTYPE)
        lost_by_channel = np.zeros(MAX_CHANNELS, np.int64)
        n_out = start = 0
        while start < len(words):
            # bin_ps 0 tells the kernel the time base is unknown: every word is invalid.
            bin_ps = self.bin_ps or 0
            stop, n_out, invalid, epochs, self.epoch = _decode_words_fast(
                signed, start, bin_ps, self.channels, self.epoch,
                max_epoch(bin_ps) if bin_ps else 0, out, n_out, lost_by_channel,
            )
            stats.invalid_words += int(invalid)
            stats.epochs += int(epochs)
            if stop < len(words):
                self._take_header(words[stop])
            start = stop + 1
        stats.words += len(words)
        stats.events += int(n_out)
        for ch in np.flatnonzero(lost_by_channel):
            n_lost = int(lost_by_channel[ch])
            stats.lost_events += n_lost
            stats.lost_by_channel[int(ch)] = stats.lost_by_channel.get(int(ch), 0) + n_lost
        # A view of the first n_out records: the slack (EPOCH and invalid words) is a few bytes
        # per batch, and copying it away would cost about as much as decoding.
        return out[:n_out]

    def _take_header(self, word) -> None:
        try:
            header = StreamHeader.from_word(word)
        except EventFormatError:
            self.stats.invalid_words += 1
            return
        self.stats.headers += 1
        if header.version != PROTOCOL_VERSION:
            raise ProtocolVersionError(header.version)
        self.header = header
        self.bin_ps = header.bin_ps
        self.channels = header.channels
        self.epoch = 0

    def _decode_segment(self, words: np.ndarray, kinds: np.ndarray) -> np.ndarray:
        stats = self.stats
        if self.bin_ps is None:  # nothing is known about the time base yet
            stats.invalid_words += len(words)
            return np.empty(0, EVENT_DTYPE)
        channel = ((words >> np.uint64(CHANNEL_SHIFT)) & np.uint64(MAX_CHANNELS - 1)).astype(np.uint8)
        aux = ((words >> np.uint64(AUX_SHIFT)) & np.uint64(AUX_MASK)).astype(np.uint32)

        is_epoch = kinds == Kind.EPOCH
        epoch_values = (words & np.uint64(EPOCH_MASK)).astype(np.int64, copy=False)
        good_epoch = is_epoch & (epoch_values <= max_epoch(self.bin_ps))
        is_event = (kinds >= Kind.TAG) & (kinds <= Kind.LOSS)
        valid = is_event & (channel < self.channels) & ~((kinds == Kind.TAG) & (aux != 0))
        stats.invalid_words += int(len(words) - np.count_nonzero(valid) - np.count_nonzero(good_epoch))
        stats.epochs += int(np.count_nonzero(good_epoch))

        # Forward-fill the epoch: index of the last good EPOCH word at or before each word.
        last = np.where(good_epoch, np.arange(len(words)), -1)
        np.maximum.accumulate(last, out=last)
        epoch = np.where(last >= 0, epoch_values[np.maximum(last, 0)], self.epoch)
        if good_epoch.any():
            self.epoch = int(epoch_values[last[-1]])

        sel = np.flatnonzero(valid)
        out = np.empty(len(sel), EVENT_DTYPE)
        time_bins = (epoch[sel] << TIME_BITS) | (words[sel] & np.uint64(TIME_MASK)).astype(np.int64)
        out["time_ps"] = time_bins * self.bin_ps
        out["channel"] = channel[sel]
        out["kind"] = kinds[sel]
        out["aux"] = aux[sel]
        stats.events += len(out)

        loss = out[out["kind"] == Kind.LOSS]
        if len(loss):
            counts = loss["aux"] & LOSS_COUNT_MAX
            stats.lost_events += int(counts.sum())
            per_channel = np.bincount(loss["channel"], weights=counts, minlength=self.channels)
            for ch in np.flatnonzero(per_channel):
                stats.lost_by_channel[int(ch)] = stats.lost_by_channel.get(int(ch), 0) + int(per_channel[ch])
        return out


@njit(cache=True, nogil=True)
def _decode_words_fast(words, start, bin_ps, channels, epoch, max_ep, out, n_out, lost_by_channel):
    """Decode ``words`` (viewed as int64) from ``start`` into ``out`` (EVENT_DTYPE) from
    ``n_out`` on, up to the next HEADER word, which is left for the caller.

    Word for word what StreamDecoder._decode_segment does. int64 arithmetic throughout, because
    numba turns mixed uint64/int64 expressions into float64. ``(epoch << 32) * bin_ps`` is the
    epoch's base in ps; ``max_ep`` keeps it and every time after it inside int64.
    Returns (index of the HEADER or len(words), events written so far, invalid words, good
    EPOCH words, epoch held at the stop).
    """
    invalid = 0
    epochs = 0
    base_ps = (epoch << 32) * bin_ps
    for i in range(start, words.shape[0]):
        w = words[i]
        kind = (w >> 60) & 0xF
        channel = (w >> 54) & 0x3F
        aux = (w >> 32) & 0x3FFFFF
        if kind == 15:  # HEADER: the caller validates it and sets the time base
            return i, n_out, invalid, epochs, epoch
        if bin_ps == 0:  # no header yet and no bin width given: nothing decodes
            invalid += 1
        elif kind == 1:  # TAG first: nearly every word is one
            if channel < channels and aux == 0:
                r = out[n_out]
                r.time_ps = base_ps + (w & 0xFFFFFFFF) * bin_ps
                r.channel = channel
                r.kind = 1
                r.aux = 0
                n_out += 1
            else:
                invalid += 1
        elif kind == 6:  # EPOCH
            value = w & 0x0FFFFFFFFFFFFFFF
            if value <= max_ep:
                epoch = value
                base_ps = (epoch << 32) * bin_ps
                epochs += 1
            else:
                invalid += 1
        elif kind >= 2 and kind <= 5 and channel < channels:
            r = out[n_out]
            r.time_ps = base_ps + (w & 0xFFFFFFFF) * bin_ps
            r.channel = channel
            r.kind = kind
            r.aux = aux
            n_out += 1
            if kind == 5:  # LOSS: the count is the low 18 bits of aux
                lost_by_channel[channel] += aux & 0x3FFFF
        else:
            invalid += 1
    return words.shape[0], n_out, invalid, epochs, epoch


def decode_words(words: np.ndarray, bin_ps: int | None = None) -> tuple[np.ndarray, DecodeStats]:
    """Decode one complete stream (or a stream with a known ``bin_ps``) in one call."""
    decoder = StreamDecoder(bin_ps=bin_ps)
    events = decoder.decode(words)
    return events, decoder.stats


def split_aux(events: np.ndarray) -> dict[str, np.ndarray]:
    """The kind-specific fields of HERALD and LOSS aux, for readers of decoded events."""
    aux = events["aux"]
    return {
        "herald_outcome": aux >> HERALD_ATTEMPT_BITS,
        "herald_attempt": aux & ((1 << HERALD_ATTEMPT_BITS) - 1),
        "loss_reason": aux >> LOSS_COUNT_BITS,
        "loss_count": aux & LOSS_COUNT_MAX,
    }
