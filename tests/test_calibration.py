"""Delay calibration, coincidence-window optimisation and the detector bias sweep on the simulated
lab, scored against the simulation's true values (lab_configs/sim.toml)."""

import math

import numpy as np
import pytest

from qnode.host.calibration import (
    Pair, SimTagSource, analytic_window, calibrate_delays, correlation, fit_peak, optimise_window,
)
from qnode.host.config import load_config

BIN_PS = 1000
HERALD_TAIL_PS = 1000  # the emitters' lifetime (sim.heralding.emitter_lifetime_ps), known to the lab


@pytest.fixture(scope="module")
def config():
    return load_config()


def pulsed(config):
    """The reference lab with the pair source pumped by the sync laser, so every channel
    correlates with ch0 and every cable delay can be found relative to it."""
    ps = config.sim.pair_source.model_copy(update={"pulsed": True})
    return config.model_copy(update={"sim": config.sim.model_copy(update={"pair_source": ps})})


def test_simulated_fpga_applies_delay_and_enable_registers(config):
    source = SimTagSource(config)
    t, ch = source.acquire(0.05)
    assert np.count_nonzero(ch == 2) > 1000
    source.write_register("ts_enable", 0, 2)
    source.write_register("ts_delay_bins", 7, 1)
    t2, ch2 = source.acquire(0.05)
    assert np.count_nonzero(ch2 == 2) == 0
    assert source.read_register("ts_delay_bins", 1) == 7
    # the delay shows in the pair peak: arm b now arrives 7 bins earlier relative to arm a
    source.write_register("ts_enable", 1, 2)
    t3, ch3 = source.acquire(0.2)
    fit = fit_peak(correlation(t3, ch3, 1, 2, BIN_PS, 20_000))
    assert abs(fit.offset_ps - (4700 - 7000)) < BIN_PS / 2


def test_delay_calibration_finds_every_cable_delay_within_one_bin(config):
    truth = config.sim.cable_delay_ps  # {1: 3200, 2: 7900, 3: 12400, 4: 12900} relative to ch0
    source = SimTagSource(pulsed(config))
    pairs = [Pair(0, 1), Pair(0, 2), Pair(0, 3, "exp_tail", tail_ps=HERALD_TAIL_PS),
             Pair(0, 4, "exp_tail", tail_ps=HERALD_TAIL_PS)]
    cal = calibrate_delays(source, pairs, duration_s=1.0, verify_s=0.5)
    assert cal.applied, cal.reason
    for fit in cal.fits:
        error_bins = abs(fit.offset_ps - truth[fit.channel_b]) / BIN_PS
        assert error_bins < 1.0, f"ch{fit.channel_b}: {fit.offset_ps:.0f} ps vs {truth[fit.channel_b]} ps"
        assert fit.offset_err_ps < BIN_PS
    # written to the gateware: the latest channel gets 0, the others what brings them to it
    assert cal.after_bins[4] == 0 and cal.after_bins[0] == 13
    assert {c: source.read_register("ts_delay_bins", c) for c in range(5)} == cal.after_bins
    # and the peaks now sit at zero, within one bin
    assert all(abs(r) < BIN_PS for r in cal.residual_ps.values()), cal.residual_ps


def test_continuous_pairs_give_the_arm_difference_to_a_fraction_of_a_bin(config):
    # A CW pair source has no relation to the sync: only the difference of its arms is
    # measurable, and because its photons fall anywhere in a bin the fit resolves it finely.
    source = SimTagSource(config)
    t, ch = source.acquire(1.0)
    fit = fit_peak(correlation(t, ch, 1, 2, BIN_PS, 20_000))
    assert fit.ok
    assert abs(fit.offset_ps - (7900 - 3200)) < 0.1 * BIN_PS
    assert abs(fit.offset_ps - 4700) < 5 * fit.offset_err_ps + 20


