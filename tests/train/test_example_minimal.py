"""The one-file example and the library must agree numerically, step by step."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from support.agent_data import synth_dataset, train_recording_losses
from support.paths import REPO, load_script
from topkrec.policy.config import AgentConfig, TrainConfig
from topkrec.policy.model import Agent

EXAMPLE = REPO / "examples" / "minimal_topk_reinforce.py"


def load_example():
    return load_script(EXAMPLE)


def test_example_is_short() -> None:
    assert len(EXAMPLE.read_text().splitlines()) <= 300


@pytest.mark.parametrize("correction", ["none", "is", "topk"])
def test_library_matches_minimal_example(tmp_path, correction: str) -> None:
    ex = load_example()
    ds = synth_dataset(n_users=40, n_items=60, seed=7)
    ds.reward[::7] = 0.0  # some zero-reward actions: π must skip them, β̂ must not
    args = ex.Args(
        epochs=2,
        batch_size=32,
        lr=3e-3,
        hist_num=10,
        embed_dim=8,
        hidden=16,
        correction=correction,
        k=4,
        cap=math.exp(3.0),
        seed=3,
    )
    torch.manual_seed(0)
    # The example is the reference algorithm: bare item ids over every logged row.
    acfg = AgentConfig(ds.n_users, ds.n_items, embed_size=8, hidden=16, hist_num=10, encoder="concat")
    agent = Agent(
        replace(
            acfg,
            history="all",
            feedback_tokens=False,
            user_embedding=True,
            repeat_bias=False,
            dropout=0.0,
            trainable_embeddings=False,  # the example freezes its embeddings, as the reference does
        )
    )
    net = ex.Net(ds.n_users, ds.n_items, args)
    with torch.no_grad():
        net.user_embedding.weight.copy_(agent.user_embedding.weight)
        net.item_embedding.weight.copy_(agent.item_embedding.weight)
        net.state.weight.copy_(agent.encoder.out.weight)
        net.state.bias.copy_(agent.encoder.out.bias)
        net.policy.weight.copy_(agent.policy_head.weight)
        net.policy.bias.copy_(agent.policy_head.bias)
        net.behavior.weight.copy_(agent.behavior_head.weight)
        net.behavior.bias.copy_(agent.behavior_head.bias)
    events = {
        "user": ds.user.astype("int64"),
        "item": ds.item.astype("int64"),
        "reward": ds.reward,
        "returns": ds.returns,
        "is_test": ds.is_test,
        "n_users": ds.n_users,
        "n_items": ds.n_items,
    }
    ref = ex.train(args, events=events, net=net)
    cfg = TrainConfig(  # the paper's objective: no CE anchor, session returns as they are, no validation split
        epochs=2,
        batch_size=32,
        lr=3e-3,
        correction=correction,
        k=4,
        cap=math.exp(3.0),
        seed=3,
        device="cpu",
        weights="return",
        weight_norm="none",
        policy_ce=0.0,
        val_size=0.0,
        batching="rows",
        min_action_count=1,  # the example trains on every row
    )
    _, lib_losses = train_recording_losses(ds, tmp_path / "m", config=cfg, initial_agent=agent)
    assert len(lib_losses) == len(ref["losses"]) > 4
    for (lp, lb), (rp, rb) in zip(lib_losses, ref["losses"], strict=True):
        assert lp == pytest.approx(rp, rel=1e-4, abs=1e-5)
        assert lb == pytest.approx(rb, rel=1e-4, abs=1e-5)
    pairs = [
        (agent.encoder.out.weight, net.state.weight),
        (agent.policy_head.weight, net.policy.weight),
        (agent.policy_head.bias, net.policy.bias),
        (agent.behavior_head.weight, net.behavior.weight),
    ]
    for lib, exp in pairs:
        torch.testing.assert_close(lib.detach(), exp.detach(), rtol=1e-4, atol=1e-5)
