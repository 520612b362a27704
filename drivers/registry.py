"""From a lab config's ``[instruments.NAME]`` table to an open driver."""

from __future__ import annotations

from .instrument import Instrument
from .keysight import Keysight33500B
from .lakeshore import LakeShore336, LakeShore372
from .santec import SantecTSL570
from .singlequantum import SingleQuantumEos
from .thorlabs import ThorlabsMDT694B, ThorlabsPM100
from .transport import make_transport
from .yokogawa import YokogawaGS200

DRIVERS: dict[str, type[Instrument]] = {
    "lakeshore336": LakeShore336,
    "lakeshore372": LakeShore372,
    "santec_tsl570": SantecTSL570,
    "singlequantum_eos": SingleQuantumEos,
    "gs200": YokogawaGS200,
    "mdt694b": ThorlabsMDT694B,
    "keysight33500b": Keysight33500B,
    "pm100": ThorlabsPM100,
}

# Options the factory consumes itself; the rest go to the driver.
_BACKOFF_OPTIONS = ("backoff_initial_s", "backoff_max_s")


def make_instrument(name: str, instrument, resource: str | None = None) -> Instrument:
    """A driver for config entry ``instrument`` (a ``qnode.host.config.Instrument``), not yet opened.

    ``resource`` overrides the config's (the simulated lab passes the pty it made for "sim-pty").
    """
    try:
        driver_class = DRIVERS[instrument.driver]
    except KeyError:
        raise ValueError(f"instruments.{name}.driver: unknown driver {instrument.driver!r}; "
                         f"known: {sorted(DRIVERS)}") from None
    options = dict(instrument.options)
    resource = resource or instrument.resource
    if resource == "sim-pty":
        raise ValueError(f"instruments.{name}.resource: 'sim-pty' is a pty that `qnode sim lab` (or an "
                         "InstrumentRack) makes at start; pass its path, or give a fixed path such as "
                         "'/tmp/qnode-stretcher' that the simulated lab links to its pty")
    transport = make_transport(instrument.transport, resource, options)
    kwargs = {key: float(options.pop(key)) for key in _BACKOFF_OPTIONS if key in options}
    return driver_class(name, transport, timeout_s=instrument.timeout_s, options=options, **kwargs)


def open_instrument(name: str, instrument, resource: str | None = None) -> Instrument:
    """Make and open the driver: connects and identifies, reads state, changes no output."""
    return make_instrument(name, instrument, resource).open()
