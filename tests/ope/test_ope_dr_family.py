"""DM, SNDR, Switch-DR and DRos: hand values, closed-form expectations on a known bandit, their limits,
the per-resample bootstrap of the ratio estimators, and the report's warnings and JSON safety."""

from __future__ import annotations

import json

import numpy as np
import pytest

from topkrec.errors import DataError
from topkrec.ope import (
    MAX_BOOT,
    bootstrap_ci,
    check_inputs,
    direct_method,
    doubly_robust,
    dr_shrinkage,
    effective_sample_size,
    low_ess_warning,
    off_policy_report,
    self_normalized_dr,
    shrunk_weights,
    switch_dr,
)

# The 5-armed Bernoulli bandit of test_ope.py: w = π/β = 0.125, 0.167, 0.667, 3, 10.
MEANS = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
BETA = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
PI = np.array([0.05, 0.05, 0.1, 0.3, 0.5])
W = PI / BETA
TRUE_VALUE = float(PI @ MEANS)
WRONG = np.array([0.5, 0.5, 0.2, 0.2, 0.2])  # a reward model that is wrong on every action


def _log(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.choice(5, size=n, p=BETA)
    r = (rng.random(n) < MEANS[a]).astype(np.float64)
    return a, r, PI[a], BETA[a]


def _mean_and_se(values: list[float]) -> tuple[float, float]:
    v = np.array(values)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size))


def test_hand_values():
    r = np.array([1.0, 0.0, 2.0])
    t = np.array([0.5, 1.0, 0.2])
    p = np.array([0.25, 0.5, 0.4])  # w = 2, 2, 0.5
    rh = np.array([0.5, 0.5, 1.0])  # r − r̂ = 0.5, −0.5, 1
    vh = np.array([1.0, 2.0, 3.0])
    assert direct_method(vh) == pytest.approx(2.0)
    assert doubly_robust(r, t, p, rh, vh) == pytest.approx(2.0 + (1.0 - 1.0 + 0.5) / 3)
    assert self_normalized_dr(r, t, p, rh, vh) == pytest.approx(2.0 + 0.5 / 4.5)
    # τ = 1 keeps only the third row's correction (w = 0.5)
    assert switch_dr(r, t, p, rh, vh, tau=1.0) == pytest.approx(2.0 + 0.5 / 3)
    # λ = 4: ŵ = 4w/(w² + 4) = 1, 1, 2/4.25
    assert shrunk_weights(np.array([2.0, 2.0, 0.5]), 4.0) == pytest.approx([1.0, 1.0, 2 / 4.25])
    assert dr_shrinkage(r, t, p, rh, vh, lam=4.0) == pytest.approx(2.0 + (0.5 - 0.5 + 2 / 4.25) / 3)


def test_switch_and_dros_reduce_to_dr_and_dm_at_their_limits():
    a, r, t, p = _log(2000, 0)
    rh, vh = WRONG[a], np.full(a.shape, PI @ WRONG)
    dr = doubly_robust(r, t, p, rh, vh)
    dm = direct_method(vh)
    assert switch_dr(r, t, p, rh, vh, tau=np.inf) == pytest.approx(dr, abs=1e-15)
    assert switch_dr(r, t, p, rh, vh, tau=W.max()) == pytest.approx(dr, abs=1e-15)  # every weight kept
    assert switch_dr(r, t, p, rh, vh, tau=0.0) == pytest.approx(dm, abs=1e-15)
    assert switch_dr(r, t, p, rh, vh, tau=0.1) == pytest.approx(dm, abs=1e-15)  # below every weight
    assert dr_shrinkage(r, t, p, rh, vh, lam=np.inf) == pytest.approx(dr, abs=1e-15)
    assert dr_shrinkage(r, t, p, rh, vh, lam=0.0) == pytest.approx(dm, abs=1e-15)
    # DRos goes continuously from DM (λ → 0) to DR (λ → ∞)
    assert dr_shrinkage(r, t, p, rh, vh, lam=1e-9) == pytest.approx(dm, abs=1e-6)
    assert dr_shrinkage(r, t, p, rh, vh, lam=1e9) == pytest.approx(dr, abs=1e-6)
    assert abs(dm - dr) > 0.1
    # with every weight 1 (target = logging), SNDR is DR
    ones = np.ones_like(t)
    assert self_normalized_dr(r, ones, ones, rh, vh) == pytest.approx(doubly_robust(r, ones, ones, rh, vh))


