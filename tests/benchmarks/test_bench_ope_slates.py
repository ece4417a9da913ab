"""benchmarks/bench_ope_slates.py's helpers: the per-session item-level estimators, the reward-model context, the
error summary over seeds, and the pair-inclusion matrix of K independent draws."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from support.paths import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_ope_slates.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script(SCRIPT)


def test_last_item_context_is_one_hot_with_a_none_column(bench: ModuleType) -> None:
    ctx = bench.last_item_context(np.array([2, -1, 0, 2]), 3)
    expected = np.array([[0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 1, 0]], dtype=np.float64)
    np.testing.assert_array_equal(ctx, expected)


def test_item_level_values_by_hand(bench: ModuleType) -> None:
    """Three steps in two logged sessions (a third session left no row): step 0 shows items with weights 2 and
    0.5, step 1 one item with weight 30 (above τ = cap = 20), step 2 one item with weight 1."""
    reward = np.array([1.0, 0.0, 3.0, 2.0])
    target = np.array([0.8, 0.1, 0.6, 0.5])
    logging = np.array([0.4, 0.2, 0.02, 0.5])
    w = np.array([2.0, 0.5, 30.0, 1.0])
    step = np.array([0, 0, 1, 2])
    reward_hat = np.array([0.5, 0.5, 1.0, 1.5])
    value_hat = np.array([1.0, 3.0, 2.0, 0.5])  # rows of step 0 disagree (two folds): the step's v̂ is their mean 2
    n_ses, shown = 3, 4.0  # Σ_steps m(s): the target shows 4 distinct items over the 3 steps
    lam = 100.0
    got = bench.item_level_values(
        reward, target, logging, step, n_ses, shown, reward_hat, value_hat, cap=20.0, tau=20.0, lam=lam
    )
    wr = 2.0 * 1 + 0.5 * 0 + 30.0 * 3 + 1.0 * 2  # 94
    dm_total = 2.0 + 2.0 + 0.5  # Σ_steps v̂(s)
    resid = w * (reward - reward_hat)  # [1, −0.25, 60, 0.5]
    shrunk = lam * w / (w * w + lam)
    expected = {
        "ips": wr / 3,
        "capped_ips": (2.0 + 0 + 20.0 * 3 + 2.0) / 3,
        "snips": wr / w.sum() * shown / 3,
        "dm": dm_total / 3,
        "dr": (dm_total + resid.sum()) / 3,
        "sndr": (dm_total + resid.sum() / w.sum() * shown) / 3,
        "switch_dr": (dm_total + 1.0 - 0.25 + 0.5) / 3,  # step 1's row (w = 30 > τ) keeps only its DM term
        "dros": (dm_total + (shrunk * (reward - reward_hat)).sum()) / 3,
    }
    assert set(got) == set(bench.ITEM_ESTIMATORS)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-12), name


def test_item_level_values_limits(bench: ModuleType) -> None:
    """r̂ = 0: DM is 0, DR and Switch-DR (τ above every weight) are IPS, SNDR is SNIPS; λ → ∞ DRos is DR."""
    rng = np.random.default_rng(0)
    n = 50
    reward = rng.integers(0, 4, n).astype(np.float64)
    logging = rng.uniform(0.1, 1.0, n)
    target = rng.uniform(0.0, 1.0, n)
    step = np.sort(rng.integers(0, 20, n))
    step = np.unique(step, return_inverse=True)[1]
    zero = np.zeros(n)
    got = bench.item_level_values(reward, target, logging, step, 7, 11.0, zero, zero, cap=1e9, tau=1e9, lam=1e30)
    assert got["dm"] == 0.0
    for a, b in (("dr", "ips"), ("switch_dr", "ips"), ("sndr", "snips"), ("dros", "dr"), ("capped_ips", "ips")):
        assert got[a] == pytest.approx(got[b], rel=1e-9), (a, b)


def test_item_level_values_unbiased_on_an_additive_slate_bandit(bench: ModuleType) -> None:
    """Items shown by K independent draws, each shown item paying its own Bernoulli reward (the item model holds):
    the per-session IPS, DR (with a wrong r̂) and DM (with the true r̂) match Σ_i α_π(i) p_i, and the
    self-normalised forms too — they are scaled by Σ m(s), the target's expected number of items; scaled by the
    rows, as a per-row estimator would be, SNIPS would be off by the ratio of shown items (asserted apart)."""
    rng = np.random.default_rng(1)
    n_items, k, n_steps = 6, 3, 40_000
    p = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2])
    beta = np.array([0.7, 0.1, 0.1, 0.04, 0.03, 0.03])  # β shows 1.8 distinct items a step, π 2.5
    pi = np.array([0.1, 0.1, 0.2, 0.2, 0.2, 0.2])
    alpha_b, alpha_p = 1 - (1 - beta) ** k, 1 - (1 - pi) ** k
    truth = float(alpha_p @ p)  # one step per session
    draws = rng.choice(n_items, size=(n_steps, k), p=beta)
    shown = np.zeros((n_steps, n_items), dtype=bool)
    shown[np.arange(n_steps)[:, None], draws] = True
    step, item = np.nonzero(shown)
    reward = (rng.random(item.shape[0]) < p[item]).astype(np.float64)
    m_total = alpha_p.sum() * n_steps
    wrong = np.full(item.shape[0], 0.5)
    wrong_value = np.full(item.shape[0], 0.5 * alpha_p.sum())  # v̂ = Σ_i α_π(i)·0.5
    rhat_true = p[item]
    got_wrong = bench.item_level_values(
        reward, alpha_p[item], alpha_b[item], step, n_steps, m_total, wrong, wrong_value,
        cap=20.0, tau=20.0, lam=400.0,
    )  # fmt: skip
    got_true = bench.item_level_values(
        reward, alpha_p[item], alpha_b[item], step, n_steps, m_total, rhat_true, np.full(item.shape[0], truth),
        cap=20.0, tau=20.0, lam=400.0,
    )  # fmt: skip
    per_step_ips = np.bincount(step, weights=alpha_p[item] / alpha_b[item] * reward, minlength=n_steps)
    se = 4 * float(per_step_ips.std()) / math.sqrt(n_steps)  # four standard errors of IPS
    for name in ("ips", "snips", "dr", "sndr", "switch_dr"):
        assert abs(got_wrong[name] - truth) < se, (name, got_wrong[name], truth)
    assert got_true["dm"] == pytest.approx(truth)
    assert abs(got_true["dr"] - truth) < se / 2
    rows_scaled_snips = got_wrong["snips"] / m_total * item.shape[0]
    assert abs(rows_scaled_snips - truth) > 5 * se  # the scaling matters in this bandit


def test_error_summary_by_hand(bench: ModuleType) -> None:
    got = bench.error_summary([1.0, 2.0, 3.0], [0.0, 0.0, 1.0])  # errors 1, 2, 2
    mean, sd = 5 / 3, float(np.std([1.0, 2.0, 2.0], ddof=1))
    assert got["value"] == pytest.approx(2.0)
    assert got["error"] == pytest.approx(mean)
    assert got["error_ci_low"] == pytest.approx(mean - 4.303 * sd / math.sqrt(3))
    assert got["error_ci_high"] == pytest.approx(mean + 4.303 * sd / math.sqrt(3))
    assert got["error_per_seed"] == [1.0, 2.0, 2.0]
    assert got["abs_error"] == pytest.approx(mean)
    one = bench.error_summary([1.5], [2.0])
    assert one["error"] == one["error_ci_low"] == one["error_ci_high"] == -0.5


def test_pair_inclusion_matches_enumeration(bench: ModuleType) -> None:
    """P(i and j both in a slate of K independent draws), every ordered K-tuple of draws enumerated."""
    beta = np.array([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]])
    k = 3
    got = bench.pair_inclusion(beta, k)
    for b in range(beta.shape[0]):
        exact = np.zeros((4, 4))
        for draws in itertools.product(range(4), repeat=k):
            prob = float(np.prod(beta[b, list(draws)]))
            s = sorted(set(draws))
            exact[np.ix_(s, s)] += prob
        np.testing.assert_allclose(got[b], exact, rtol=1e-12, atol=1e-15)
