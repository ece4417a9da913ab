"""Must-learn test: on synthetic logs with a hidden item-to-item structure, the top-K agent beats popularity."""

from __future__ import annotations

import pytest

from support.agent_data import synth_dataset
from topkrec.evaluate.evaluator import EvalConfig, evaluate_agents
from topkrec.policy.artifact import load_agent
from topkrec.policy.config import AgentConfig, TrainConfig
from topkrec.train import train_agent


@pytest.mark.slow
def test_topk_agent_ndcg_at_least_1_5x_popularity(tmp_path) -> None:
    ds = synth_dataset(n_users=600, n_items=1000, seed=0)
    cfg = TrainConfig(epochs=2, lr=3e-3, correction="topk", device="cpu", seed=0)  # cap e^3, bias init = log prior
    train_agent(ds, tmp_path / "m", AgentConfig(ds.n_users, ds.n_items), cfg)
    res = evaluate_agents({"topk": load_agent(tmp_path / "m")}, ds, EvalConfig(k=10, n_boot=10))
    ratio = res["topk"].ndcg / res["popularity"].ndcg
    assert ratio >= 1.5, f"topk ndcg@10 {res['topk'].ndcg:.4f} is only {ratio:.2f}× popularity"
