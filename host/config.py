"""Lab configuration: the TOML schema, validated at load.

A config describes one node: the FPGA and its channels, the instruments, the loops, recording,
and (for the simulated lab) the physics the simulation runs. Every table rejects unknown keys,
so a typo is an error, not a silently ignored setting. Errors name the file, the key path and
what was expected::

    lab_configs/broken.toml: fpga.channels[2].delay_ps: Input should be a valid integer
    (got 'soon')

Units are in the key names (``_ps``, ``_hz``, ``_s``); times in ps are integers.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qnode.firmware.events import MAX_CHANNELS
from qnode.firmware.registers import REGISTER_MAP


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Node(Strict):
    name: str = "qnode"
    description: str = ""


class Channel(Strict):
    index: int = Field(ge=0, lt=MAX_CHANNELS)
    name: str
    edge: Literal["rising", "falling"] = "rising"
    delay_ps: int = Field(0, ge=0, description="added to every timestamp of this channel")
    dead_time_ps: int = Field(0, ge=0, description="edges closer than this after a kept edge are ignored")
    enabled: bool = True


ChannelRef = int | str  # a channel of [[fpga.channels]], by index or by name

HERALD_RULES = ("off", "single_click", "two_click")  # the herald_rule register's values, in order
COINCIDENCE_PATTERNS = 8  # the coincidence unit's patterns (coinc_mask[0..7])


def to_bins(value_ps: int, bin_ps: int) -> int:
    """A time in ps as whole bins of the FPGA: the nearest bin, a tie to the even one (Python's
    ``round``, what the host driver writes); so a setting moves by at most half a bin."""
    return round(value_ps / bin_ps)


class Herald(Strict):
    """The herald unit (docs/gateware.md, "Herald unit"): which rule decides an attempt, the
    channel whose tags start attempts, and the window(s) after each sync tag."""

    rule: Literal["off", "single_click", "two_click"] = Field(
        "off", description="off: attempts counted only; single_click: exactly one detector click in the "
        "window; two_click: exactly one in the early and one in the late window (Barrett-Kok)")
    sync_channel: ChannelRef = Field(0, description="channel whose tags are the attempts")
    detectors: list[ChannelRef] = Field(default_factory=list,
                                        description="heralding detectors; the lowest index is psi+")
    veto: list[ChannelRef] = Field(default_factory=list, description="a click on any of these cancels the herald")
    offset_ps: int = Field(0, ge=0, description="window start after the sync tag (delays included)")
    length_ps: int = Field(0, ge=0, description="window length: clicks at start .. start + length - 1 bin count")
    late_ps: int = Field(0, ge=0, description="two_click: the late window's start after the early one's")
    pin_ns: float = Field(8.0, ge=0, description="herald pin pulse length (whole clocks; 0 keeps the pin low)")

    @model_validator(mode="after")
    def _check(self):
        if self.rule != "off" and not self.detectors:
            raise ValueError(f"rule {self.rule!r} needs detectors (the heralding detectors' channels)")
        if self.rule != "off" and self.length_ps == 0:
            raise ValueError(f"rule {self.rule!r} needs length_ps > 0 (a window of no length decides nothing)")
        if self.rule == "two_click" and self.late_ps < self.length_ps:
            raise ValueError(f"two_click: late_ps ({self.late_ps}) must be at least length_ps ({self.length_ps}): "
                             "the late window starts after the early one ends")
        return self


class Coincidence(Strict):
    """One pattern of the coincidence unit (docs/gateware.md, "Coincidence unit")."""

    channels: list[ChannelRef] = Field(min_length=1, description="the pattern's channels, by name or index")
    window_ps: int = Field(ge=0, description="a window holds clicks up to this long after the one that opened it")
    min_fold: int = Field(0, ge=0, description="distinct channels that must click in a window; 0: all of them")
    emit: bool = Field(False, description="each counted window also streams as a COINCIDENCE event")

    @model_validator(mode="after")
    def _check(self):
        if self.min_fold > len(self.channels):
            raise ValueError(f"min_fold {self.min_fold} is more than the pattern's {len(self.channels)} channels")
        return self


class Fpga(Strict):
    board: str = Field("sim", description='"sim" for the simulated FPGA, or an amaranth-boards name such as "ulx3s"')
    link: str = Field("sim://", description="pyserial URL of the link: /dev/ttyUSB0, socket://HOST:PORT; sim:// starts the twin in-process")
    baud: int = Field(3_000_000, gt=0)
    sys_clk_hz: int = Field(125_000_000, gt=0)
    oversampling: Literal[4, 8] = 8
    channels: list[Channel] = Field(min_length=1)
    herald: Herald = Field(default_factory=Herald, description="the herald unit's rule and windows")
    coincidence: list[Coincidence] = Field(default_factory=list, max_length=COINCIDENCE_PATTERNS,
                                           description="the coincidence unit's patterns, 0 first")

    @property
    def bin_ps(self) -> int:
        return 10**12 // (self.sys_clk_hz * self.oversampling)

    def pin_clocks(self) -> int:
        """``herald.pin_ns`` in whole system clocks (nearest, ties to even)."""
        return round(self.herald.pin_ns * self.sys_clk_hz / 1e9)

    def channel_index(self, ref: ChannelRef) -> int:
        """The index of a channel named by index or name (ValueError when there is none)."""
        for ch in self.channels:
            if ch.index == ref or ch.name == ref:
                return ch.index
        raise ValueError(f"{ref!r} is not one of fpga.channels (names {[c.name for c in self.channels]}, "
                         f"indices {[c.index for c in self.channels]})")

    @model_validator(mode="after")
    def _check(self):
        if 10**12 % (self.sys_clk_hz * self.oversampling):  # bins must be whole picoseconds
            raise ValueError(
                f"sys_clk_hz={self.sys_clk_hz} with oversampling={self.oversampling} does not give a "
                "whole number of ps per bin (e.g. 125 MHz x 8 = 1000 ps, 200 MHz x 4 = 1250 ps)"
            )
        seen: set[int] = set()
        for ch in self.channels:
            if ch.index in seen:
                raise ValueError(f"channel index {ch.index} appears twice")
            seen.add(ch.index)
        names = [ch.name for ch in self.channels]
        if len(set(names)) != len(names):
            raise ValueError("channel names must be unique")
        self._check_units()
        return self

    def _check_units(self) -> None:
        """Herald and coincidence settings: channels that exist, times that fit their registers."""
        errors = []

        def ref(key, value):
            try:
                return self.channel_index(value)
            except ValueError as exc:
                errors.append(f"{key}: {exc}")
                return None

        def fits(key, value_ps, register):
            top = REGISTER_MAP[register].mask
            if to_bins(value_ps, self.bin_ps) > top:
                errors.append(f"{key}: {value_ps} ps is more than the register holds ({top} bins of "
                              f"{self.bin_ps} ps = {top * self.bin_ps} ps)")

        h = self.herald
        sync = ref("herald.sync_channel", h.sync_channel)
        if sync is not None and sync > 15:
            errors.append(f"herald.sync_channel: channel {sync} does not fit the 4-bit herald_sync_channel (0..15)")
        for key in ("detectors", "veto"):
            for i, c in enumerate(getattr(h, key)):
                index = ref(f"herald.{key}[{i}]", c)
                if index is not None and index > 15:
                    errors.append(f"herald.{key}[{i}]: channel {index} does not fit the 16-bit mask (0..15)")
        fits("herald.offset_ps", h.offset_ps, "herald_offset_bins")
        fits("herald.length_ps", h.length_ps, "herald_length_bins")
        fits("herald.late_ps", h.late_ps, "herald_late_bins")
        if h.rule != "off" and to_bins(h.length_ps, self.bin_ps) == 0:
            errors.append(f"herald.length_ps: {h.length_ps} ps rounds to 0 bins of {self.bin_ps} ps")
        if self.pin_clocks() > 0xFFFF:
            errors.append(f"herald.pin_ns: {h.pin_ns} ns is more than 65535 clocks of the {self.sys_clk_hz} Hz clock")
        for p, pattern in enumerate(self.coincidence):
            indices = [ref(f"coincidence[{p}].channels[{i}]", c) for i, c in enumerate(pattern.channels)]
            for i, index in enumerate(indices):
                if index is not None and index > 15:
                    errors.append(f"coincidence[{p}].channels[{i}]: channel {index} does not fit the "
                                  "16-bit coinc_mask (0..15)")
            known = [i for i in indices if i is not None]
            if len(set(known)) != len(known):
                errors.append(f"coincidence[{p}].channels: a channel appears twice")
            fits(f"coincidence[{p}].window_ps", pattern.window_ps, "coinc_window_bins")
        if errors:
            raise ValueError("; ".join(errors))

    def herald_channels(self) -> dict[str, int | list[int]]:
        """The herald unit's channels as indices: sync_channel, detectors, veto."""
        h = self.herald
        return {"sync_channel": self.channel_index(h.sync_channel),
                "detectors": sorted({self.channel_index(c) for c in h.detectors}),
                "veto": sorted({self.channel_index(c) for c in h.veto})}

    def coincidence_channels(self, pattern: int) -> list[int]:
        return sorted({self.channel_index(c) for c in self.coincidence[pattern].channels})

    def channel(self, name_or_index: str | int) -> Channel:
        for ch in self.channels:
            if ch.name == name_or_index or ch.index == name_or_index:
                return ch
        raise KeyError(f"no channel {name_or_index!r}; known: {[c.name for c in self.channels]}")


