"""Simulated instruments: servers speaking each instrument's wire protocol.

Each simulator is a :class:`~qnode.sim.instruments.server.SimulatedInstrument` (the command
set, backed by the shared :class:`~qnode.sim.lab.LabModel`) served over real TCP on
127.0.0.1 or a real pty (serial instruments), so the real drivers are what is tested.
"""