def test_the_width_is_measured_when_the_bins_show_it_and_only_bounded_when_they_hide_it(config):
    # 50 ps of jitter per detector (71 ps for the pair) hides inside a 1 ns bin's triangle: the
    # fit can only bound it. At 200 ps per detector the bins' edges show it.
    for jitter_ps, resolvable in ((50.0, False), (200.0, True)):
        det = config.sim.detector.model_copy(update={"jitter_ps": jitter_ps})
        source = SimTagSource(config.model_copy(update={"sim": config.sim.model_copy(update={"detector": det})}))
        t, ch = source.acquire(1.0)
        fit = fit_peak(correlation(t, ch, 1, 2, BIN_PS, 20_000))
        true_sigma_ps = math.sqrt(2) * jitter_ps
        assert fit.ok and fit.sigma_resolved == resolvable, (jitter_ps, fit.sigma_ps, fit.sigma_upper_ps)
        assert true_sigma_ps <= fit.sigma_upper_ps < true_sigma_ps + BIN_PS / 5
        if resolvable:
            assert abs(fit.sigma_ps - true_sigma_ps) < 3 * fit.sigma_err_ps < 0.1 * true_sigma_ps


def test_no_significant_peak_is_refused_and_nothing_is_written(config):
    source = SimTagSource(config)
    before = {c: source.read_register("ts_delay_bins", c) for c in range(8)}
    # ch5 and ch6 see dark counts only: no peak
    cal = calibrate_delays(source, [Pair(1, 2), Pair(5, 6)], duration_s=0.3)
    assert not cal.applied
    assert "5-6" in cal.reason and ("not significant" in cal.reason or "no pairs" in cal.reason)
    assert {c: source.read_register("ts_delay_bins", c) for c in range(8)} == before


def test_window_optimisation_agrees_with_the_analytic_optimum(config):
    sim = config.sim
    ps, det = sim.pair_source, sim.detector
    eta = det.efficiency
    singles_a = ps.rate_hz * ps.transmission_a * eta + det.dark_rate_hz
    singles_b = ps.rate_hz * ps.transmission_b * eta + det.dark_rate_hz
    pair_rate = ps.rate_hz * ps.transmission_a * ps.transmission_b * eta ** 2
    sigma = math.sqrt(2) * det.jitter_ps
    offset = sim.cable_delay_ps[2] - sim.cable_delay_ps[1]
    source = SimTagSource(config)
    t, ch = source.acquire(1.0)
    hist = correlation(t, ch, 1, 2, BIN_PS, 20_000)
    chosen = optimise_window(hist)
    expected = analytic_window(pair_rate, singles_a, singles_b, sigma, offset, BIN_PS, 1.0)
    assert (chosen.start_ps, chosen.stop_ps) == expected
    # CAR and g2(0) of that window against the model: true pairs / accidentals in the window
    accidentals = singles_a * singles_b * chosen.window_ps * 1e-12
    assert chosen.car == pytest.approx(pair_rate / accidentals, rel=0.25)
    assert chosen.g2_zero == pytest.approx(chosen.car + 1)
    # a target CAR above the optimum's gives the widest window that meets it: one bin (the
    # peak sits 70/30 across two bins, so the fuller bin alone has ~1.4x the CAR)
    strict = optimise_window(hist, target_car=1.2 * chosen.car)
    assert strict.car >= 1.2 * chosen.car and strict.window_ps == BIN_PS
    with pytest.raises(ValueError, match="lower the target"):
        optimise_window(hist, target_car=100 * chosen.car)


# --- detector bias sweep ------------------------------------------------------------------


@pytest.fixture
def snspd_lab(config):
    """The simulated lab in simulated time with its Eos controller on a real socket."""
    from qnode.drivers.registry import open_instrument
    from qnode.sim.clock import SimClock
    from qnode.sim.instruments.rack import InstrumentRack
    from qnode.sim.lab import LabModel

    clock = SimClock()
    lab = LabModel(config, clock=clock)
    only_snspd = config.model_copy(update={"instruments": {"snspd": config.instruments["snspd"]}})
    with InstrumentRack(only_snspd, lab, any_free_port=True) as rack:
        # the counts thread polls the SimClock: give it time on a busy machine
        driver = open_instrument("snspd", rack.config_entry("snspd").model_copy(update={"timeout_s": 10.0}))
        try:
            yield lab, clock, driver
        finally:
            driver.close()