class Instrument(Strict):
    driver: str = Field(description="driver name, e.g. lakeshore336, santec_tsl570, mdt694b")
    transport: Literal["visa", "serial", "tcp"] = "tcp"
    resource: str = Field(description="VISA resource, serial URL or host:port")
    sim: bool = Field(False, description="true: qnode starts the simulated instrument at this address")
    timeout_s: float = Field(1.0, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)


class Loop(Strict):
    enabled: bool = True
    period_s: float = Field(gt=0)
    missed_period: Literal["skip", "catch_up", "stop"] = "skip"
    settings: dict[str, Any] = Field(default_factory=dict)


class Recording(Strict):
    directory: Path = Path("runs")
    flush_s: float = Field(1.0, gt=0, le=1.0, description="at most this much is lost on a crash")
    rotate_mb: float = Field(2000.0, gt=0)
    rotate_s: float = Field(3600.0, gt=0)
    compression: Literal["gzip", "lzf", "none"] = "gzip"


class Dashboard(Strict):
    """The daemon's web dashboard (host/dashboard.py, docs/dashboard.md)."""

    enabled: bool = Field(False, description="serve the dashboard while the daemon runs")
    host: str = Field("127.0.0.1", description="address to listen on; the default is this machine only")
    port: int = Field(8050, ge=0, lt=65536, description="TCP port; 0 picks a free one")
    token: str | None = Field(None, min_length=8, description="secret that actions (record, registers, loops) need")
    token_env: str | None = Field(None, min_length=1, description="name of the environment variable holding the token")

    @model_validator(mode="after")
    def _one_token_source(self):
        if self.token is not None and self.token_env is not None:
            raise ValueError("set token or token_env, not both")
        return self


