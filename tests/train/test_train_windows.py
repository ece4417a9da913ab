"""--batching windows: every training row attached to the window position of its last token; one encoder pass
per window gives the per-row states (exactly, where the window holds the row's whole history)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from support.agent_data import synth_dataset
from support.datasets import random_dataset
from topkrec.data.transitions import build_transitions
from topkrec.policy.config import AgentConfig, TrainConfig
from topkrec.policy.model import Agent
from topkrec.train import train_agent
from topkrec.train.step import row_states
from topkrec.train.windows import Windows


@pytest.mark.parametrize("hist", [1, 3, 8])
def test_every_row_is_attached_once_to_its_last_token(hist: int) -> None:
    ds = random_dataset(seed=hist, steps=True, context=True)
    tr = build_transitions(ds, "train", hist, history="context_engaged")
    windows = Windows.build(tr)
    batch = windows.batch(torch.arange(len(windows)))
    assert sorted(windows.rows.tolist()) == sorted(tr.rows.tolist())  # every training row, once
    assert int(windows.rows_per_window.sum()) == len(tr) and len(batch) == len(tr)
    last = tr.hist_end[windows.rows] - 1
    has = last >= tr.hist_start[windows.rows]
    assert torch.equal(batch.row_pos >= 0, has)
    w, p = batch.row_window[has], batch.row_pos[has]
    assert torch.equal(batch.history[w, p], tr.hist_items[last[has]])
    assert torch.equal(batch.history_event[w, p], tr.hist_events[last[has]])
    assert torch.equal(batch.action, tr.items[windows.rows])
    # a window's user is its rows' user
    assert torch.equal(batch.user[batch.row_window], tr.users[windows.rows])


@pytest.mark.parametrize("encoder", ["mean", "gru", "cfn"])
def test_window_states_equal_row_states_when_a_window_holds_the_whole_history(encoder: str) -> None:
    ds = random_dataset(seed=5, n_users=6)
    hist = 40  # longer than any user's history: one window per user
    tr = build_transitions(ds, "train", hist, history="all")
    torch.manual_seed(0)
    cfg = AgentConfig(n_users=ds.n_users, n_items=ds.n_items, embed_size=6, hidden=5, hist_num=hist, encoder=encoder)
    agent = Agent(AgentConfig.from_json({**cfg.to_json(), "event_types": list(ds.event_vocabulary()[0])})).eval()
    windows = Windows.build(tr)
    assert len(windows) == len(np.unique(ds.user[tr.rows.numpy()]))
    wb = windows.batch(torch.arange(len(windows)))
    rb = tr.batch(torch.searchsorted(tr.rows, windows.rows))  # the same rows, in window order
    with torch.no_grad():
        torch.testing.assert_close(row_states(agent, wb), row_states(agent, rb), atol=1e-5, rtol=1e-5)


def test_window_training_learns_and_resumes_exactly(tmp_path) -> None:
    ds = synth_dataset(n_users=60, n_items=70, seed=6)
    agent = AgentConfig(embed_size=8, hidden=8, hist_num=6, encoder="gru")
    cfg = TrainConfig(lr=1e-2, batch_size=24, epochs=2, device="cpu", batching="windows", log_every=1)
    full = train_agent(ds, tmp_path / "full", agent, cfg)
    losses = [r["train/behavior_loss"] for r in full.history if "train/behavior_loss" in r]
    assert losses[-1] < losses[0]
    half = full.state.global_step // 2
    train_agent(ds, tmp_path / "cut", agent, TrainConfig(**{**cfg.to_json(), "max_steps": half}))
    train_agent(ds, tmp_path / "cut", agent, cfg, resume=True)
    from safetensors.torch import load_file

    for name in ("policy_head", "encoder"):
        a = load_file(str(tmp_path / "full" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "cut" / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a)
