"""The interferometer formed by the two emitters' paths, and the fibre stretcher in one arm.

The TRUE phase at any instant (what a lock is scored against)::

    phi(t) = phi0 + W(t) + drift * t + A sin(2 pi f_ac t) + kicks(t) + 2 pi V_piezo(t) / V_2pi

- ``W`` is a random walk whose variance grows by ``diffusion_rad2_per_s`` (2 rad^2/s) per
  second: ``Var[W(t + s) - W(t)] = 2 s``. It is drawn on a 100 us grid (steps of 0.014 rad)
  from a seeded, counter-based stream, so any query order gives the same path, and linearly
  interpolated between grid points.
- linear drift 1 rad/s, acoustic line 0.1 rad at 50 Hz.
- the stretcher's mechanical response is first order (1 ms): after a voltage step the
  effective voltage approaches the new value as ``1 - exp(-dt / tau)``. Voltages are clamped
  to the driver's rails (0-150 V); 4.0 V is one full fringe (2 pi).
- ``kick(t, delta)`` jumps the true phase, for relock tests.

Times are int64 picoseconds in ``phase_rad`` (the host's unit) and float seconds elsewhere.
"""

from __future__ import annotations

import math
import threading

import numpy as np

PS = 1e-12


class Interferometer:
    GRID_S = 100e-6
    CHUNK_STEPS = 1 << 16  # 6.5 s of random walk per chunk
    KEEP_CHUNKS = 64  # about 7 minutes of past phase stay queryable
    SETTLED_TIME_CONSTANTS = 30.0  # older voltage steps have fully settled (exp(-30) ~ 1e-13)

    def __init__(self, *, seed: int = 1, volts_per_2pi: float = 4.0, mechanical_tau_s: float = 1e-3,
                 diffusion_rad2_per_s: float = 2.0, drift_rad_per_s: float = 1.0,
                 acoustic_amplitude_rad: float = 0.1, acoustic_hz: float = 50.0,
                 rail_low_v: float = 0.0, rail_high_v: float = 150.0, initial_phase_rad: float = 0.0,
                 initial_voltage_v: float = 0.0, actuator_history_s: float = 2.0):
        self.seed = seed
        self.volts_per_2pi = volts_per_2pi
        self.mechanical_tau_s = mechanical_tau_s
        self.diffusion_rad2_per_s = diffusion_rad2_per_s
        self.drift_rad_per_s = drift_rad_per_s
        self.acoustic_amplitude_rad = acoustic_amplitude_rad
        self.acoustic_hz = acoustic_hz
        self.rail_low_v = rail_low_v
        self.rail_high_v = rail_high_v
        self.initial_phase_rad = initial_phase_rad
        self.actuator_history_s = actuator_history_s
        self._lock = threading.RLock()
        self._chunks: dict[int, np.ndarray] = {}  # chunk index -> walk values at its grid points
        self._chunk_end: dict[int, float] = {}  # walk value at the start of the next chunk
        self._base_voltage_v = self._clamp(initial_voltage_v)  # target before the first kept step
        self._step_times_s: list[float] = []
        self._step_targets_v: list[float] = []
        self._kick_times_s: list[float] = []
        self._kick_rad: list[float] = []
        self._arrays = None

    # --- the actuator ----------------------------------------------------------------
    def _clamp(self, voltage_v: float) -> float:
        return min(max(float(voltage_v), self.rail_low_v), self.rail_high_v)

    def set_voltage_v(self, voltage_v: float, t_s: float) -> float:
        """The piezo driver's output changes to ``voltage_v`` at ``t_s``; returns the clamped value."""
        applied = self._clamp(voltage_v)
        with self._lock:
            if self._step_times_s and t_s < self._step_times_s[-1]:
                raise ValueError(f"voltage steps must come in time order ({t_s} s < {self._step_times_s[-1]} s)")
            self._step_times_s.append(float(t_s))
            self._step_targets_v.append(applied)
            # Fold steps that settled long ago into the base voltage.
            horizon = t_s - max(self.actuator_history_s, self.SETTLED_TIME_CONSTANTS * self.mechanical_tau_s)
            drop = 0
            while drop < len(self._step_times_s) - 1 and self._step_times_s[drop + 1] < horizon:
                drop += 1
            if drop:
                self._base_voltage_v = self._step_targets_v[drop - 1]
                del self._step_times_s[:drop], self._step_targets_v[:drop]
            self._arrays = None
        return applied

    def target_voltage_v(self) -> float:
        with self._lock:
            return self._step_targets_v[-1] if self._step_targets_v else self._base_voltage_v

    def kick(self, t_s: float, delta_rad: float) -> None:
        with self._lock:
            self._kick_times_s.append(float(t_s))
            self._kick_rad.append(float(delta_rad))
            order = np.argsort(self._kick_times_s, kind="stable")
            self._kick_times_s = [self._kick_times_s[i] for i in order]
            self._kick_rad = [self._kick_rad[i] for i in order]
            self._arrays = None

    def _actuator_arrays(self):
        if self._arrays is None:
            times = np.asarray(self._step_times_s, dtype=float)
            targets = np.asarray(self._step_targets_v, dtype=float)
            previous = np.concatenate(([self._base_voltage_v], targets[:-1]))
            kick_times = np.asarray(self._kick_times_s, dtype=float)
            kick_cum = np.concatenate(([0.0], np.cumsum(self._kick_rad)))
            self._arrays = (times, targets, targets - previous, kick_times, kick_cum)
        return self._arrays

    def voltage_v(self, t_s: np.ndarray) -> np.ndarray:
        """The stretcher's effective (mechanically filtered) voltage at times ``t_s``."""
        t_s = np.asarray(t_s, dtype=float)
        with self._lock:
            times, targets, steps, _, _ = self._actuator_arrays()
            base = self._base_voltage_v
        if len(times) == 0:
            return np.full(t_s.shape, base)
        index = np.searchsorted(times, t_s, side="right") - 1
        voltage = np.where(index >= 0, targets[np.maximum(index, 0)], base)
        window_s = self.SETTLED_TIME_CONSTANTS * self.mechanical_tau_s
        for back in range(len(times)):
            j = index - back
            valid = j >= 0
            age = t_s - times[np.maximum(j, 0)]
            valid &= age < window_s
            if not valid.any():
                break
            voltage = voltage - np.where(valid, steps[np.maximum(j, 0)] * np.exp(-np.where(valid, age, 0.0)
                                                                                  / self.mechanical_tau_s), 0.0)
        return voltage

    # --- the drift ---------------------------------------------------------------------
    def _chunk(self, k: int) -> np.ndarray:
        """Walk values on chunk ``k``'s grid points. Chunks are drawn from counter-based seeds,
        so a chunk dropped from memory is rebuilt identically when asked for again."""
        chunk = self._chunks.get(k)
        if chunk is not None:
            return chunk
        first = k
        while first > 0 and (first - 1) not in self._chunk_end:
            first -= 1
        step_sd = math.sqrt(self.diffusion_rad2_per_s * self.GRID_S)
        for index in range(first, k + 1):
            start = 0.0 if index == 0 else self._chunk_end[index - 1]
            increments = np.random.default_rng([self.seed, 0x5EED, index]).normal(0.0, step_sd, self.CHUNK_STEPS)
            self._chunk_end[index] = start + float(np.sum(increments))
            if index == k:
                chunk = start + np.concatenate(([0.0], np.cumsum(increments[:-1])))
        self._chunks[k] = chunk
        for old in [c for c in self._chunks if abs(c - k) > self.KEEP_CHUNKS]:
            del self._chunks[old]
        return chunk

    def random_walk_rad(self, t_s: np.ndarray) -> np.ndarray:
        t_s = np.maximum(np.asarray(t_s, dtype=float), 0.0)
        position = t_s / self.GRID_S
        grid = np.floor(position).astype(np.int64)
        frac = position - grid
        out = np.empty(t_s.shape)
        with self._lock:
            chunk_of = grid // self.CHUNK_STEPS
            for k in np.unique(np.concatenate([chunk_of.ravel(), (grid + 1).ravel() // self.CHUNK_STEPS])):
                self._chunk(int(k))
            left = self._walk_at(grid)
            right = self._walk_at(grid + 1)
        out[...] = left + (right - left) * frac
        return out

    def _walk_at(self, grid: np.ndarray) -> np.ndarray:
        chunk_of = grid // self.CHUNK_STEPS
        offset = grid % self.CHUNK_STEPS
        out = np.empty(grid.shape)
        for k in np.unique(chunk_of):
            mask = chunk_of == k
            out[mask] = self._chunk(int(k))[offset[mask]]
        return out

    # --- the true phase -----------------------------------------------------------------
    def phase_rad(self, t_ps: np.ndarray) -> np.ndarray:
        """The TRUE interferometer phase at times ``t_ps`` (int64 ps), radians, unwrapped."""
        t_s = np.asarray(t_ps, dtype=np.float64) * PS
        with self._lock:
            _, _, _, kick_times, kick_cum = self._actuator_arrays()
        kicks = kick_cum[np.searchsorted(kick_times, t_s, side="right")]
        return (self.initial_phase_rad
                + self.random_walk_rad(t_s)
                + self.drift_rad_per_s * t_s
                + self.acoustic_amplitude_rad * np.sin(2 * np.pi * self.acoustic_hz * t_s)
                + kicks
                + 2 * np.pi * self.voltage_v(t_s) / self.volts_per_2pi)