def test_bias_sweep_finds_the_model_plateau_and_switching_current(snspd_lab):
    from qnode.host.bias_sweep import BiasSweepSettings, EosCounts, sweep_bias
    from qnode.sim.snspd import Snspd

    lab, clock, driver = snspd_lab
    model = Snspd()
    # the model's plateau: 98 % of the sigmoid at mid + width ln(49) (~8.95 uA); latch above 12 uA
    plateau_start = model.sigmoid_mid_ua + model.sigmoid_width_ua * math.log(49)
    settings = BiasSweepSettings(bias_fraction=0.85)
    results = sweep_bias(EosCounts(driver, advance=clock.advance), settings)
    assert len(results) == 4
    for r in results:
        assert r.ok, r.reason
        assert r.plateau_start_ua == pytest.approx(plateau_start, abs=0.15)
        assert model.switching_current_ua - settings.step_ua < r.switching_ua <= model.switching_current_ua
        assert r.chosen_bias_ua == pytest.approx(0.85 * r.switching_ua)
        # dark counts rise exponentially under the latch (estimated as the excess over the plateau)
        at_switch = r.bias_ua.index(r.switching_ua)
        assert r.dark_rate_hz[at_switch] > 10 * max(r.dark_rate_hz[len(r.dark_rate_hz) // 2], 1.0)
    assert driver.bias_currents_ua() == [r.chosen_bias_ua for r in results]


def test_bias_sweep_detects_the_latch_and_recovers(snspd_lab):
    from qnode.host.bias_sweep import EosCounts, sweep_bias

    lab, clock, driver = snspd_lab
    driver.set_bias_current_ua(2, 13.0)  # latched before we start, too
    assert lab.latched(2)
    results = sweep_bias(EosCounts(driver, advance=clock.advance))
    for r in results:
        assert r.latched  # the sweep went past the switching current ...
        assert r.recovered and r.final_rate_hz > 0.9 * r.plateau_rate_hz  # ... and brought it back
    assert not any(lab.latched(ch) for ch in (1, 2, 3, 4))


def test_bias_sweep_reports_a_sweep_that_never_latches(snspd_lab):
    from qnode.host.bias_sweep import BiasSweepSettings, EosCounts, sweep_bias

    lab, clock, driver = snspd_lab
    before = driver.bias_currents_ua()
    results = sweep_bias(EosCounts(driver, advance=clock.advance), BiasSweepSettings(stop_ua=11.0))
    assert all(not r.ok and "raise stop_ua" in r.reason for r in results)
    assert driver.bias_currents_ua() == before  # left where they were


def test_bias_sweep_with_a_shutter_measures_the_dark_counts_of_the_model(snspd_lab):
    from qnode.host.bias_sweep import EosCounts, sweep_bias
    from qnode.sim.snspd import Snspd

    lab, clock, driver = snspd_lab
    model = Snspd()  # dark counts 100 /s at 10 uA, growing as exp(I / 0.5 uA)

    def shutter(open_: bool):
        lab.light_on = open_

    results = sweep_bias(EosCounts(driver, advance=clock.advance), light=shutter)
    assert lab.light_on  # left open
    for r in results:
        assert r.ok and r.dark_measured, r.reason
        for bias_ua, dark_hz, rate_hz in zip(r.bias_ua, r.dark_rate_hz, r.rate_hz):
            if bias_ua > r.switching_ua:
                assert dark_hz == 0 and rate_hz == 0  # latched: nothing at all
                continue
            expected_hz = model.dark_rate_nominal_hz * math.exp((bias_ua - model.nominal_bias_ua) / 0.5)
            # one 1 s counter period per step: Poisson
            assert abs(dark_hz - expected_hz) <= 5 * math.sqrt(expected_hz) + 2, (r.detector, bias_ua, dark_hz)
            assert dark_hz < rate_hz
