"""Register-map definition format, and qnode's register map.

One declaration serves both sides: the gateware builds its register file from REGISTER_MAP and
the host driver reads and writes by the same names, so the two cannot drift apart.
docs/registers.md is generated from it (``qnode firmware registers --markdown``) and a test
keeps the committed copy in step.

Registers are 32 bits wide on the bus (addresses count registers, not bytes); ``width`` says
how many low bits are implemented, the rest read as zero. Per-channel registers are declared
once with ``count`` and expand to ``name[i]`` at ``address + i * stride``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .events import PROTOCOL_VERSION

DATA_BITS = 32
ADDRESS_BITS = 16


class Access(str, enum.Enum):
    RO = "ro"  # read-only: status and counters, written by the gateware
    RW = "rw"  # read-write: configuration
    WO = "wo"  # write-only strobe: writing acts (e.g. clear counters), reads return 0


@dataclass(frozen=True)
class Register:
    name: str
    address: int
    width: int
    access: Access
    reset: int
    doc: str
    count: int = 1  # > 1 declares an array (one per channel, per pattern, ...)
    stride: int = 1
    unit: str = ""  # what one LSB means: "bins", "clocks", "events", ...

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ValueError(f"register name {self.name!r} is not an identifier")
        if not 1 <= self.width <= DATA_BITS:
            raise ValueError(f"{self.name}: width {self.width} outside 1..{DATA_BITS}")
        if not 0 <= self.reset < 1 << self.width:
            raise ValueError(f"{self.name}: reset {self.reset} does not fit {self.width} bits")
        if self.count < 1 or self.stride < 1:
            raise ValueError(f"{self.name}: count and stride must be >= 1")
        if self.address + (self.count - 1) * self.stride >= 1 << ADDRESS_BITS:
            raise ValueError(f"{self.name}: address beyond {ADDRESS_BITS}-bit space")

    def addresses(self) -> list[int]:
        return [self.address + i * self.stride for i in range(self.count)]

    @property
    def mask(self) -> int:
        return (1 << self.width) - 1


class RegisterMap:
    """An ordered, validated set of registers: unique names, no overlapping addresses."""

    def __init__(self, registers: list[Register]):
        self.registers = list(registers)
        self._by_name: dict[str, Register] = {}
        owner: dict[int, str] = {}
        for reg in self.registers:
            if reg.name in self._by_name:
                raise ValueError(f"register {reg.name!r} declared twice")
            self._by_name[reg.name] = reg
            for address in reg.addresses():
                if address in owner:
                    raise ValueError(
                        f"register {reg.name!r} overlaps {owner[address]!r} at 0x{address:04x}"
                    )
                owner[address] = reg.name

    def __getitem__(self, name: str) -> Register:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no register named {name!r}; known: {', '.join(self._by_name)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __iter__(self):
        return iter(self.registers)

    def address(self, name: str, index: int = 0) -> int:
        reg = self[name]
        if not 0 <= index < reg.count:
            raise IndexError(f"{name}[{index}]: index outside 0..{reg.count - 1}")
        return reg.address + index * reg.stride

    def to_markdown(self) -> str:
        lines = [
            "| address | name | width | access | reset | unit | description |",
            "|---|---|---|---|---|---|---|",
        ]
        for reg in self.registers:
            if reg.count > 1:
                last = reg.address + (reg.count - 1) * reg.stride
                where = f"0x{reg.address:04x}..0x{last:04x}"
                name = f"{reg.name}[0..{reg.count - 1}]"
            else:
                where, name = f"0x{reg.address:04x}", reg.name
            lines.append(
                f"| {where} | `{name}` | {reg.width} | {reg.access.value} | {reg.reset} "
                f"| {reg.unit} | {reg.doc} |"
            )
        return "\n".join(lines) + "\n"


# The identity block sits at fixed addresses in every protocol version, so a host can always
# read what it is talking to before it trusts anything else.
IDENTITY = [
    Register("protocol_version", 0x0000, 16, Access.RO, PROTOCOL_VERSION,
             "event format and link protocol version; the host refuses any other"),
    Register("gateware_hash", 0x0001, 32, Access.RO, 0,
             "low 32 bits of the bitstream's content hash (see the manifest)", count=2),
    Register("channel_count", 0x0003, 8, Access.RO, 8, "number of input channels"),
    Register("bin_ps", 0x0004, 16, Access.RO, 1000, "width of one time bin", unit="ps"),
    Register("oversampling", 0x0005, 4, Access.RO, 8, "input samples per system clock"),
    Register("sys_clk_khz", 0x0006, 20, Access.RO, 125_000, "system clock", unit="kHz"),
    Register("scratch", 0x0007, 32, Access.RW, 0, "free for link tests: reads back what was written"),
]

# Timestamper, channel FIFOs and packer (gateware/core.py builds its register file from these).
# Per-channel arrays hold room for TIMESTAMPER_MAX_CHANNELS; a build with fewer channels reads
# zero above its channel_count. Times are in bins (bin_ps each), so the host converts from the
# lab config's ps with ``round(ps / bin_ps)``.
TIMESTAMPER_MAX_CHANNELS = 16
DELAY_BITS = 16  # 65535 bins = 65.5 us at 1 ns: reaches the 49 us sync delay of the scenario
DEAD_TIME_BITS = 16

_CH = dict(count=TIMESTAMPER_MAX_CHANNELS, stride=1)
TIMESTAMPER = [
    Register("ts_enable", 0x0100, 1, Access.RW, 1,
             "1: the channel records edges; 0: its input is ignored (nothing is counted)", **_CH),
    Register("ts_edge", 0x0110, 1, Access.RW, 0,
             "which edge is an event: 0 rising, 1 falling", **_CH),
    Register("ts_delay_bins", 0x0120, DELAY_BITS, Access.RW, 0,
             "added to every timestamp of the channel (and so to its place in the merged order)",
             unit="bins", **_CH),
    Register("ts_dead_time_bins", 0x0130, DEAD_TIME_BITS, Access.RW, 0,
             "edges closer than this after a recorded edge are ignored (not counted); below 2 the "
             "input itself is the limit (two rising edges need a low sample between them)",
             unit="bins", **_CH),
    Register("ts_tag_count", 0x0140, 32, Access.RO, 0,
             "edges recorded as tags by the timestamper (wraps)", unit="events", **_CH),
    Register("ts_same_clock_lost", 0x0150, 32, Access.RO, 0,
             "edges lost because an earlier edge was recorded in the same clock "
             "(LOSS reason SAME_CLOCK; wraps)", unit="events", **_CH),
    Register("ts_fifo_lost", 0x0160, 32, Access.RO, 0,
             "edges lost because the channel FIFO was full (LOSS reason CHANNEL_FIFO; wraps)",
             unit="events", **_CH),
    Register("ts_output_lost", 0x0170, 32, Access.RO, 0,
             "events of this channel dropped at the packer output: tags, HERALD words whose "
             "deciding click was on it, COINCIDENCE words its tag completed, and the counts of "
             "loss records that could not be sent, all re-reported as LOSS reason OUTPUT (wraps)",
             unit="events", **_CH),
    Register("ts_counters_clear", 0x0180, 1, Access.WO, 0,
             "write 1: zero every ts_*_count and ts_*_lost counter"),
]

# Coincidence unit (gateware/coincidence.py): patterns on the merged, time-ordered stream, with
# the host's window definition (qnode.host.measurements.CoincidencePattern).
COINCIDENCE_PATTERNS = 8
_PAT = dict(count=COINCIDENCE_PATTERNS, stride=1)
COINCIDENCE = [
    Register("coinc_mask", 0x0200, 16, Access.RW, 0,
             "channels of pattern p (bit c = channel c); 0 disables the pattern", **_PAT),
    Register("coinc_window_bins", 0x0208, 16, Access.RW, 0,
             "a window opens at a click when none is open and holds clicks up to and including "
             "this much later; each click belongs to at most one window of the pattern",
             unit="bins", **_PAT),
    Register("coinc_min_fold", 0x0210, 5, Access.RW, 0,
             "distinct channels that must click in a window for it to count (once); 0: all of "
             "the mask's channels", unit="channels", **_PAT),
    Register("coinc_emit", 0x0218, 8, Access.RW, 0,
             "bit p: each counted window of pattern p also becomes a COINCIDENCE word (channel = "
             "p, aux = mask of the channels that clicked, time = the click that opened it)"),
    Register("coinc_count", 0x0220, 32, Access.RO, 0,
             "windows counted by pattern p (wraps)", unit="events", **_PAT),
    Register("coinc_counters_clear", 0x0228, 1, Access.WO, 0, "write 1: zero every coinc_count"),
]

# Herald unit (gateware/herald.py; rules and the latency in docs/gateware.md).
HERALD_OUTCOMES = 4
HERALD = [
    Register("herald_rule", 0x0300, 2, Access.RW, 0,
             "0 off (attempts counted only), 1 single-click (exactly one detector click in the "
             "window), 2 two-click Barrett-Kok (exactly one in the early and one in the late window)"),
    Register("herald_sync_channel", 0x0301, 4, Access.RW, 0,
             "channel whose tags start attempts (one attempt per tag, numbered from 0 at reset)"),
    Register("herald_detector_mask", 0x0302, 16, Access.RW, 0,
             "heralding detectors (bit c = channel c); the lowest one's click is psi+ (outcome 1)"),
    Register("herald_veto_mask", 0x0303, 16, Access.RW, 0,
             "any click on these channels from the window start to the attempt's last bin "
             "cancels the herald"),
    Register("herald_offset_bins", 0x0304, 32, Access.RW, 0,
             "window start after the sync tag; may span many sync periods (64 attempts in flight)",
             unit="bins"),
    Register("herald_length_bins", 0x0305, 16, Access.RW, 0,
             "window length: clicks at start .. start + length - 1 count", unit="bins"),
    Register("herald_late_bins", 0x0306, 16, Access.RW, 0,
             "two-click rule: late window start after the early window start", unit="bins"),
    Register("herald_pin_clocks", 0x0307, 16, Access.RW, 1,
             "clocks the herald pin stays high after a herald (0: the pin stays low)",
             unit="clocks"),
    Register("herald_attempt_count", 0x0310, 32, Access.RO, 0,
             "attempts: sync tags seen (wraps)", unit="events"),
    Register("herald_success_count", 0x0311, 32, Access.RO, 0,
             "heralds with outcome o + 1: psi+ (single click, lowest detector), psi- (single "
             "click, another detector), two-click same detector, two-click different detectors "
             "(wraps)", unit="events", count=HERALD_OUTCOMES, stride=1),
    Register("herald_veto_count", 0x0315, 32, Access.RO, 0,
             "attempts cancelled by a veto click (wraps)", unit="events"),
    Register("herald_late_count", 0x0316, 32, Access.RO, 0,
             "attempts skipped because clicks at their window start could already have passed "
             "when the unit took them (windows too close together, or offset too small)",
             unit="events"),
    Register("herald_lost_count", 0x0317, 32, Access.RO, 0,
             "attempts lost because 64 were already in flight, and heralds that found the "
             "packer's herald queue full (cannot happen by design; docs/gateware.md) (wraps)",
             unit="events"),
    Register("herald_latency_clocks", 0x0318, 8, Access.RO, 0,
             "clocks from the sample word holding the attempt's last window bin to the herald pin "
             "(fixed; 0: no herald unit in this build)", unit="clocks"),
    Register("herald_counters_clear", 0x0319, 1, Access.WO, 0,
             "write 1: zero every herald_*_count"),
]

REGISTER_MAP = RegisterMap(IDENTITY + TIMESTAMPER + COINCIDENCE + HERALD)
"""qnode's register map. Later blocks (coincidence, herald, link) append here."""


def registers_markdown() -> str:
    """docs/registers.md, generated (``python -m qnode.firmware.registers > docs/registers.md``)."""
    return (
        "# Register map\n\n"
        "Generated from `firmware/registers.py` (`REGISTER_MAP`); do not edit by hand. Regenerate with\n"
        "`.venv/bin/python -m qnode.firmware.registers > docs/registers.md` (a test checks it).\n\n"
        "Registers are 32 bits on the bus and addresses count registers. `name[0..n]` is a\n"
        "per-channel array at consecutive addresses; entries above the build's `channel_count`\n"
        "read 0. Read-write settings keep their values across a reset of the core.\n\n"
        + REGISTER_MAP.to_markdown()
    )


if __name__ == "__main__":
    print(registers_markdown(), end="")
