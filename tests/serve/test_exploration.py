"""Boltzmann exploration (paper §5): exact propensities against brute force and against frequencies."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from topkrec.errors import TopkrecError
from topkrec.serve.exploration import (
    ExplorationConfig,
    boltzmann_explore,
    explore_candidates,
    inclusion_probabilities,
    sample_without_replacement,
    top_candidates,
)


def brute_force_inclusion(log_weights: np.ndarray, n: int) -> np.ndarray:
    """Enumerate every ordered draw of n items without replacement (successive sampling)."""
    finite = np.isfinite(log_weights)
    w = np.where(finite, np.exp(log_weights - log_weights[finite].max()), 0.0)
    w = w / w.sum()
    out = np.zeros_like(w)
    for seq in itertools.permutations(np.flatnonzero(w > 0), n):
        prob, remaining = 1.0, 1.0
        for j in seq:
            prob *= w[j] / remaining
            remaining -= w[j]
        out[list(seq)] += prob
    return out


@pytest.mark.parametrize(
    ("width", "n", "scale"),
    [(6, 1, 1.0), (6, 2, 1.0), (7, 3, 3.0), (8, 4, 0.1), (7, 5, 6.0), (8, 3, 20.0), (5, 4, 0.0)],
)
def test_inclusion_probabilities_match_enumeration(width: int, n: int, scale: float) -> None:
    rng = np.random.default_rng(width * 10 + n)
    log_w = rng.normal(size=width) * scale
    got = inclusion_probabilities(log_w[None, :], n)[0]
    np.testing.assert_allclose(got, brute_force_inclusion(log_w, n), atol=1e-7)
    assert got.sum() == pytest.approx(n, abs=1e-6)


def test_inclusion_probabilities_rows_with_different_draws_and_blocked_items() -> None:
    log_w = np.array(
        [
            [0.5, -1.0, 2.0, 0.0, -np.inf, 1.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [3.0, -np.inf, -np.inf, 1.0, 0.0, -np.inf],
        ]
    )
    draws = np.array([2, 3, 5])  # the last asks for more than its 3 drawable items: all shown
    got = inclusion_probabilities(log_w, draws)
    np.testing.assert_allclose(got[0], brute_force_inclusion(log_w[0], 2), atol=1e-7)
    np.testing.assert_allclose(got[1], np.full(6, 0.5), atol=1e-7)  # uniform: n / N each
    np.testing.assert_array_equal(got[2], [1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    assert got[0, 4] == 0.0


def test_extreme_weights_stay_in_range_and_sum_to_n() -> None:
    log_w = np.array([[0.0, -50.0, -300.0, -800.0, 5.0, 4.0, -2.0]])
    got = inclusion_probabilities(log_w, 3)[0]
    assert np.all((got >= 0) & (got <= 1))
    assert got.sum() == pytest.approx(3.0, abs=1e-6)
    np.testing.assert_allclose(got, brute_force_inclusion(log_w[0], 3), atol=1e-7)


def test_propensities_match_frequencies_of_the_procedure() -> None:
    """Run the whole procedure many times with one seed; the share of runs that show each item must
    match its reported propensity (binomial standard error, 5 sigma)."""
    logits = np.array([2.0, 1.6, 1.5, 1.0, 0.7, 0.3, 0.1, -0.4, -1.0, -3.0])
    config = ExplorationConfig(k=4, m=8, k_prime=1, temperature=0.7)
    runs = 20_000
    slates = boltzmann_explore(np.tile(logits, (runs, 1)), config, rng=123)
    assert slates.items.shape == (runs, 4) and slates.valid.all()
    # The propensity of an item does not depend on which run shows it.
    props = np.zeros(logits.shape[0])
    props[slates.items.ravel()] = slates.propensities.ravel()
    shown_any = np.zeros(logits.shape[0], dtype=bool)
    shown_any[slates.items.ravel()] = True
    for item in np.flatnonzero(shown_any):
        np.testing.assert_allclose(slates.propensities[slates.items == item], props[item], rtol=1e-12)
    freq = np.bincount(slates.items.ravel(), minlength=logits.shape[0]) / runs
    se = np.sqrt(np.maximum(props * (1 - props), 1e-12) / runs)
    assert np.all(np.abs(freq - props) <= 5 * se + 1e-9), (freq, props)
    assert props[0] == 1.0  # the K′ = 1 most probable item is always shown
    assert props[8] == 0.0 and props[9] == 0.0  # outside the top M = 8: never shown
    assert props.sum() == pytest.approx(4.0, abs=1e-6)


def test_slate_layout_unique_deterministic_first_and_seeded() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 1000))
    config = ExplorationConfig(k=10, m=50, k_prime=3, temperature=1.0)
    a = boltzmann_explore(logits, config, rng=7)
    b = boltzmann_explore(logits, config, rng=7)
    c = boltzmann_explore(logits, config, rng=8)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.propensities, b.propensities)
    assert not np.array_equal(a.items, c.items)
    top3 = np.argsort(-logits, axis=1)[:, :3]
    np.testing.assert_array_equal(a.items[:, :3], top3)
    np.testing.assert_array_equal(a.propensities[:, :3], 1.0)
    top50 = np.argsort(-logits, axis=1)[:, :50]
    for row in range(5):
        assert len(set(a.items[row].tolist())) == 10
        assert set(a.items[row].tolist()) <= set(top50[row].tolist())
        np.testing.assert_allclose(a.scores[row], logits[row, a.items[row]])
    assert np.all((a.propensities[:, 3:] > 0) & (a.propensities[:, 3:] < 1))


def test_fewer_candidates_than_k_gives_shorter_valid_slates() -> None:
    logits = np.full((1, 6), -np.inf)
    logits[0, [1, 4, 5]] = [0.3, 0.2, 0.1]
    s = boltzmann_explore(logits, ExplorationConfig(k=5, m=6, k_prime=1), rng=0)
    assert s.valid.sum() == 3
    assert set(s.items[s.valid].tolist()) == {1, 4, 5}
    np.testing.assert_array_equal(s.propensities[s.valid], 1.0)  # everything available is shown


def test_k_prime_equal_k_is_deterministic_top_k() -> None:
    logits = np.array([[0.1, 3.0, 2.0, -1.0, 5.0]])
    s = boltzmann_explore(logits, ExplorationConfig(k=3, m=5, k_prime=3), rng=0)
    np.testing.assert_array_equal(s.items[0], [4, 1, 2])
    np.testing.assert_array_equal(s.propensities[0], 1.0)


def test_temperature_flattens_and_sharpens() -> None:
    logits = np.array([[0.0, 0.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0]])
    cand_items, cand_logits = top_candidates(logits, 8)
    hot = inclusion_probabilities(cand_logits[:, 1:] / 100.0, 2)[0]
    cold = inclusion_probabilities(cand_logits[:, 1:] / 0.05, 2)[0]
    assert hot.max() - hot.min() < 0.02  # near uniform 2/7
    assert cold[0] > 0.999 and cold[1] > 0.97  # the two largest remaining logits
    s = explore_candidates(
        cand_items, cand_logits, ExplorationConfig(k=3, m=8, k_prime=1, temperature=0.05), np.random.default_rng(0)
    )
    assert s.items[0, 0] == 2


@pytest.mark.parametrize(
    ("logits", "temperature", "expected"),
    [
        # one item carries all the mass; the floored rest are drawn uniformly: 1, then 2 of 4
        (np.array([0.0, -1000.0, -1000.0, -1000.0, -1000.0]), 1.0, [1.0, 0.5, 0.5, 0.5, 0.5]),
        # T → 0: exploration becomes top-K by logit
        (np.array([3.0, 2.0, 1.0, 0.5, 0.0]), 1e-6, [1.0, 1.0, 1.0, 0.0, 0.0]),
    ],
)
def test_extreme_temperatures_and_gaps_report_what_is_run(
    logits: np.ndarray, temperature: float, expected: list[float]
) -> None:
    config = ExplorationConfig(k=3, m=5, k_prime=0, temperature=temperature)
    runs = 4000
    s = boltzmann_explore(np.tile(logits, (runs, 1)), config, rng=0)
    props = np.zeros(5)
    props[s.items.ravel()] = s.propensities.ravel()
    np.testing.assert_allclose(props[props > 0], np.array(expected)[props > 0], atol=1e-5)
    freq = np.bincount(s.items.ravel(), minlength=5) / runs
    np.testing.assert_allclose(freq, expected, atol=0.04)
    assert np.all(np.isfinite(s.propensities)) and np.all(s.propensities[s.valid] > 0)


def test_sampling_without_replacement_first_draw_is_softmax() -> None:
    log_w = np.log(np.array([[0.5, 0.3, 0.2]]))
    draws = sample_without_replacement(np.repeat(log_w, 20_000, axis=0), 2, np.random.default_rng(1))
    assert np.all(draws[:, 0] != draws[:, 1])
    freq = np.bincount(draws[:, 0], minlength=3) / 20_000
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.2], atol=0.015)


@pytest.mark.parametrize(
    "config",
    [
        ExplorationConfig(k=0),
        ExplorationConfig(k=5, m=4),
        ExplorationConfig(k=5, k_prime=6),
        ExplorationConfig(k=5, temperature=0.0),
        ExplorationConfig(k=5, temperature=float("nan")),
    ],
)
def test_invalid_settings_are_user_errors(config: ExplorationConfig) -> None:
    with pytest.raises(TopkrecError):
        boltzmann_explore(np.zeros(10), config, rng=0)


def test_weights_thousands_of_nats_apart_are_exact() -> None:
    """No underflow: the quadrature follows each candidate's own window in log-time."""
    log_w = np.array([[0.0, -1000.0, -1000.5, -3000.0, -3001.0, -9000.0]])
    got = inclusion_probabilities(log_w, 4)[0]
    # tiers are drawn in order: 0, then {1, 2} both, then one of {3, 4} by their ratio e^1 : 1
    p3 = np.e / (1 + np.e)
    np.testing.assert_allclose(got, [1.0, 1.0, 1.0, p3, 1 - p3, 0.0], atol=1e-6)


def test_cost_bound_uses_the_pool_really_sampled() -> None:
    config = ExplorationConfig(k=1000, m=10_000, k_prime=0)
    with pytest.raises(TopkrecError, match="lower m"):
        config.validate()
    with pytest.raises(TopkrecError, match="lower m"):
        config.validate(n_candidates=300)  # 300 · 300 > 50 000
    config.validate(n_candidates=200)  # 200 · 200 = 40 000: fine
    s = boltzmann_explore(np.arange(50.0), config, rng=0)  # a 50-item catalogue: everything is shown
    assert s.valid.sum() == 50 and np.all(s.propensities[s.valid] == 1.0)