def test_closed_form_expectations_on_the_known_bandit():
    """E over logs of each estimator with a wrong reward model r̂, against its closed form:
    DM → Σπr̂; Switch → Σπr̂ + Σ_a π(a) 1{w(a) ≤ τ} (μ − r̂)(a); DRos → Σπr̂ + Σ_a β(a) ŵ(a) (μ − r̂)(a);
    DR and (asymptotically) SNDR → the true value."""
    tau, lam = 2.0, 4.0
    dm_value = float(PI @ WRONG)
    switch_value = dm_value + float(np.sum(PI * (W <= tau) * (MEANS - WRONG)))
    dros_value = dm_value + float(np.sum(BETA * shrunk_weights(W, lam) * (MEANS - WRONG)))
    assert abs(switch_value - TRUE_VALUE) > 0.05 and abs(dros_value - TRUE_VALUE) > 0.05  # both biased here
    vals: dict[str, list[float]] = {"dm": [], "dr": [], "sndr": [], "switch": [], "dros": []}
    for seed in range(300):
        a, r, t, p = _log(400, seed)
        rh, vh = WRONG[a], np.full(a.shape, dm_value)
        vals["dm"].append(float(direct_method(vh)))
        vals["dr"].append(float(doubly_robust(r, t, p, rh, vh)))
        vals["sndr"].append(float(self_normalized_dr(r, t, p, rh, vh)))
        vals["switch"].append(float(switch_dr(r, t, p, rh, vh, tau=tau)))
        vals["dros"].append(float(dr_shrinkage(r, t, p, rh, vh, lam=lam)))
    assert vals["dm"][0] == dm_value  # DM with a context-free model is that number on every log
    for name, expected in (("dr", TRUE_VALUE), ("sndr", TRUE_VALUE), ("switch", switch_value), ("dros", dros_value)):
        mean, se = _mean_and_se(vals[name])
        assert abs(mean - expected) < 3.5 * se, (name, mean, expected, se)
    # the biased ones are detectably away from the truth
    for name in ("switch", "dros"):
        mean, se = _mean_and_se(vals[name])
        assert abs(mean - TRUE_VALUE) > 5 * se, name


def test_every_dr_variant_is_unbiased_with_the_right_reward_model_and_beats_ips_variance():
    """With r̂ = the true means the correction has mean zero whatever the weights: all unbiased."""
    vals: dict[str, list[float]] = {"dr": [], "sndr": [], "switch": [], "dros": [], "ips": []}
    for seed in range(300):
        a, r, t, p = _log(400, seed)
        rh, vh = MEANS[a], np.full(a.shape, TRUE_VALUE)
        vals["dr"].append(float(doubly_robust(r, t, p, rh, vh)))
        vals["sndr"].append(float(self_normalized_dr(r, t, p, rh, vh)))
        vals["switch"].append(float(switch_dr(r, t, p, rh, vh, tau=2.0)))
        vals["dros"].append(float(dr_shrinkage(r, t, p, rh, vh, lam=4.0)))
        vals["ips"].append(float(np.mean(r * t / p)))
    for name in ("dr", "sndr", "switch", "dros"):
        mean, se = _mean_and_se(vals[name])
        assert abs(mean - TRUE_VALUE) < 3.5 * se, name
        assert np.std(vals[name]) < 0.8 * np.std(vals["ips"]), name
    # shrinking or switching off the large weights lowers the variance further
    assert np.std(vals["switch"]) < np.std(vals["dr"]) and np.std(vals["dros"]) < np.std(vals["dr"])


