"""The paper's stateless simulations (§6.1) through the library's loss code (DESIGN §5)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from topkrec.simulate.stateless import (
    SCENARIOS,
    PolicySpec,
    StatelessConfig,
    run_scenario,
    topk_value,
    train_policy,
)

OFF = SCENARIOS["paper-offpolicy"]
TOPK = SCENARIOS["paper-topk"]


@pytest.fixture(scope="module")
def offpolicy() -> dict:
    return run_scenario("paper-offpolicy")["policies"]


@pytest.fixture(scope="module")
def topk() -> dict:
    return run_scenario("paper-topk")["policies"]


def test_offpolicy_without_correction_converges_to_r_beta(offpolicy):
    r, beta = np.array(OFF.reward), np.array(OFF.behavior)
    probs = np.array(offpolicy["none"]["probs"])
    assert np.allclose(probs, r * beta / (r * beta).sum(), atol=0.005)
    assert int(np.argmax(probs)) + 1 in (5, 6)


def test_offpolicy_with_is_correction_finds_the_best_item(offpolicy):
    assert offpolicy["is"]["probs"][9] > 0.95


def test_offpolicy_cap_moves_the_limit_toward_a9(offpolicy):
    """With the cap e³, a_10 (β = 1/55) gets w ≤ e³ while π(a_10) > e³/55 ≈ 0.37: the limit is (0.60, 0.40)."""
    probs = np.array(offpolicy["is_capped"]["probs"])
    assert 0.55 <= probs[8] <= 0.65 and 0.35 <= probs[9] <= 0.45
    assert probs[8:].sum() > 0.97
    # the fixed point of π ∝ min(π, cβ)·r restricted to a_9, a_10
    c = math.exp(3.0)
    p10 = probs[9]
    c10, c9 = min(p10, c / 55) * 10, min(1 - p10, 2 * c / 55) * 9
    assert p10 == pytest.approx(c10 / (c9 + c10), abs=0.01)


def test_topk_scenario_is_collapses_on_item_1(topk):
    assert topk["is"]["probs"][0] > 0.95
    assert topk["is"]["topk_value"] == pytest.approx(10.0, abs=0.1)


def test_topk_scenario_topk_splits_mass_over_items_1_and_2(topk):
    probs = np.array(topk["topk"]["probs"])
    assert 0.4 <= probs[0] <= 0.65 and 0.4 <= probs[1] <= 0.65
    assert (probs[2:] < 0.02).all()
    assert probs[0] == pytest.approx(20 / 38, abs=0.01)  # 2(1−π1)·10 = 2(1−π2)·9 with π1 + π2 = 1
    # expected distinct reward of two draws: ≈ 14.2 with top-K vs 10.0 with plain IS
    assert topk["topk"]["topk_value"] == pytest.approx(14.2, abs=0.1)
    assert topk["topk"]["topk_value"] > topk["is"]["topk_value"] + 4


def test_topk_value_closed_form():
    assert topk_value(np.array([1.0, 0, 0]), np.array([10.0, 9, 1]), 2) == pytest.approx(10.0)
    assert topk_value(np.array([0.5, 0.5, 0]), np.array([10.0, 9, 1]), 2) == pytest.approx(0.75 * 19)


def test_sampled_updates_reach_the_same_limits():
    cfg = StatelessConfig(update="sampled", steps=600, lr=0.03, batch_size=256, seed=0)
    is_probs = np.array(train_policy(OFF, PolicySpec("is", "is"), cfg).probs)
    assert is_probs[9] > 0.95
    tk = np.array(train_policy(TOPK, PolicySpec("topk", "topk", k=2), cfg).probs)
    assert 0.4 <= tk[0] <= 0.65 and 0.4 <= tk[1] <= 0.65 and (tk[2:] < 0.02).all()
    # seeded: same seed, same result
    again = np.array(train_policy(TOPK, PolicySpec("topk", "topk", k=2), cfg).probs)
    assert np.array_equal(tk, again)


def test_result_has_design_keys():
    res = run_scenario("paper-topk", StatelessConfig(steps=5))
    assert res["scenario"] == "paper-topk"
    assert {"none", "is", "topk", "behavior"} <= set(res["policies"])
    for p in res["policies"].values():
        assert len(p["probs"]) == 10 and abs(sum(p["probs"]) - 1) < 1e-9