class DelayPair(Strict):
    """One channel pair of the delay calibration (host/calibration.py)."""

    channel_a: int = Field(ge=0, lt=MAX_CHANNELS)
    channel_b: int = Field(ge=0, lt=MAX_CHANNELS)
    shape: Literal["gaussian", "exp_tail"] = "gaussian"
    tail_ps: float | None = Field(None, gt=0, description="exp_tail: the emitter lifetime, if known")
    range_ps: int = Field(20_000, gt=0)


class Tolerances(Strict):
    """What the nightly calibration accepts; beyond any of these it exits 1."""

    delay_change_bins: float = Field(0.5, gt=0, description="a pair's peak moved by more than this since last night")
    delay_error_bins: float = Field(1.0, gt=0, description="a peak still this far from zero after applying")
    car_min: float = Field(100.0, ge=0)
    car_change_fraction: float = Field(0.3, gt=0, description="CAR changed by more than this fraction since last night")
    bias_change_ua: float = Field(0.3, gt=0, description="plateau start or switching current moved by more")
    phase_rms_max_deg: float = Field(10.0, gt=0)
    relock_max_ms: float = Field(10.0, gt=0)


class Calibration(Strict):
    """The calibrations and the nightly job (host/nightly.py, docs/calibration.md)."""

    history: Path = Field(Path("runs/calibration/history.json"), description="results of past nights")
    report_directory: Path = Path("runs/calibration")
    delay_pairs: list[DelayPair] = Field(default_factory=list)
    delay_seconds: float = Field(2.0, gt=0)
    window_pair: tuple[int, int] | None = Field(None, description="channel pair whose coincidence window is optimised")
    target_car: float | None = Field(None, gt=0, description="widest window meeting this CAR, instead of max C/sqrt(C+A)")
    bias: dict[str, Any] = Field(default_factory=dict, description="bias sweep settings (host/bias_sweep.py)")
    bias_instrument: str | None = Field(None, description="the SNSPD controller in [instruments]")
    phase_seconds: float = Field(1.0, gt=0, description="simulated lab: phase-lock run scored on the true phase")
    phase_kicks: bool = Field(True, description="simulated lab: a pi and a 2 pi kick during the phase-lock run")
    tolerances: Tolerances = Field(default_factory=Tolerances)


# --- the simulated lab's physics (used when fpga.board == "sim") -------------------------


class DetectorModel(Strict):
    efficiency: float = Field(0.85, ge=0, le=1)
    dark_rate_hz: float = Field(100.0, ge=0)
    jitter_ps: float = Field(50.0, ge=0, description="Gaussian RMS")
    dead_time_ps: int = Field(20_000, ge=0, description="detector recovery time")
    afterpulse_probability: float = Field(0.001, ge=0, lt=1)
    afterpulse_delay_ps: int = Field(100_000, ge=0)


class SyncSource(Strict):
    channel: int = Field(ge=0, lt=MAX_CHANNELS)
    rate_hz: float = Field(gt=0)
    jitter_ps: float = Field(5.0, ge=0)


