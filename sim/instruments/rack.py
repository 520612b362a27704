"""All the simulated instruments a lab config asks for, started together on one LabModel.

``InstrumentRack(config, lab).start()`` serves every ``[instruments.NAME]`` with
``sim = true``: TCP ones at their configured host:port (or ports the OS picks, for tests),
serial ones on a fresh pty whose path replaces ``resource = "sim-pty"`` (or, for any other
``resource``, a symlink at that path to the pty, so a daemon in another process finds it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from qnode.drivers.transport import parse_host_port

from .gs200 import SimYokogawaGS200
from .keysight33500b import SimKeysight33500B
from .lakeshore import SimLakeShore336, SimLakeShore372
from .mdt694b import SimThorlabsMDT694B
from .pm100 import SimThorlabsPM100
from .santec_tsl570 import SimSantecTSL570
from .server import PtyInstrumentServer, TcpInstrumentServer
from .singlequantum_eos import EosCountsServer, SimSingleQuantumEos

SIMULATORS = {
    "lakeshore336": SimLakeShore336,
    "lakeshore372": SimLakeShore372,
    "santec_tsl570": SimSantecTSL570,
    "singlequantum_eos": SimSingleQuantumEos,
    "gs200": SimYokogawaGS200,
    "mdt694b": SimThorlabsMDT694B,
    "keysight33500b": SimKeysight33500B,
    "pm100": SimThorlabsPM100,
}

# Options in [instruments.NAME] that also shape the simulator.
SIMULATOR_OPTIONS = {
    "gs200": ("channel",),  # the FPGA channel whose detector the source biases
    "mdt694b": ("voltage_limit_v",),  # the front-panel limit switch: 75, 100 or 150 V
}


@dataclass
class RackSlot:
    name: str
    driver: str
    transport: str
    address: str  # host:port, or the pty's device path
    instrument: object  # the SimulatedInstrument
    server: object  # TcpInstrumentServer or PtyInstrumentServer
    counts: EosCountsServer | None = None

    def config_entry(self, config_instrument):
        """The config's Instrument entry, pointed at where this simulator actually listens."""
        options = dict(config_instrument.options)
        if self.counts is not None:
            options["counts_port"] = self.counts.port
        transport = "serial" if self.transport == "serial" else "tcp"
        return config_instrument.model_copy(update={"resource": self.address, "transport": transport,
                                                    "options": options})


class InstrumentRack:
    def __init__(self, config, lab, *, any_free_port: bool = False):
        self.config = config
        self.lab = lab
        self.any_free_port = any_free_port
        self.slots: dict[str, RackSlot] = {}
        self._links: list[str] = []

    def start(self) -> "InstrumentRack":
        try:
            for name, entry in self.config.instruments.items():
                if entry.sim:
                    self.slots[name] = self._start_one(name, entry)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_one(self, name: str, entry) -> RackSlot:
        try:
            simulator_class = SIMULATORS[entry.driver]
        except KeyError:
            raise ValueError(f"instruments.{name}: no simulator for driver {entry.driver!r}; "
                             f"known: {sorted(SIMULATORS)}") from None
        kwargs = {key: entry.options[key] for key in SIMULATOR_OPTIONS.get(entry.driver, ()) if key in entry.options}
        instrument = simulator_class(self.lab, **kwargs)
        if entry.transport == "serial":
            server = PtyInstrumentServer(instrument).start()
            if entry.resource != "sim-pty":
                # A fixed path in the config: link it to the pty so another process finds it.
                try:
                    _link(entry.resource, server.device_path)
                except OSError:
                    server.stop()
                    raise
                self._links.append(entry.resource)
                return RackSlot(name, entry.driver, "serial", entry.resource, instrument, server)
            return RackSlot(name, entry.driver, "serial", server.device_path, instrument, server)
        if entry.transport == "visa" and "::" not in entry.resource:
            raise ValueError(f"instruments.{name}: a simulated VISA instrument needs a TCPIP::host::port::SOCKET "
                             f"resource, got {entry.resource!r}")
        host, port = parse_host_port(entry.resource)
        server = TcpInstrumentServer(instrument, host, 0 if self.any_free_port else port).start()
        counts = None
        if isinstance(instrument, SimSingleQuantumEos):
            counts_port = 0 if self.any_free_port else int(entry.options.get("counts_port", 12345))
            try:
                counts = EosCountsServer(instrument, host, counts_port).start()
            except BaseException:
                server.stop()
                raise
        return RackSlot(name, entry.driver, entry.transport, server.address, instrument, server, counts)

    def config_entry(self, name: str):
        """``config.instruments[name]`` with the address this rack serves it at."""
        return self.slots[name].config_entry(self.config.instruments[name])

    def stop(self) -> None:
        for slot in self.slots.values():
            if slot.counts is not None:
                slot.counts.stop()
            slot.server.stop()
        for path in self._links:
            try:
                os.unlink(path)
            except OSError:
                pass
        self._links.clear()

    def __enter__(self):
        return self.start() if not self.slots else self

    def __exit__(self, *exc):
        self.stop()


def _link(path: str, device_path: str) -> None:
    """Point ``path`` at the pty; replace only a stale link of ours, never a real file or device."""
    if os.path.islink(path):
        if os.path.exists(path) and not os.readlink(path).startswith("/dev/pts/"):
            raise FileExistsError(f"{path} already links to {os.readlink(path)}; not replacing it")
        os.unlink(path)
    elif os.path.exists(path):
        raise FileExistsError(f"{path} exists and is not a link to a simulated pty; not replacing it")
    os.symlink(device_path, path)
