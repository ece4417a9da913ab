"""Closed-form tests of the REINFORCE objective (DESIGN §3; paper §4.2–4.5)."""

from __future__ import annotations

import math

import pytest
import torch

from topkrec.policy.objective import (
    DEFAULT_CAP,
    action_log_prob,
    corrected_policy_loss,
    effective_sample_size,
    importance_weight,
    log1mexp,
    reinforce_loss,
    topk_multiplier,
)


@pytest.fixture(autouse=True)
def _float64():
    """Exact comparisons in float64; restored afterwards so other test modules see the default."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _probs_logits(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g, dtype=torch.float64) * 1.5


# ----------------------------------------------------------------------------- λ_K closed forms
def test_topk_multiplier_limits():
    tiny = torch.log(torch.tensor([1e-12, 1e-30]))
    for k in (1, 2, 5, 10, 100):
        assert torch.allclose(topk_multiplier(tiny, k), torch.full((2,), float(k)), rtol=1e-9)
    one = torch.zeros(3)  # log π = 0, π = 1
    for k in (2, 5, 10):
        assert torch.equal(topk_multiplier(one, k), torch.zeros(3))
    assert torch.equal(topk_multiplier(one, 1), torch.ones(3))
    with pytest.raises(ValueError):
        topk_multiplier(one, 0)


def test_topk_multiplier_matches_formula_and_is_detached():
    pi = torch.tensor([1e-6, 0.01, 0.3, 0.5, 0.9, 0.999999], requires_grad=True)
    for k in (1, 2, 3, 10):
        lam = topk_multiplier(torch.log(pi), k)
        assert not lam.requires_grad
        expected = k * (1 - pi.detach()) ** (k - 1)
        assert torch.allclose(lam, expected, rtol=1e-7, atol=1e-12)


def test_log1mexp_accurate_at_both_ends():
    x = torch.tensor([-1e-12, -1e-5, -0.5, -math.log(2.0), -1.0, -20.0, -800.0])
    expected = torch.tensor([math.log(-math.expm1(v)) for v in x.tolist()])
    assert torch.allclose(log1mexp(x), expected, rtol=1e-10)


def test_k1_topk_equals_is_correction():
    logits = torch.randn(8, 20)
    a = torch.randint(0, 20, (8,))
    beh = torch.log_softmax(torch.randn(8, 20), -1).gather(1, a[:, None]).squeeze(1)
    ret = torch.rand(8) * 3
    grads = {}
    for corr in ("is", "topk"):
        lg = logits.clone().requires_grad_(True)
        loss, _ = corrected_policy_loss(action_log_prob(lg, a), beh, ret, correction=corr, k=1)
        loss.backward()
        grads[corr] = (loss.item(), lg.grad)
    assert grads["is"][0] == pytest.approx(grads["topk"][0], rel=1e-12)
    assert torch.allclose(grads["is"][1], grads["topk"][1], rtol=1e-12)


# ----------------------------------------------------------------------------- log-probs and gradient
def test_action_log_prob_is_per_row_gather():
    logits = torch.randn(6, 11)
    a = torch.tensor([0, 10, 3, 3, 7, 1])
    lp = action_log_prob(logits, a)
    assert lp.shape == (6,)
    expected = torch.stack([torch.log_softmax(logits[i], -1)[a[i]] for i in range(6)])
    assert torch.allclose(lp, expected)
    with pytest.raises(ValueError):
        action_log_prob(logits, a[:, None])
    with pytest.raises(ValueError):
        action_log_prob(logits, a[:5])


def test_action_log_prob_upcasts_half_precision():
    logits = torch.randn(4, 9).to(torch.bfloat16)
    a = torch.tensor([0, 1, 2, 8])
    assert action_log_prob(logits, a).dtype == torch.float32
    assert action_log_prob(logits.double(), a).dtype == torch.float64


@pytest.mark.parametrize("correction", ["none", "is", "topk"])
@pytest.mark.parametrize("snis", [False, True])
def test_gradient_wrt_logits_is_closed_form(correction, snis):
    b, n, k = 7, 13, 4
    torch.manual_seed(1)
    logits = torch.randn(b, n, requires_grad=True)
    a = torch.randint(0, n, (b,))
    behavior_logp = torch.log_softmax(torch.randn(b, n) * 2, -1).gather(1, a[:, None]).squeeze(1)
    returns = torch.rand(b) * 5
    cap = 3.0
    policy_logp = action_log_prob(logits, a)
    loss, _ = corrected_policy_loss(policy_logp, behavior_logp, returns, correction=correction, k=k, cap=cap, snis=snis)
    loss.backward()
    with torch.no_grad():
        probs = torch.softmax(logits, -1)
        pi_a = probs.gather(1, a[:, None]).squeeze(1)
        w = torch.minimum(pi_a / behavior_logp.exp(), torch.tensor(cap))
        if snis:
            w = w / w.mean()
        lam = k * (1 - pi_a) ** (k - 1)
        if correction == "none":
            w, lam = torch.ones(b), torch.ones(b)
        elif correction == "is":
            lam = torch.ones(b)
        onehot = torch.nn.functional.one_hot(a, n).double()
        expected = -(w * lam * returns)[:, None] * (onehot - probs) / b
    assert logits.grad is not None
    assert torch.allclose(logits.grad, expected, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- weights
def test_capping_caps_and_counts():
    policy_logp = torch.log(torch.tensor([0.5, 0.5, 0.01, 0.9]))
    behavior_logp = torch.log(torch.tensor([0.001, 0.25, 0.5, 0.9]))  # raw w = 500, 2, 0.02, 1
    w = importance_weight(policy_logp, behavior_logp, cap=DEFAULT_CAP)
    assert torch.allclose(w, torch.tensor([DEFAULT_CAP, 2.0, 0.02, 1.0]))
    assert float(w.max()) <= DEFAULT_CAP * (1 + 1e-12)
    assert torch.allclose(importance_weight(policy_logp, behavior_logp, cap=None), torch.tensor([500.0, 2, 0.02, 1]))
    _, stats = corrected_policy_loss(policy_logp, behavior_logp, torch.ones(4), correction="is", cap=DEFAULT_CAP)
    assert stats.capped_frac == pytest.approx(0.25)
    assert stats.max_weight == pytest.approx(DEFAULT_CAP)
    # a behaviour probability of zero does not overflow before the cap
    w_inf = importance_weight(torch.tensor([-1.0]), torch.tensor([-math.inf]), cap=5.0)
    assert torch.allclose(w_inf, torch.tensor([5.0]))
    with pytest.raises(ValueError):
        importance_weight(policy_logp, behavior_logp, cap=0.0)


def test_snis_normalises_to_mean_one():
    policy_logp = torch.log(torch.tensor([0.5, 0.2, 0.01, 0.9]))
    behavior_logp = torch.log(torch.tensor([0.1, 0.25, 0.5, 0.3]))
    w = importance_weight(policy_logp, behavior_logp, cap=None, snis=True)
    raw = torch.tensor([5.0, 0.8, 0.02, 3.0])
    assert torch.allclose(w, raw / raw.mean())
    assert float(w.mean()) == pytest.approx(1.0)


def test_effective_sample_size():
    assert float(effective_sample_size(torch.ones(10))) == pytest.approx(10.0)
    assert float(effective_sample_size(torch.tensor([1.0, 0, 0, 0]))) == pytest.approx(1.0)
    w = torch.tensor([1.0, 2.0, 3.0])
    assert float(effective_sample_size(w)) == pytest.approx(36 / 14)
    _, stats = corrected_policy_loss(torch.log(w / 10), torch.log(torch.full((3,), 0.1)), torch.ones(3), cap=None)
    assert stats.ess == pytest.approx(36 / 14)
    assert stats.mean_weight == pytest.approx(2.0)


def test_loss_value_and_shape_checks():
    logp = torch.log(torch.tensor([0.5, 0.25]))
    ret = torch.tensor([2.0, 4.0])
    assert float(reinforce_loss(logp, ret)) == pytest.approx(-(2 * math.log(0.5) + 4 * math.log(0.25)) / 2)
    with pytest.raises(ValueError):
        reinforce_loss(logp[:, None], ret[:, None])
    with pytest.raises(ValueError):
        corrected_policy_loss(logp, logp, ret, correction="bogus")


# ----------------------------------------------------------------------------- the gradient identity (§4.4)
@pytest.mark.parametrize("k", [1, 2, 5])
def test_expected_topk_update_is_gradient_of_top_k_objective(k):
    """E_{a~β}[w λ_K r ∇log π(a)] = ∇_θ J_K(π_θ), J_K(π) = Σ_a r(a)[1 − (1 − π(a))^K] (exact β, no cap).

    The expectation is taken exactly: a batch of one row per action, each row's gradient weighted by β(a).
    """
    n = 9
    theta = _probs_logits(n, seed=k)
    beta = torch.softmax(_probs_logits(n, seed=100 + k), -1)
    reward = torch.linspace(0.5, 4.0, n) ** 1.3

    expected_update = torch.zeros(n)
    for a in range(n):
        th = theta.clone().requires_grad_(True)
        act = torch.tensor([a])
        loss, _ = corrected_policy_loss(
            action_log_prob(th[None, :], act), beta.log()[act], reward[act], correction="topk", k=k, cap=None
        )
        (grad,) = torch.autograd.grad(loss, th)
        expected_update -= beta[a] * grad  # the update direction is −∇loss

    th = theta.clone().requires_grad_(True)
    pi = torch.softmax(th, -1)
    objective = (reward * (1 - (1 - pi) ** k)).sum()
    (grad_objective,) = torch.autograd.grad(objective, th)
    assert torch.allclose(expected_update, grad_objective, rtol=1e-10, atol=1e-13)
    # and it is not the plain IS gradient of Σ π r when K > 1
    if k > 1:
        (grad_is,) = torch.autograd.grad((reward * torch.softmax(th, -1)).sum(), th)
        assert not torch.allclose(expected_update, grad_is, rtol=1e-3)


def test_normalized_coefficients_are_scale_free_and_keep_the_direction() -> None:
    from topkrec.policy.objective import reinforce_loss

    torch.manual_seed(0)
    logits = torch.randn(6, 5, requires_grad=True)
    actions = torch.tensor([0, 1, 2, 3, 4, 0])
    returns = torch.tensor([1.0, 3.0, 0.5, 2.0, 4.0, 1.5])
    logp = torch.log_softmax(logits, 1).gather(1, actions[:, None]).squeeze(1)
    loss = reinforce_loss(logp, returns, normalize=True)
    scaled = reinforce_loss(logp, 100.0 * returns, normalize=True)
    torch.testing.assert_close(loss, scaled)
    torch.testing.assert_close(loss, -(returns / returns.abs().mean() * logp).mean())
    (g_norm,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (g_raw,) = torch.autograd.grad(reinforce_loss(logp, returns), logits)
    torch.testing.assert_close(g_norm * returns.abs().mean(), g_raw)  # the same direction, another length
