"""Off-policy estimators against closed-form answers on a bandit with known reward means."""

from __future__ import annotations

import numpy as np
import pytest

from topkrec.errors import DataError
from topkrec.ope import (
    bootstrap_ci,
    capped_ips,
    check_inputs,
    doubly_robust,
    effective_sample_size,
    ips,
    off_policy_report,
    snips,
)

# A 5-armed Bernoulli bandit: logging policy β, target policy π, both known exactly.
MEANS = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
BETA = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
PI = np.array([0.05, 0.05, 0.1, 0.3, 0.5])
TRUE_VALUE = float(PI @ MEANS)


def _log(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.choice(5, size=n, p=BETA)
    r = (rng.random(n) < MEANS[a]).astype(np.float64)
    return a, r, PI[a], BETA[a]


def test_hand_values():
    r = np.array([1.0, 0.0, 2.0])
    t = np.array([0.5, 1.0, 0.2])
    p = np.array([0.25, 0.5, 0.4])  # w = 2, 2, 0.5
    assert ips(r, t, p) == pytest.approx((2 + 0 + 1) / 3)
    assert capped_ips(r, t, p, cap=1.0) == pytest.approx((1 + 0 + 1) / 3)
    assert snips(r, t, p) == pytest.approx(3 / 4.5)
    assert effective_sample_size(np.array([2.0, 2.0, 0.5])) == pytest.approx(4.5**2 / 8.25)
    assert effective_sample_size(np.ones(7)) == pytest.approx(7)
    # DR with r̂ = r on the logged actions is exactly the reward model's value.
    assert doubly_robust(r, t, p, r, np.array([3.0, 1.0, 2.0])) == pytest.approx(2.0)


def test_ips_and_snips_unbiased_over_many_seeds():
    ips_vals, snips_vals = [], []
    for seed in range(300):
        _, r, t, p = _log(400, seed)
        ips_vals.append(float(ips(r, t, p)))
        snips_vals.append(float(snips(r, t, p)))
    for vals in (np.array(ips_vals), np.array(snips_vals)):
        se = vals.std(ddof=1) / np.sqrt(vals.size)
        assert abs(vals.mean() - TRUE_VALUE) < 3.5 * se, (vals.mean(), TRUE_VALUE, se)


def test_bootstrap_ci_covers_the_true_value_about_95_percent():
    covered = 0
    trials = 60
    for seed in range(trials):
        _, r, t, p = _log(600, 1000 + seed)
        res = bootstrap_ci(ips, r, t, p, n_boot=300, seed=seed)
        assert res.ci_low <= res.value <= res.ci_high
        covered += res.ci_low <= TRUE_VALUE <= res.ci_high
    assert 0.83 <= covered / trials <= 1.0


def test_capped_ips_is_biased_downward_as_theory_says():
    cap = 2.0
    # E[min(w, c) r] = Σ_a β(a) min(π(a)/β(a), c) μ(a) < Σ_a π(a) μ(a) when some w > c and rewards ≥ 0.
    expected = float(np.sum(BETA * np.minimum(PI / BETA, cap) * MEANS))
    assert expected < TRUE_VALUE - 0.2
    vals = np.array([float(capped_ips(*_log(400, seed)[1:], cap=cap)) for seed in range(300)])
    se = vals.std(ddof=1) / np.sqrt(vals.size)
    assert abs(vals.mean() - expected) < 3.5 * se
    assert vals.mean() < TRUE_VALUE - 10 * se
    # A cap above every weight changes nothing.
    _, r, t, p = _log(400, 0)
    assert capped_ips(r, t, p, cap=100.0) == pytest.approx(ips(r, t, p))


def test_doubly_robust_unbiased_with_a_wrong_reward_model_and_exact_with_the_right_one():
    wrong = np.full(5, 0.5)
    vals, vals_exact = [], []
    for seed in range(200):
        a, r, t, p = _log(400, seed)
        vals.append(float(doubly_robust(r, t, p, wrong[a], np.full(a.shape, PI @ wrong))))
        vals_exact.append(float(doubly_robust(r, t, p, MEANS[a], np.full(a.shape, TRUE_VALUE))))
    vals_a = np.array(vals)
    se = vals_a.std(ddof=1) / np.sqrt(vals_a.size)
    assert abs(vals_a.mean() - TRUE_VALUE) < 3.5 * se
    # With the true means the only noise left is the Bernoulli noise of r: far below IPS's.
    ips_sd = np.std([float(ips(*_log(400, s)[1:])) for s in range(200)])
    assert np.std(vals_exact) < 0.8 * ips_sd


def test_report_has_design_keys_and_consistent_numbers():
    a, r, t, p = _log(500, 3)
    rep = off_policy_report(r, t, p, n_boot=200, seed=1).as_dict()
    assert set(rep["estimators"]) == {"ips", "capped_ips", "snips"}
    for est in rep["estimators"].values():
        assert set(est) >= {"value", "ci_low", "ci_high"}
        assert est["ci_low"] <= est["value"] <= est["ci_high"]
    assert rep["n"] == 500
    assert rep["estimators"]["ips"]["value"] == pytest.approx(float(ips(r, t, p)))
    assert 0 < rep["ess"] < 500
    rep2 = off_policy_report(
        r, t, p, n_boot=200, seed=1, reward_hat_logged=MEANS[a], value_hat_target=np.full(500, 0.6)
    )
    assert "dr" in rep2.as_dict()["estimators"]
    assert rep2.as_dict()["estimators"]["ips"] == rep["estimators"]["ips"]  # same seed, same resamples


@pytest.mark.parametrize(
    "propensity, target, match",
    [
        ([0.5, 0.0], [0.5, 0.5], r"\(0, 1\]"),
        ([0.5, 1.5], [0.5, 0.5], r"\(0, 1\]"),
        ([0.5, np.nan], [0.5, 0.5], "non-finite"),
        ([0.5, 0.5], [0.5, -0.1], r"\[0, 1\]"),
    ],
)
def test_input_checks(propensity, target, match):
    with pytest.raises(DataError, match=match):
        check_inputs(np.array([1.0, 0.0]), np.array(target), np.array(propensity))
    with pytest.raises(DataError):
        check_inputs(np.array([np.nan, 0.0]), np.array([0.5, 0.5]), np.array([0.5, 0.5]))
