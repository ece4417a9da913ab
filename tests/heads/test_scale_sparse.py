"""Sampled heads in training: popularity proposal from train counts, row-sparse gradients + lazy Adam, resume."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from support.agent_data import synth_dataset, train_recording_losses
from topkrec.data.transitions import build_transitions
from topkrec.heads.sampled import SampledSoftmaxHead, log_uniform_log_q
from topkrec.policy.config import AgentConfig, TrainConfig
from topkrec.policy.model import Agent
from topkrec.train import SparseDenseAdam, build_optimizer, train_agent, train_step


@pytest.fixture(scope="module")
def tiny():
    return synth_dataset(n_users=40, n_items=60, seed=3)


def _acfg(ds, **options):
    return AgentConfig(
        ds.n_users,
        ds.n_items,
        embed_size=8,
        hidden=16,
        hist_num=10,
        dropout=0.0,
        encoder="gru",
        softmax="sampled",
        negatives=16,
        **options,
    )


def test_train_agent_hands_popularity_heads_the_train_counts(tiny, tmp_path, caplog) -> None:
    cfg = TrainConfig(device="cpu", batch_size=32, epochs=1, max_steps=3)
    with caplog.at_level(logging.WARNING, logger="topkrec"):
        res = train_agent(tiny, tmp_path / "m", _acfg(tiny, proposal="popularity"), cfg, force=True)
    counts = torch.as_tensor(tiny.train_item_counts(), dtype=torch.float64) + 1.0
    want = (counts / counts.sum()).log().float()
    for head in (res.agent.policy_head, res.agent.behavior_head):
        assert isinstance(head, SampledSoftmaxHead) and head.proposal == "popularity"
        assert bool(head.proposal_from_counts)
        torch.testing.assert_close(head.proposal_log_q, want)
        assert not torch.allclose(head.proposal_log_q, log_uniform_log_q(tiny.n_items))
    assert not [r for r in caplog.records if "without item counts" in r.getMessage()]


def _agent(ds, seed=0):
    torch.manual_seed(seed)
    return Agent(_acfg(ds))


def test_sparse_step_equals_dense_adam_step_on_fresh_state(tiny) -> None:
    cfg = TrainConfig(lr=1e-2, correction="topk", k=5)
    sparse_agent, dense_agent = _agent(tiny), _agent(tiny)
    sparse_opt = build_optimizer(sparse_agent, cfg)
    assert isinstance(sparse_opt, SparseDenseAdam)
    dense_opt = torch.optim.Adam([p for p in dense_agent.parameters() if p.requires_grad], lr=cfg.lr, fused=True)
    batch = build_transitions(tiny, "train", 10).batch(torch.arange(48))
    before = {n: p.detach().clone() for n, p in dense_agent.named_parameters()}
    torch.manual_seed(7)  # the same shared negatives in both runs
    out_s = train_step(sparse_agent, sparse_opt, batch, cfg)
    head = sparse_agent.policy_head
    assert head.weight.grad is not None and head.weight.grad.is_sparse and head.bias.grad.is_sparse
    touched = torch.unique(head.weight.grad.coalesce().indices()[0])
    assert 0 < touched.numel() < tiny.n_items
    torch.manual_seed(7)
    out_d = train_step(dense_agent, dense_opt, batch, cfg)
    assert out_s.policy_loss == pytest.approx(out_d.policy_loss, rel=1e-6)
    assert out_s.behavior_loss == pytest.approx(out_d.behavior_loss, rel=1e-6)
    for (name, ps), (_, pd) in zip(sparse_agent.named_parameters(), dense_agent.named_parameters(), strict=True):
        torch.testing.assert_close(ps, pd, rtol=1e-6, atol=1e-7, msg=name)
    untouched = torch.ones(tiny.n_items, dtype=torch.bool)
    untouched[touched] = False
    assert torch.equal(sparse_agent.policy_head.weight[untouched], before["policy_head.weight"][untouched])
    assert not torch.equal(sparse_agent.policy_head.weight[touched], before["policy_head.weight"][touched])


def test_weight_decay_keeps_dense_gradients_and_adam(tiny) -> None:
    agent = _agent(tiny)
    cfg = TrainConfig(weight_decay=1e-4)
    opt = build_optimizer(agent, cfg)
    assert isinstance(opt, torch.optim.Adam) and not agent.policy_head.sparse_grad
    train_step(agent, opt, build_transitions(tiny, "train", 10).batch(torch.arange(32)), cfg)
    assert agent.policy_head.weight.grad is not None and not agent.policy_head.weight.grad.is_sparse


def test_resume_with_sampled_heads_continues_exactly(tiny, tmp_path) -> None:
    acfg = _acfg(tiny, proposal="popularity")

    cfg = TrainConfig(device="cpu", lr=3e-3, batch_size=32, epochs=2, seed=1)
    full, full_losses = train_recording_losses(tiny, tmp_path / "full", acfg, cfg, force=True)
    cfg_part = TrainConfig(device="cpu", lr=3e-3, batch_size=32, epochs=2, seed=1, max_steps=7)
    part, part_losses = train_recording_losses(tiny, tmp_path / "part", acfg, cfg_part, force=True)
    assert part.state.global_step == 7
    meta = json.loads((tmp_path / "part" / "optimizer.json").read_text())
    assert [bool(g.get("sparse", False)) for g in meta["param_groups"]] == [False, False, True, True]
    resumed, losses = train_recording_losses(tiny, tmp_path / "part", acfg, cfg, resume=True)
    assert resumed.state.finished and resumed.state.global_step == full.state.global_step
    assert part_losses + losses == full_losses
    for (n1, p1), (n2, p2) in zip(full.agent.state_dict().items(), resumed.agent.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2), f"{n1} differs after resume"


def test_row_sparse_adam_is_adam_on_touched_rows_and_lazy_elsewhere() -> None:
    from topkrec.optim import RowSparseAdam

    torch.manual_seed(0)
    w_sparse = torch.nn.Parameter(torch.randn(6, 3))
    w_dense = torch.nn.Parameter(w_sparse.detach().clone())
    sparse = RowSparseAdam([w_sparse], lr=0.1)
    dense = torch.optim.Adam([w_dense], lr=0.1, foreach=False)
    # every row touched on every step (one row twice): lazy Adam is exactly Adam
    for _ in range(3):
        rows = torch.tensor([0, 1, 2, 3, 4, 5, 2])
        g = torch.randn(7, 3)
        w_sparse.grad = torch.sparse_coo_tensor(rows[None], g, (6, 3), check_invariants=True)
        w_dense.grad = torch.zeros(6, 3).index_add_(0, rows, g)
        sparse.step()
        dense.step()
        torch.testing.assert_close(w_sparse, w_dense, rtol=1e-6, atol=1e-7)
    # a step touching rows 0 and 1 only: they get Adam's update, the others do not move (dense Adam's momentum would)
    before = w_sparse.detach().clone()
    g = torch.randn(2, 3)
    w_sparse.grad = torch.sparse_coo_tensor(torch.tensor([[0, 1]]), g, (6, 3), check_invariants=True)
    w_dense.grad = torch.zeros(6, 3).index_add_(0, torch.tensor([0, 1]), g)
    sparse.step()
    dense.step()
    torch.testing.assert_close(w_sparse[:2], w_dense[:2], rtol=1e-6, atol=1e-7)
    assert torch.equal(w_sparse[2:], before[2:]) and not torch.allclose(w_dense[2:], before[2:])
    with pytest.raises(RuntimeError, match="sparse COO"):
        w_sparse.grad = torch.zeros(6, 3)
        sparse.step()


def test_combined_optimizer_refuses_a_dense_only_state(tiny) -> None:
    agent = _agent(tiny)
    opt = build_optimizer(agent, TrainConfig())
    assert isinstance(opt, SparseDenseAdam)
    with pytest.raises(ValueError, match="dense/sparse param groups"):
        opt.load_state_dict(opt.dense.state_dict())  # e.g. a checkpoint written with dense Adam only
    opt.load_state_dict(opt.state_dict())  # its own state round-trips
