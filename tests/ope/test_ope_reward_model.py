"""Reward models for DM/DR: cross-fitting keeps each row's own reward out of its prediction; mean, linear
(and gbm when scikit-learn is installed) fit what they should; DR with a cross-fitted model is unbiased."""

from __future__ import annotations

import numpy as np
import pytest

from topkrec.ope import direct_method, doubly_robust
from topkrec.ope.reward_model import MeanRewardModel, RewardData, cross_fit, make_reward_model


def _contextual_log(n: int, seed: int, n_actions: int = 4, d: int = 2):
    """Context x ~ N(0, I); r = x·θ_a + b_a + noise; logging β(a|x) ∝ exp(0.5·x·θ_a) (context-dependent)."""
    rng = np.random.default_rng(seed)
    theta = np.random.default_rng(99).normal(size=(n_actions, d))
    bias = np.linspace(0.0, 1.0, n_actions)
    x = rng.normal(size=(n, d))
    mean = x @ theta.T + bias  # (n, A) true expected reward
    logits = 0.5 * x @ theta.T
    beta = np.exp(logits - logits.max(1, keepdims=True))
    beta /= beta.sum(1, keepdims=True)
    a = (rng.random(n)[:, None] > beta.cumsum(1)).sum(1)
    r = mean[np.arange(n), a] + rng.normal(scale=0.3, size=n)
    return x, a, r, beta, mean


def test_cross_fitting_keeps_each_rows_reward_out_of_its_prediction():
    x, a, r, beta, _ = _contextual_log(200, 0)
    data = RewardData(action=a, n_actions=4, context=x)
    uniform = lambda rows: np.full((rows.shape[0], 4), 0.25)  # noqa: E731
    for kind in ("mean", "linear"):
        rh, vh = cross_fit(kind, data, r, uniform, folds=5, seed=0)
        changed = r.copy()
        changed[17] += 100.0
        rh2, _ = cross_fit(kind, data, changed, uniform, folds=5, seed=0)
        assert rh2[17] == pytest.approx(rh[17])  # its own reward never reaches its prediction
        assert np.abs(rh2 - rh).max() > 1.0  # but other folds' predictions move
        rh1, _ = cross_fit(kind, data, changed, uniform, folds=1, seed=0)
        assert abs(rh1[17] - rh[17]) > 1.0  # without cross-fitting it does


def test_mean_model_by_hand_with_fallbacks():
    a = np.array([0, 0, 1, 1, 1])
    pos = np.array([0, 1, 0, 0, 1])
    r = np.array([1.0, 3.0, 2.0, 4.0, 6.0])
    data = RewardData(action=a, n_actions=3, context=np.zeros((5, 0)), position=pos, n_positions=2)
    m = MeanRewardModel()
    m.fit(data, np.arange(5), r)
    q = m.predict_all(data, np.arange(5))
    assert q[0].tolist() == [1.0, 3.0, 3.2]  # position 0: a0 cell 1, a1 cell (2+4)/2, a2 unseen → overall 16/5
    assert q[1].tolist() == [3.0, 6.0, 3.2]


def test_linear_model_recovers_a_linear_reward_with_interactions():
    x, a, r, _, mean = _contextual_log(4000, 1)
    data = RewardData(action=a, n_actions=4, context=x)
    model = make_reward_model("linear")
    model.fit(data, np.arange(4000), r)
    pred = model.predict_all(data, np.arange(4000))
    assert np.abs(pred - mean).max() < 0.1
    # the mean model cannot: it ignores the context
    mean_model = make_reward_model("mean")
    mean_model.fit(data, np.arange(4000), r)
    assert np.abs(mean_model.predict_all(data, np.arange(4000)) - mean).mean() > 0.5


def test_dm_and_dr_with_cross_fitted_models_on_a_contextual_bandit():
    """Target: uniform. DM with the right model class is close; DR is unbiased over seeds with the wrong
    (context-free) model; DM with the wrong model is biased in this log (β depends on the context).
    True value: E_x[(1/4) Σ_a (x·θ_a + b_a)] = mean(b) = 0.5, as E[x] = 0."""
    dr_mean_model, dm_mean_model, dm_linear = [], [], []
    for seed in range(60):
        x, a, r, beta, mean = _contextual_log(600, seed)
        data = RewardData(action=a, n_actions=4, context=x)
        uniform = lambda rows: np.full((rows.shape[0], 4), 0.25)  # noqa: E731
        target, logging = np.full(600, 0.25), beta[np.arange(600), a]
        rh, vh = cross_fit("mean", data, r, uniform, folds=5, seed=seed)
        dr_mean_model.append(float(doubly_robust(r, target, logging, rh, vh)))
        dm_mean_model.append(float(direct_method(vh)))
        _, vh_lin = cross_fit("linear", data, r, uniform, folds=5, seed=seed)
        dm_linear.append(float(direct_method(vh_lin)))
    dr = np.array(dr_mean_model)
    se = dr.std(ddof=1) / np.sqrt(dr.size)
    assert abs(dr.mean() - 0.5) < 3.5 * se
    dm_bad = np.array(dm_mean_model)
    assert abs(dm_bad.mean() - 0.5) > 5 * dm_bad.std(ddof=1) / np.sqrt(dm_bad.size)
    assert abs(np.mean(dm_linear) - 0.5) < 0.03


def test_gbm_fits_a_nonlinear_reward_better_than_the_mean():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    n = 3000
    x = rng.uniform(-2, 2, size=(n, 1))
    a = rng.integers(0, 3, size=n)
    truth = np.stack([np.sin(2 * x[:, 0]), x[:, 0] ** 2 / 2, (x[:, 0] > 0).astype(float)], axis=1)
    r = truth[np.arange(n), a] + rng.normal(scale=0.1, size=n)
    data = RewardData(action=a, n_actions=3, context=x)
    gbm, mean = make_reward_model("gbm", seed=0), make_reward_model("mean")
    gbm.fit(data, np.arange(n), r)
    mean.fit(data, np.arange(n), r)
    err_gbm = np.abs(gbm.predict_all(data, np.arange(n)) - truth).mean()
    err_mean = np.abs(mean.predict_all(data, np.arange(n)) - truth).mean()
    assert err_gbm < 0.1 < err_mean
