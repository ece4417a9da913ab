"""CUDA-only checks of the large-catalogue heads inside the agent's real training step.

Skipped without CUDA (tests/conftest.py); run on the GPU machine by benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from topkrec.data.transitions import TransitionBatch
from topkrec.heads import make_head
from topkrec.heads.sampled import SampledSoftmaxHead
from topkrec.policy.config import AgentConfig, TrainConfig
from topkrec.policy.model import Agent

pytestmark = pytest.mark.cuda


def _batch(n_users: int, n_items: int, b: int, hist: int = 10, seed: int = 0) -> TransitionBatch:
    g = torch.Generator(device="cuda").manual_seed(seed)
    return TransitionBatch(
        user=torch.randint(0, n_users, (b,), device="cuda", generator=g),
        history=torch.randint(0, n_items + 1, (b, hist), device="cuda", generator=g),
        action=torch.randint(0, n_items, (b,), device="cuda", generator=g),
        reward=torch.ones(b, device="cuda"),
        returns=torch.rand(b, device="cuda", generator=g) * 3,
    )


def test_sampled_exact_log_prob_on_cuda_matches_full_softmax():
    torch.manual_seed(0)
    head = SampledSoftmaxHead(64, 50_000, negatives=512).cuda()
    with torch.no_grad():
        head.bias.normal_()
    state = torch.randn(300, 64, device="cuda")
    actions = torch.randint(0, 50_000, (300,), device="cuda")
    out = head(state, actions)  # fp32: Triton kernel with IEEE fp32 products (or the chunked path)
    full = F.log_softmax((state.double() @ head.weight.double().t() + head.bias.double()), dim=1)
    want = full.gather(1, actions[:, None]).squeeze(1)
    torch.testing.assert_close(out.logp.double(), want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("softmax", ["full", "sampled", "adaptive"])
def test_train_step_under_bf16_autocast_updates_both_heads(softmax):
    from topkrec.train import build_optimizer, train_step

    torch.manual_seed(1)
    agent = Agent(AgentConfig(n_users=100, n_items=30_000, softmax=softmax, negatives=256)).cuda()
    config = TrainConfig(batch_size=1024, lr=1e-2)
    optimizer = build_optimizer(agent, config)
    before = {n: p.detach().clone() for n, p in agent.named_parameters() if p.requires_grad}
    out = train_step(agent, optimizer, _batch(100, 30_000, 1024), config, torch.bfloat16)
    assert torch.isfinite(torch.tensor([out.policy_loss, out.behavior_loss])).all()
    assert out.stats is not None and out.stats.ess > 0
    for name, p in agent.named_parameters():
        if p.requires_grad:
            assert not torch.equal(before[name], p.detach()), f"{name} did not change"


def test_full_head_on_cuda_matches_cpu_head():
    """The CUDA full head (Triton, fp32) gives the CPU head's log-probs and gradients."""
    torch.manual_seed(2)
    cpu = make_head("full", 64, 20_000)
    gpu = make_head("full", 64, 20_000).cuda()
    gpu.load_state_dict(cpu.state_dict())
    state = torch.randn(128, 64)
    actions = torch.randint(0, 20_000, (128,))
    a = cpu(state, actions)
    b = gpu(state.cuda(), actions.cuda())
    torch.testing.assert_close(b.logp.cpu(), a.logp, atol=1e-4, rtol=1e-5)
    a.train_logp.sum().backward()
    b.train_logp.sum().backward()
    torch.testing.assert_close(gpu.weight.grad.cpu(), cpu.weight.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gpu.bias.grad.cpu(), cpu.bias.grad, atol=1e-5, rtol=1e-4)
