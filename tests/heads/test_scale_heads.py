"""Sampled and adaptive softmax heads: sampling, exact log π, the estimate, learning, the registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from topkrec.errors import TopkrecError
from topkrec.heads import HEADS, AdaptiveSoftmaxHead, default_cutoffs, make_head
from topkrec.heads.sampled import (
    SampledSoftmaxHead,
    log_uniform_log_q,
    sampled_log_prob_estimate,
    sampled_softmax_log_prob,
    set_proposal_counts,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small ops: one intra-op thread avoids stalls when the 2 shared cores are busy (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _full_logp(head: SampledSoftmaxHead, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    logits = (state @ head.weight.t() + head.bias) / head.temperature
    return F.log_softmax(logits, dim=1).gather(1, actions[:, None]).squeeze(1)


def test_log_uniform_proposal_is_normalised_and_sampled_with_its_frequencies():
    n = 50
    log_q = log_uniform_log_q(n)
    assert math.isclose(float(log_q.double().exp().sum()), 1.0, rel_tol=1e-6)
    assert bool((log_q[1:] < log_q[:-1]).all())  # decreasing in the (frequency-ordered) id
    torch.manual_seed(0)
    head = SampledSoftmaxHead(4, n, negatives=200_000)
    draws = head._sample(torch.device("cpu"))
    freq = torch.bincount(draws, minlength=n).double() / draws.numel()
    assert int(draws.min()) >= 0 and int(draws.max()) < n
    torch.testing.assert_close(freq, log_q.double().exp(), atol=3e-3, rtol=0)


def test_popularity_proposal_follows_item_counts():
    counts = torch.tensor([50.0, 0.0, 10.0, 30.0, 5.0])
    torch.manual_seed(1)
    head = SampledSoftmaxHead(3, 5, negatives=100_000, proposal="popularity", item_counts=counts)
    want = (counts + 1.0) / (counts + 1.0).sum()
    torch.testing.assert_close(head.proposal_log_q.double().exp(), want.double(), atol=1e-6, rtol=0)
    freq = torch.bincount(head._sample(torch.device("cpu")), minlength=5).double() / 100_000
    torch.testing.assert_close(freq, want.double(), atol=5e-3, rtol=0)
    with pytest.raises(TopkrecError):
        head.set_item_counts(torch.ones(4))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_exact_log_prob_matches_full_softmax(temperature):
    torch.manual_seed(2)
    head = SampledSoftmaxHead(16, 3001, negatives=64, temperature=temperature)
    with torch.no_grad():
        head.bias.normal_()
    state = torch.randn(33, 16)
    actions = torch.randint(0, 3001, (33,))
    out = head(state, actions)
    assert out.logp.dtype == torch.float32 and not out.logp.requires_grad
    torch.testing.assert_close(out.logp, _full_logp(head, state, actions).detach(), atol=1e-5, rtol=1e-5)
    assert out.train_logp.requires_grad


def test_estimate_of_the_normaliser_is_unbiased():
    """E[Ẑ] = Z: averaged over many independent negative sets, exp(l_a − log π̂) → Z."""
    torch.manual_seed(3)
    n, s, draws = 40, 8, 20_000
    logits = torch.randn(n, dtype=torch.float64) * 1.5
    log_q = log_uniform_log_q(n).double()
    negatives = torch.multinomial(log_q.exp(), draws * s, replacement=True).view(draws, s)
    a = 7
    target = torch.full((draws,), float(logits[a]), dtype=torch.float64)
    est = sampled_log_prob_estimate(target, logits[negatives], log_q[negatives], negatives == a).double()
    z_hat = torch.exp(target - est)  # Ẑ per draw
    z = float(logits.exp().sum())
    assert abs(float(z_hat.mean()) / z - 1.0) < 0.02


def test_accidental_hits_are_masked():
    target = torch.tensor([2.0, 0.5])
    neg_logits = torch.tensor([[2.0, 9.0], [1.0, 1.0]])
    hit = torch.tensor([[True, True], [False, True]])
    log_q = torch.log(torch.tensor([0.5, 0.5]))
    lp = sampled_softmax_log_prob(target, neg_logits, torch.log(torch.tensor([0.25, 0.25])), log_q, hit)
    assert float(lp[0]) == 0.0  # every negative was the target: a softmax over the target alone
    want1 = (0.5 - math.log(0.25)) - math.log(math.exp(0.5 - math.log(0.25)) + math.exp(1.0 - math.log(0.5)))
    assert math.isclose(float(lp[1]), want1, rel_tol=1e-6)


def test_estimate_head_option_is_cheap_and_close_for_a_flat_softmax():
    torch.manual_seed(4)
    head = SampledSoftmaxHead(8, 5000, negatives=2000, proposal="uniform", normaliser="estimate")
    with torch.no_grad():
        head.weight.mul_(0.1)  # near-uniform π: the uniform proposal is then almost the model
    state = torch.randn(16, 8)
    actions = torch.randint(0, 5000, (16,))
    out = head(state, actions)
    exact = _full_logp(head, state, actions).detach()
    assert float((out.logp - exact).abs().max()) < 0.05


def test_sampled_head_learns_the_target_items():
    """Contexts with one right item each: sampled-softmax training makes it the argmax of the full softmax."""
    torch.manual_seed(5)
    n_items, n_ctx, d = 500, 20, 16
    contexts = torch.randn(n_ctx, d)
    targets = torch.randperm(n_items)[:n_ctx]
    head = SampledSoftmaxHead(d, n_items, negatives=32, normaliser="estimate")
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(150):
        idx = torch.randint(0, n_ctx, (64,))
        loss = -head(contexts[idx], targets[idx]).train_logp.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = head.logits(contexts).argmax(dim=1)
        logp = head.exact_log_prob(contexts, targets)
    assert float((pred == targets).float().mean()) >= 0.95
    assert float(logp.mean()) > math.log(0.5)


def test_registry_builds_and_rebuilds_heads_from_options():
    assert {"full", "sampled", "adaptive"} <= set(HEADS)
    head = make_head("sampled", 8, 1000, negatives=77, proposal="uniform", normaliser="estimate")
    assert isinstance(head, SampledSoftmaxHead) and head.kind == "sampled"
    again = make_head("sampled", 8, 1000, **head.options())
    assert again.options() == head.options()
    again.load_state_dict(head.state_dict())  # proposal_log_q travels with the weights
    assert "proposal_log_q" in head.state_dict() and "proposal_cdf" not in head.state_dict()
    adaptive = make_head("adaptive", 64, 1000)
    assert isinstance(adaptive, AdaptiveSoftmaxHead)
    assert make_head("adaptive", 64, 1000, **adaptive.options()).options() == adaptive.options()
    with pytest.raises(TopkrecError):
        make_head("sampled", 8, 10, proposal="zipf")
    with pytest.raises(TopkrecError):
        make_head("sampled", 8, 10, negatives=0)


def test_default_cutoffs_are_the_reference_settings():
    assert default_cutoffs(160_000) == [8000, 16000, 53333]
    assert default_cutoffs(30) == [1, 3, 10]
    assert default_cutoffs(3) == [1]
    with pytest.raises(TopkrecError):
        default_cutoffs(1)


def test_adaptive_head_gives_exact_normalised_log_probs():
    torch.manual_seed(6)
    head = AdaptiveSoftmaxHead(64, 400, temperature=0.8)
    assert head.cutoffs == [20, 40, 133] and head.adaptive.div_value == 4.0
    state = torch.randn(10, 64)
    actions = torch.tensor([0, 5, 19, 20, 39, 40, 132, 133, 399, 250])  # every cluster
    out = head(state, actions)
    full = head.logits(state)  # (B, N) log-probs
    torch.testing.assert_close(full.exp().sum(dim=1), torch.ones(10), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logp, full.gather(1, actions[:, None]).squeeze(1).detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.train_logp.detach(), out.logp)
    # temperature = scaling the state (no biases in the adaptive layers)
    plain = AdaptiveSoftmaxHead(64, 400)
    plain.load_state_dict(head.state_dict())
    torch.testing.assert_close(full, plain.logits(state / 0.8))
    (-out.train_logp.mean()).backward()
    assert all(p.grad is not None for p in head.parameters())


def test_heads_reject_bad_shapes():
    head = SampledSoftmaxHead(4, 20, negatives=5)
    with pytest.raises(ValueError):
        head(torch.randn(3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TopkrecError):
        AdaptiveSoftmaxHead(4, 20, cutoffs=[5, 5])


def test_helpers_build_options_and_hand_counts_to_popularity_heads():
    opts = {"negatives": 64, "proposal": "popularity", "normaliser": "estimate"}
    heads = [make_head("sampled", 4, 6, **opts), make_head("sampled", 4, 6), make_head("full", 4, 6)]
    assert set_proposal_counts(heads, torch.tensor([5.0, 4, 3, 2, 1, 0])) == 1
    assert bool(heads[0].proposal_from_counts) and not bool(heads[1].proposal_from_counts)
    torch.testing.assert_close(heads[0].proposal_log_q.exp().sum(), torch.tensor(1.0))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampled_head_fast_path_matches_the_reference_formulas(temperature):
    """The head's one-buffer logsumexp Function gives the reference surrogate, estimate and gradients."""
    torch.manual_seed(7)
    n, d, b, s = 60, 6, 9, 40  # small catalogue: accidental hits and repeated negatives are certain
    head = SampledSoftmaxHead(d, n, negatives=s, normaliser="estimate", temperature=temperature)
    with torch.no_grad():
        head.bias.normal_()
    state = torch.randn(b, d, requires_grad=True)
    actions = torch.randint(0, n, (b,))
    torch.manual_seed(123)
    negatives = head._sample(torch.device("cpu"))
    torch.manual_seed(123)
    out = head(state, actions)

    # Reference: plain autograd over the explicit (B, S) logits.
    logits_a = ((state * head.weight[actions]).sum(1) + head.bias[actions]) / temperature
    logits_n = (state @ head.weight[negatives].t() + head.bias[negatives]) / temperature
    hit = negatives[None, :] == actions[:, None]
    assert bool(hit.any())
    log_q = head.proposal_log_q
    ref = sampled_softmax_log_prob(logits_a, logits_n, log_q[actions], log_q[negatives], hit)
    torch.testing.assert_close(out.train_logp, ref, atol=1e-5, rtol=1e-5)
    est = sampled_log_prob_estimate(logits_a.detach(), logits_n.detach(), log_q[negatives], hit).clamp_max(0.0)
    torch.testing.assert_close(out.logp, est, atol=1e-5, rtol=1e-5)

    g = torch.randn(b)
    params = [state, head.weight, head.bias]
    got = torch.autograd.grad(out.train_logp, params, g)
    want = torch.autograd.grad(ref, params, g)
    for x, y in zip(got, want, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