class PairSource(Strict):
    rate_hz: float = Field(ge=0, description="pair rate at the source (Poisson)")
    channel_a: int = Field(ge=0, lt=MAX_CHANNELS)
    channel_b: int = Field(ge=0, lt=MAX_CHANNELS)
    transmission_a: float = Field(ge=0, le=1)
    transmission_b: float = Field(ge=0, le=1)
    pulsed: bool = Field(False, description="true: pairs are emitted at sync pulses, not continuously")


class Heralding(Strict):
    """Two emitters and a beam splitter feeding the heralding station's detectors."""

    channel_plus: int = Field(ge=0, lt=MAX_CHANNELS)
    channel_minus: int = Field(ge=0, lt=MAX_CHANNELS)
    emission_probability: float = Field(ge=0, le=1, description="alpha, per emitter per attempt")
    transmission: float = Field(ge=0, le=1, description="emitter to station, per emitter")
    arrival_delay_ps: int = Field(ge=0, description="from the sync pulse to the photon at the station")
    emitter_lifetime_ps: float = Field(1000.0, ge=0, description="exponential emission delay")
    window_ps: int = Field(10_000, gt=0, description="detection window the herald unit uses")


class ReferenceLight(Strict):
    """Time-shared reference bursts for the phase lock."""

    cycle_ps: int = Field(gt=0)
    burst_ps: int = Field(gt=0)
    rate_hz: float = Field(ge=0, description="detected photons/s in total during a burst")
    visibility: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _check(self):
        if self.burst_ps > self.cycle_ps:
            raise ValueError("burst_ps must not exceed cycle_ps")
        return self


class SimLab(Strict):
    seed: int = 1
    sync: SyncSource | None = None
    pair_source: PairSource | None = None
    heralding: Heralding | None = None
    reference: ReferenceLight | None = None
    detector: DetectorModel = Field(default_factory=DetectorModel, description="defaults for every detector")
    detectors: dict[int, DetectorModel] = Field(default_factory=dict, description="per-channel overrides")
    cable_delay_ps: dict[int, int] = Field(default_factory=dict, description="true delays, unknown to the software")

    @field_validator("detectors", "cable_delay_ps", mode="before")
    @classmethod
    def _int_keys(cls, value):
        # TOML table keys are strings; channels are integers.
        if isinstance(value, dict):
            try:
                return {int(k): v for k, v in value.items()}
            except ValueError as exc:
                raise ValueError(f"keys must be channel numbers: {exc}") from None
        return value


class LabConfig(Strict):
    node: Node = Field(default_factory=Node)
    fpga: Fpga
    instruments: dict[str, Instrument] = Field(default_factory=dict)
    loops: dict[str, Loop] = Field(default_factory=dict)
    recording: Recording = Field(default_factory=Recording)
    dashboard: Dashboard = Field(default_factory=Dashboard)
    calibration: Calibration = Field(default_factory=Calibration)
    sim: SimLab | None = None

    source_path: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _check_sim_channels(self):
        if self.sim is None:
            return self
        known = {ch.index for ch in self.fpga.channels}
        used = []
        if self.sim.sync:
            used.append(("sim.sync.channel", self.sim.sync.channel))
        if self.sim.pair_source:
            used += [("sim.pair_source.channel_a", self.sim.pair_source.channel_a),
                     ("sim.pair_source.channel_b", self.sim.pair_source.channel_b)]
        if self.sim.heralding:
            used += [("sim.heralding.channel_plus", self.sim.heralding.channel_plus),
                     ("sim.heralding.channel_minus", self.sim.heralding.channel_minus)]
        for key, ch in used:
            if ch not in known:
                raise ValueError(f"{key} = {ch} is not one of fpga.channels ({sorted(known)})")
        return self


class ConfigError(ValueError):
    """A config that cannot be used. The message names the file, the key and the problem."""


def _key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(path: str | Path, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = _key_path(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        got = ""
        if err["type"] not in ("missing",) and "input" in err and not isinstance(err["input"], dict):
            got = f" (got {err['input']!r})"
        lines.append(f"{path}: {key}: {msg}{got}")
    return "\n".join(lines)


def parse_config(text: str, path: str | Path = "<string>") -> LabConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        config = LabConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None
    config.source_path = Path(path) if path != "<string>" else None
    return config


def config_text(config: LabConfig) -> str:
    """The config as its file says it (for recordings), or as validated JSON if it has none."""
    if config.source_path is not None and Path(config.source_path).exists():
        return Path(config.source_path).read_text()
    return config.model_dump_json(indent=2)


def load_config(path: str | Path | None = None) -> LabConfig:
    """Load and validate a lab config. ``None`` loads the packaged sim.toml."""
    if path is None:
        text = resources.files("qnode.lab_configs").joinpath("sim.toml").read_text()
        return parse_config(text, "lab_configs/sim.toml")
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_config(text, path)
