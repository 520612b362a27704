"""The simulated lab's servers in this process: instruments, the FPGA, and the model behind them.

``SimulatedLab(config).start()`` is what ``qnode daemon`` and ``make run`` use when the config's
FPGA link is ``sim://``: one LabModel (cryostat, detector bias, laser, interferometer) drives
the simulated instruments (real TCP sockets and ptys) and the simulated FPGA (real TCP), so the
daemon talks to them exactly as to hardware.
"""

from __future__ import annotations

from qnode.host.config import Instrument, LabConfig

from .fpga import FpgaServerThread, SimulatedFpga
from .instruments.rack import InstrumentRack
from .lab import LabModel


class SimulatedLab:
    def __init__(self, config: LabConfig, *, speed: float = 1.0):
        self.config = config
        self.speed = speed
        self.model = LabModel.for_demo(config, speed=speed)
        self.rack: InstrumentRack | None = None
        self.fpga: FpgaServerThread | None = None

    def start(self) -> "SimulatedLab":
        try:
            self.rack = InstrumentRack(self.config, self.model, any_free_port=True).start()
            self.fpga = FpgaServerThread(SimulatedFpga(self.config, lab=self.model), speed=self.speed)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def fpga_url(self) -> str:
        return self.fpga.url

    def instrument_entry(self, name: str) -> Instrument:
        """The config's entry for ``name``, pointed at its simulator if the lab runs one."""
        if self.rack is not None and name in self.rack.slots:
            return self.rack.config_entry(name)
        return self.config.instruments[name]

    def stop(self) -> None:
        if self.fpga is not None:
            self.fpga.stop()
            self.fpga = None
        if self.rack is not None:
            self.rack.stop()
            self.rack = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