def test_bootstrap_recomputes_the_ratio_per_resample():
    a, r, t, p = _log(300, 5)
    rh, vh = WRONG[a], np.full(a.shape, float(PI @ WRONG))
    res = bootstrap_ci(self_normalized_dr, r, t, p, rh, vh, n_boot=1, seed=11)
    idx = np.random.default_rng(11).integers(0, 300, size=(1, 300))[0]
    by_hand = float(self_normalized_dr(r[idx], t[idx], p[idx], rh[idx], vh[idx]))
    assert res.ci_low == pytest.approx(by_hand) and res.ci_high == pytest.approx(by_hand)
    # … which is not the resample mean of fixed per-row terms normalised on the full sample
    w = t / p
    fixed = vh + w * (r - rh) / w.mean()
    assert by_hand != pytest.approx(float(fixed[idx].mean()))


def test_report_with_a_reward_model_has_every_estimator_and_level():
    a, r, t, p = _log(500, 3)
    rep = off_policy_report(
        r, t, p, n_boot=200, seed=1, level=0.8, reward_hat_logged=WRONG[a], value_hat_target=np.full(500, 0.4)
    )
    doc = rep.as_dict()
    assert set(doc["estimators"]) == {"ips", "capped_ips", "snips", "dm", "dr", "sndr", "switch_dr", "dros"}
    assert doc["level"] == 0.8 and doc["switch_tau"] == pytest.approx(np.exp(3)) and doc["dros_lambda"] > 0
    wide = off_policy_report(r, t, p, n_boot=200, seed=1, level=0.99).estimators["ips"]
    narrow = rep.estimators["ips"]
    assert wide.ci_high - wide.ci_low > narrow.ci_high - narrow.ci_low
    assert doc["estimators"]["dm"]["value"] == pytest.approx(0.4)
    # τ = ∞ and λ = ∞ make Switch-DR and DRos equal DR, intervals included
    inf = off_policy_report(
        r, t, p, n_boot=50, seed=1, reward_hat_logged=WRONG[a], value_hat_target=np.full(500, 0.4),
        switch_tau=np.inf, dros_lambda=np.inf,
    ).estimators  # fmt: skip
    assert inf["switch_dr"] == inf["dr"] and inf["dros"] == inf["dr"]


def test_ess_is_finite_for_extreme_weights_and_overflowing_weights_are_refused():
    assert effective_sample_size(np.array([1e300, 1e300, 0.0])) == pytest.approx(2.0)
    assert effective_sample_size(np.array([1e300, 1.0])) == pytest.approx(1.0)
    r = np.array([1.0, 0.0, 1.0])
    rep = off_policy_report(r, np.array([0.5, 0.5, 0.5]), np.array([1e-300, 0.5, 0.5]), n_boot=20)
    doc = rep.as_dict()
    json.dumps(doc, allow_nan=False)  # no NaN or inf anywhere
    assert doc["ess"] == pytest.approx(1.0)
    with pytest.raises(DataError, match="overflows"):
        check_inputs(r, np.array([0.5, 0.5, 0.5]), np.array([1e-310, 0.5, 0.5]))


def test_low_ess_warning_threshold():
    assert low_ess_warning(2.1, 10_000) is not None and "2.1" in str(low_ess_warning(2.1, 10_000))
    assert low_ess_warning(99.0, 10_000) is not None  # below 1 %
    assert low_ess_warning(100.0, 10_000) is None
    assert low_ess_warning(9.0, 20) is not None  # below the absolute minimum of 10
    w = np.r_[np.full(999, 1e-4), 1.0]
    rep = off_policy_report(np.ones(1000), w * 0.5, np.full(1000, 0.5), n_boot=10)
    assert rep.warnings and "effective sample size" in rep.warnings[0]
    assert not off_policy_report(np.ones(1000), np.full(1000, 0.5), np.full(1000, 0.5), n_boot=10).warnings


def test_bootstrap_resamples_are_bounded():
    r = np.ones(5)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(np.mean, r, n_boot=MAX_BOOT + 1)
