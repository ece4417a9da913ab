"""--min-action-count: rows acting on items rarer than N train rows train π and β̂, not the encoder."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from support.agent_data import synth_dataset
from support.datasets import pv_dataset
from topkrec import distributed
from topkrec.data.transitions import build_transitions, validation_rows
from topkrec.errors import TopkrecError
from topkrec.policy.config import PRESETS, AgentConfig, TrainConfig
from topkrec.policy.model import Agent
from topkrec.train import train_agent
from topkrec.train.loop import TrainData
from topkrec.train.step import TrainObjective, train_step

AGENT = AgentConfig(embed_size=8, hidden=16, encoder="mean")


def test_rare_actions_count_only_the_train_actions_kept() -> None:
    # user 0: items 0, 1, 0 then 2 (test); user 1: items 1, 3, 2, 4 (row 7 context only)
    user = np.array([0, 0, 0, 0, 1, 1, 1, 1], np.int32)
    item = np.array([0, 1, 0, 2, 1, 3, 2, 4], np.int32)
    is_test = np.array([0, 0, 0, 1, 0, 0, 0, 0], bool)
    ds = dataclasses.replace(
        pv_dataset(user, item, is_test, n_items=5), context=np.array([0, 0, 0, 0, 0, 0, 0, 1], bool)
    )
    every = np.ones(ds.n_events, bool)

    def rare(rows_mask: np.ndarray, n: int) -> list[bool]:
        return build_transitions(ds, "train", 2, rows_mask=rows_mask).rare_actions(n).tolist()

    # train actions: rows 0, 1, 2, 4, 5, 6; item 0 ×2, 1 ×2, 2 ×1 (its test row does not count), 3 ×1, 4 ×0
    # (context only); the last entry is the pad index
    assert rare(every, 2) == [False, False, True, True, True, True]
    assert rare(every, 3) == [True] * 6
    assert not any(rare(every, 1))
    no_row_4 = every.copy()  # rows outside the mask (validation) do not count: item 1 is then the action of one row
    no_row_4[4] = False
    assert rare(no_row_4, 2)[:4] == [False, True, True, True]


def test_every_row_is_trained_on_and_the_rare_items_are_marked() -> None:
    ds = synth_dataset(n_users=60, n_items=200, seed=3)
    val = validation_rows(ds, 0.1)
    counts = np.bincount(ds.item[~np.asarray(ds.is_test) & ~val], minlength=ds.n_items + 1)

    def build(n: int) -> TrainData:
        cfg = TrainConfig(device="cpu", val_size=0.1, min_action_count=n)
        return TrainData.build(ds, AGENT, torch.device("cpu"), cfg, distributed.DistContext())

    every, skip = build(1), build(3)
    assert every.encoder_skip is None
    assert skip.encoder_skip is not None and skip.encoder_skip[: ds.n_items].tolist() == (counts[:-1] < 3).tolist()
    assert torch.equal(every.transitions.rows, skip.transitions.rows)  # the rows themselves are all kept
    assert (counts[ds.item[skip.transitions.rows.numpy()]] < 3).any()  # and some of them act on rare items


@pytest.mark.parametrize("rare", [True, False])
def test_rows_on_rare_items_train_the_heads_but_not_the_encoder(rare: bool) -> None:
    ds = synth_dataset(n_users=30, n_items=40, seed=1)
    config = AgentConfig(n_users=ds.n_users, n_items=ds.n_items, embed_size=8, hidden=16, encoder="gru")
    torch.manual_seed(0)
    agent = Agent(config)
    cfg = TrainConfig(device="cpu", batching="rows", val_size=0.0, min_action_count=1)
    data = TrainData.build(ds, config, torch.device("cpu"), cfg, distributed.DistContext())
    batch = data.transitions.batch(torch.arange(16))
    skip = torch.zeros(ds.n_items + 1, dtype=torch.bool)
    if rare:
        skip[batch.action] = True  # every row of the batch acts on a "rare" item
    objective = TrainObjective(agent, cfg, encoder_skip=skip)
    encoder_before = [p.detach().clone() for p in agent.encoder.parameters()]
    head_before = agent.policy_head.weight.detach().clone()
    behavior_before = agent.behavior_head.weight.detach().clone()
    optimizer = torch.optim.SGD(agent.parameters(), lr=0.1)
    train_step(agent, optimizer, batch, cfg, objective=objective)  # type: ignore[arg-type]
    encoder_moved = any(not torch.equal(a, p) for a, p in zip(encoder_before, agent.encoder.parameters(), strict=True))
    assert encoder_moved is not rare
    assert not torch.equal(head_before, agent.policy_head.weight)
    assert not torch.equal(behavior_before, agent.behavior_head.weight)


def test_a_threshold_that_leaves_the_encoder_few_rows_warns(caplog) -> None:
    ds = synth_dataset(n_users=60, n_items=200, seed=3)

    def build(n: int) -> None:
        cfg = TrainConfig(device="cpu", val_size=0.0, min_action_count=n)
        TrainData.build(ds, AGENT, torch.device("cpu"), cfg, distributed.DistContext())

    train = ~np.asarray(ds.is_test)
    counts = np.bincount(ds.item[train])
    kept = [(counts[ds.item[train]] >= n).mean() for n in range(2, 200)]
    few = 2 + next(i for i, share in enumerate(kept) if share < 0.2)
    caplog.set_level("INFO", logger="topkrec")
    build(2)
    assert kept[0] >= 0.2 and "leaves the encoder" not in caplog.text
    build(few)
    assert f"--min-action-count {few} leaves the encoder" in caplog.text


def test_the_setting_is_saved_locked_on_resume_and_legacy_models_read_as_every_row(tmp_path) -> None:
    ds = synth_dataset(n_users=40, n_items=60, seed=1)
    cfg = TrainConfig(device="cpu", epochs=1, batch_size=64, min_action_count=3, val_size=0.0)
    train_agent(ds, tmp_path / "m", AGENT, cfg, force=True)
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["train"]["min_action_count"] == 3
    with pytest.raises(TopkrecError, match="min_action_count"):
        train_agent(ds, tmp_path / "m", AGENT, dataclasses.replace(cfg, min_action_count=2), resume=True)
    legacy = {k: v for k, v in saved["train"].items() if k != "min_action_count"}
    assert TrainConfig.from_json(legacy).min_action_count == 1
    assert PRESETS["seed"]["train"]["min_action_count"] == 1
