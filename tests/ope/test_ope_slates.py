"""Slate estimators: PI exact on enumerable slate problems, its closed forms against the general
pseudo-inverse, IIPS under the item-position model, and both unbiased over seeds on synthetic slate logs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from topkrec.errors import DataError
from topkrec.ope import (
    pi_weights_enumerated,
    pi_weights_product,
    pi_weights_uniform_without_replacement,
    position_breakdown,
    slate_codes,
    slate_estimates,
)

M, L = 5, 3  # items, positions


def _features(slates: np.ndarray, n_items: int) -> np.ndarray:
    f = np.zeros((slates.shape[0], slates.shape[1] * n_items))
    f[np.arange(slates.shape[0])[:, None], np.arange(slates.shape[1])[None, :] * n_items + slates] = 1.0
    return f


def _marginals(slates: np.ndarray, probs: np.ndarray, n_items: int) -> np.ndarray:
    """(L, A) probability of item a at position j under a distribution over the enumerated slates."""
    return (probs @ _features(slates, n_items)).reshape(slates.shape[1], n_items)


def _product_space(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    per_position = rng.dirichlet(np.ones(M), size=L)  # (L, M) logging μ_j
    slates = np.array(list(itertools.product(range(M), repeat=L)))
    probs = np.prod(per_position[np.arange(L)[None, :], slates], axis=1)
    return slates, probs, per_position


def _without_replacement_space() -> np.ndarray:
    return np.array(list(itertools.permutations(range(M), L)))


def _plackett_luce(slates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Probability of each ordered slate when items are drawn without replacement ∝ weights."""
    probs = np.ones(slates.shape[0])
    for row, s in enumerate(slates):
        left = weights.sum()
        for item in s:
            probs[row] *= weights[item] / left
            left -= weights[item]
    return probs


