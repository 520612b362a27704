"""Numbers the RTL and its twin (sim/twin.py) must agree on. Pure Python: the twin imports it
without pulling in Amaranth.

Pipeline (clocks from the sample word at the core's input to the FIFO write)::

    clock k     sample word k on the input pins (bits are bins k*N + 0 .. k*N + N-1)
    clock k+1   InputCapture register holds word k                     -> Timestamper stage A
    clock k+2   stage A register: edge found, fine position, dead time -> stage B
    clock k+3   stage B register: time_bins = k*N + fine + delay_bins  -> ChannelFifo write
    clock k+5   earliest the entry shows at the FIFO head (SyncFIFOBuffered adds 2)

The merger is a tree of registered two-way merge nodes (gateware/merger.py): a node passes on
the earlier of its children's heads, or a lone head once it is earlier than anything the empty
side can still deliver: an empty channel FIFO can only later deliver words sampled at clock
>= now - 4, so its bound ("horizon") is (now - HORIZON_CLOCKS) * N bins, and each tree level
below a node adds one clock: (now - HORIZON_CLOCKS - L) * N for a child at level L.
"""

TIME_BITS = 56
"""Width of the timestamp in bins inside the gateware (2.28 years at 1 ns before it wraps);
the packer sends the low 32 bits in each word and the rest as EPOCH words."""

COMPARE_BITS = 24
"""The merger compares times modulo 2**24 bins (signed difference): every time it compares lies
within delay_max + FIFO backlog (< 2**17 bins) of every other, so 24 bits are exact."""

WRITE_LATENCY = 3  # clocks from the input word to the ChannelFifo write
VISIBLE_LATENCY = 2  # SyncFIFOBuffered: written at w, at the head no earlier than w + 2
HORIZON_CLOCKS = WRITE_LATENCY + 1
# The herald unit (gateware/herald.py): from the sample word holding an attempt's last window
# bin, the HERALD record is valid 4 clocks after the tags are seen, the pin a clock after that.
HERALD_RECORD_LATENCY = WRITE_LATENCY + 4
HERALD_PIN_LATENCY = HERALD_RECORD_LATENCY + 1



def merge_levels(channels: int) -> int:
    """Levels of the merger's tree (at least one node): 3 for 5..8 channels, 4 for 9..16."""
    return max(1, (channels - 1).bit_length())


COUNT_BITS = 18  # LOSS count field of the event word
GAP_BITS = 4  # same-clock loss: first dropped edge minus the tag, in bins (< N <= 8)

ENTRY_FIELDS = (("time", TIME_BITS), ("loss", 1), ("count", COUNT_BITS), ("gap", GAP_BITS))
"""One ChannelFifo entry. A tag: loss=0, count = edges lost in the same clock after it (SAME_CLOCK),
gap = the first lost edge's distance from it. A loss record: loss=1, count = edges dropped at a
full FIFO, time = the first dropped edge (reason CHANNEL_FIFO)."""


def check_geometry(channels: int, oversampling: int, fifo_depth: int, output_depth: int) -> None:
    if oversampling not in (4, 8):
        raise ValueError(f"oversampling {oversampling}: the capture supports 4 or 8 bits per clock")
    if not 1 <= channels <= 16:
        raise ValueError(f"channels {channels} outside 1..16 (the register map holds 16)")
    if fifo_depth < 4 or fifo_depth & (fifo_depth - 1):
        # >= 4 keeps a FIFO that overflowed non-empty until its loss record shows at the head,
        # which is what keeps loss records in time order (docs/gateware.md).
        raise ValueError(f"fifo_depth {fifo_depth}: must be a power of two >= 4")
    if output_depth < 4:
        raise ValueError(f"output_depth {output_depth}: must be >= 4")
