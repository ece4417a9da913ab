"""One contract every registered item head passes (d3rlpy's algo tester, implicit's shared suite)."""

from __future__ import annotations

import pytest
import torch

from topkrec.heads import HEADS, ItemHead, make_head
from topkrec.optim import build_optimizer
from topkrec.policy.config import AgentConfig, TrainConfig
from topkrec.policy.model import Agent

N_ITEMS, IN_DIM, BATCH = 40, 6, 9
KINDS = sorted(HEADS)


def _head(kind: str) -> ItemHead:
    torch.manual_seed(0)
    options = {"negatives": 16} if kind == "sampled" else {}
    return make_head(kind, IN_DIM, N_ITEMS, temperature=0.7, **options)


def test_the_registry_has_the_three_kinds() -> None:
    assert KINDS == ["adaptive", "full", "sampled"]


@pytest.mark.parametrize("kind", KINDS)
def test_logp_is_the_exact_log_probability_of_the_logged_action(kind: str) -> None:
    head = _head(kind)
    state = torch.randn(BATCH, IN_DIM)
    actions = torch.randint(0, N_ITEMS, (BATCH,))
    out = head(state, actions)
    assert out.logp.shape == out.train_logp.shape == (BATCH,)
    assert out.logp.dtype == torch.float32 and not out.logp.requires_grad and out.train_logp.requires_grad
    exact = torch.log_softmax(head.logits(state).double(), dim=1).gather(1, actions[:, None]).squeeze(1)
    torch.testing.assert_close(out.logp.double(), exact, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(head.log_probs(state).exp().sum(1), torch.ones(BATCH), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_options_round_trip_through_make_head(kind: str) -> None:
    head = _head(kind)
    again = make_head(kind, IN_DIM, N_ITEMS, **head.options())
    assert again.options() == head.options() and again.kind == head.kind == kind
    assert {k: tuple(v.shape) for k, v in again.state_dict().items()} == {
        k: tuple(v.shape) for k, v in head.state_dict().items()
    }


@pytest.mark.parametrize("kind", KINDS)
def test_one_big_step_moves_every_parameter_of_both_heads(kind: str) -> None:
    """Every trainable parameter of π and β̂ gets a gradient through the agent's real step (and moves)."""
    from topkrec.data.transitions import TransitionBatch
    from topkrec.train import train_step

    torch.manual_seed(1)
    config = AgentConfig(n_users=5, n_items=N_ITEMS, embed_size=4, hist_num=3, hidden=IN_DIM, softmax=kind)
    config = AgentConfig.from_json({**config.to_json(), "negatives": 16, "trainable_embeddings": True})
    agent = Agent(config)
    train_cfg = TrainConfig(lr=0.5, batch_size=BATCH, correction="topk")
    optimizer = build_optimizer(agent, train_cfg)
    before = {n: p.detach().clone() for n, p in agent.named_parameters() if p.requires_grad}
    batch = TransitionBatch(
        user=torch.randint(0, 5, (BATCH,)),
        history=torch.randint(0, N_ITEMS, (BATCH, 3)),
        action=torch.randint(0, N_ITEMS, (BATCH,)),
        reward=torch.ones(BATCH),
        returns=torch.ones(BATCH),
    )
    train_step(agent, optimizer, batch, train_cfg)
    unmoved = [n for n, p in agent.named_parameters() if p.requires_grad and torch.equal(p.detach(), before[n])]
    # The adaptive head's tail clusters move only when a logged action falls in them; all others must move.
    unmoved = [n for n in unmoved if not (kind == "adaptive" and ".adaptive.tail." in n)]
    assert unmoved == [], unmoved


@pytest.mark.parametrize("kind", KINDS)
def test_row_sparse_training_where_the_head_supports_it(kind: str) -> None:
    """Heads that can give row-sparse gradients (sampled) train with lazy Adam in one process; others stay dense."""
    from topkrec.optim import SparseDenseAdam

    config = AgentConfig(n_users=5, n_items=N_ITEMS, embed_size=4, hist_num=3, hidden=IN_DIM, softmax=kind)
    agent = Agent(config)
    optimizer = build_optimizer(agent, TrainConfig(lr=0.1))
    assert isinstance(optimizer, SparseDenseAdam) == (kind == "sampled")
    dense = build_optimizer(agent, TrainConfig(lr=0.1), allow_sparse=False)
    assert not isinstance(dense, SparseDenseAdam)