@pytest.mark.parametrize("seed", range(3))
def test_product_closed_form_equals_the_general_pseudo_inverse(seed):
    rng = np.random.default_rng(seed)
    slates, mu, per_position = _product_space(rng)
    target = rng.dirichlet(np.ones(slates.shape[0]))  # any target over slates, not a product
    q = _marginals(slates, target, M)
    exact = pi_weights_enumerated(slates, mu, q)
    rows = np.arange(slates.shape[0]).repeat(L)
    pos = np.tile(np.arange(L), slates.shape[0])
    items = slates.reshape(-1)
    closed = pi_weights_product(rows, q[pos, items], per_position[pos, items], slates.shape[0])
    np.testing.assert_allclose(closed, exact, atol=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_uniform_without_replacement_closed_form_equals_the_general_pseudo_inverse(seed):
    rng = np.random.default_rng(seed)
    slates = _without_replacement_space()
    mu = np.full(slates.shape[0], 1.0 / slates.shape[0])
    q = _marginals(slates, rng.dirichlet(np.ones(slates.shape[0])), M)
    exact = pi_weights_enumerated(slates, mu, q)
    rows = np.arange(slates.shape[0]).repeat(L)
    pos = np.tile(np.arange(L), slates.shape[0])
    items = slates.reshape(-1)
    closed = pi_weights_uniform_without_replacement(rows, q[pos, items], q.sum(0)[items], M, slates.shape[0])
    np.testing.assert_allclose(closed, exact, atol=1e-9)
    # the product formula is NOT right for this logging policy (marginals 1/M, but not independent)
    wrong = pi_weights_product(rows, q[pos, items], np.full(rows.shape, 1.0 / M), slates.shape[0])
    assert np.abs(wrong - exact).max() > 0.1


@pytest.mark.parametrize("logging", ["product", "uniform_no_replacement", "plackett_luce"])
def test_pi_is_exact_in_expectation_for_additive_rewards(logging):
    """E_μ[w(s) R(s)] = E_π[R(s)] exactly (by enumeration) for an additive slate reward R = Σ_j φ_j(s_j)."""
    rng = np.random.default_rng(7)
    if logging == "product":
        slates, mu, _ = _product_space(rng)
    else:
        slates = _without_replacement_space()
        mu = (
            np.full(slates.shape[0], 1.0 / slates.shape[0])
            if logging == "uniform_no_replacement"
            else _plackett_luce(slates, rng.random(M) + 0.2)
        )
    phi = rng.random((L, M))
    reward = phi[np.arange(L)[None, :], slates].sum(1)
    for _ in range(3):
        target = rng.dirichlet(np.full(slates.shape[0], 0.3))
        w = pi_weights_enumerated(slates, mu, _marginals(slates, target, M))
        assert float(mu @ (w * reward)) == pytest.approx(float(target @ reward), abs=1e-10)
    # a non-additive reward (a bonus when items 0 and 1 are both shown) breaks it
    both = (slates == 0).any(1) & (slates == 1).any(1)
    target = np.where(both, 1.0, 0.0) + 1e-3
    target /= target.sum()
    w = pi_weights_enumerated(slates, mu, _marginals(slates, target, M))
    bonus = reward + 2.0 * both
    assert abs(float(mu @ (w * bonus)) - float(target @ bonus)) > 1e-3


def test_iips_is_exact_in_expectation_under_the_item_position_model():
    """Each position's reward depends only on (item, position): E_μ[Σ_j r_j π_j/μ_j] = E_π[Σ_j r_j]."""
    rng = np.random.default_rng(3)
    slates, mu, per_position = _product_space(rng)
    click = rng.random((L, M))  # expected reward of item a at position j
    target = rng.dirichlet(np.ones(slates.shape[0]))
    q = _marginals(slates, target, M)
    pos = np.arange(L)[None, :]
    per_slate = (click[pos, slates] * q[pos, slates] / per_position[pos, slates]).sum(1)
    assert float(mu @ per_slate) == pytest.approx(float(target @ click[pos, slates].sum(1)), abs=1e-12)


def _slate_log(n_slates: int, seed: int, per_position: np.ndarray, target: np.ndarray, click: np.ndarray):
    """Rows of a product-logged slate log with (item, position) click rates; target is a product too."""
    rng = np.random.default_rng(seed)
    items = np.stack([rng.choice(M, size=n_slates, p=per_position[j]) for j in range(L)], axis=1)
    pos = np.tile(np.arange(L), n_slates)
    flat = items.reshape(-1)
    reward = (rng.random(flat.shape) < click[pos, flat]).astype(np.float64)
    slate = np.arange(n_slates).repeat(L)
    return slate, pos, flat, reward, target[pos, flat], per_position[pos, flat]


def test_pi_and_iips_unbiased_over_seeds_on_a_synthetic_slate_bandit():
    rng = np.random.default_rng(0)
    per_position = rng.dirichlet(np.full(M, 2.0), size=L)
    target = rng.dirichlet(np.full(M, 0.5), size=L)
    click = rng.random((L, M)) * np.array([[1.0], [0.6], [0.3]])  # position bias
    true_value = float((target * click).sum())  # additive: Σ_j Σ_a π_j(a) c_j(a)
    vals: dict[str, list[float]] = {"pi": [], "sn_pi": [], "iips": []}
    for seed in range(200):
        slate, pos, items, reward, t, p = _slate_log(300, seed, per_position, target, click)
        codes, n_slates = slate_codes(slate, pos)
        res, ess = slate_estimates(codes, n_slates, reward, t, p, n_boot=1)
        assert 0 < ess <= n_slates
        for name in vals:
            vals[name].append(res[name].value)
    for name in ("pi", "iips"):
        v = np.array(vals[name])
        se = v.std(ddof=1) / np.sqrt(v.size)
        assert abs(v.mean() - true_value) < 3.5 * se, (name, v.mean(), true_value, se)
    assert abs(np.mean(vals["sn_pi"]) - true_value) < 0.05  # consistent, small bias
    assert np.std(vals["iips"]) < np.std(vals["pi"])  # per-position rewards: IIPS uses more information


def test_position_breakdown_adds_up_to_iips_and_codes_check_duplicates():
    rng = np.random.default_rng(1)
    per_position = rng.dirichlet(np.ones(M), size=L)
    target = rng.dirichlet(np.ones(M), size=L)
    slate, pos, items, reward, t, p = _slate_log(400, 0, per_position, target, rng.random((L, M)))
    codes, n_slates = slate_codes(slate, pos)
    res, _ = slate_estimates(codes, n_slates, reward, t, p, n_boot=20)
    breakdown = position_breakdown(pos + 1, reward, t, p, cap=20.0, n_boot=20)
    assert list(breakdown) == ["1", "2", "3"] and all(b["n"] == 400 for b in breakdown.values())
    total = sum(b["estimators"]["ips"]["value"] for b in breakdown.values())
    assert total == pytest.approx(res["iips"].value)
    with pytest.raises(DataError, match="more than once"):
        slate_codes(np.array([7, 7, 8]), np.array([1, 1, 1]))


def test_uniform_without_replacement_needs_equal_lengths():
    with pytest.raises(DataError, match="same number"):
        pi_weights_uniform_without_replacement(np.array([0, 0, 1]), np.ones(3) / 3, np.ones(3) / 3, 5, 2)
