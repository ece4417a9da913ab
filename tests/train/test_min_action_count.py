"""--min-action-count: rows acting on items rarer than N train rows stay in histories but are not trained on."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from support.agent_data import synth_dataset
from support.datasets import pv_dataset
from topkrec import distributed
from topkrec.data.transitions import rare_action_rows, validation_rows
from topkrec.errors import TopkrecError
from topkrec.policy.config import PRESETS, AgentConfig, TrainConfig
from topkrec.train import train_agent
from topkrec.train.loop import TrainData

AGENT = AgentConfig(embed_size=8, hidden=16, encoder="mean")


def _log() -> object:
    # user 0: items 0, 1, 0 then 2 (test); user 1: items 1, 3, 2, 4 (row 8 context only)
    user = np.array([0, 0, 0, 0, 1, 1, 1, 1], np.int32)
    item = np.array([0, 1, 0, 2, 1, 3, 2, 4], np.int32)
    is_test = np.array([0, 0, 0, 1, 0, 0, 0, 0], bool)
    ds = pv_dataset(user, item, is_test, n_items=5)
    return dataclasses.replace(ds, context=np.array([0, 0, 0, 0, 0, 0, 0, 1], bool))


def test_rare_action_rows_count_only_the_train_actions_kept() -> None:
    ds = _log()
    every = np.ones(ds.n_events, bool)
    # train actions: rows 0, 1, 2, 4, 5, 6 (row 3 is test, row 7 context); item 0 ×2, 1 ×2, 3 ×1, 2 ×1 (its test
    # row does not count)
    assert np.flatnonzero(rare_action_rows(ds, every, 2)).tolist() == [5, 6]
    assert np.flatnonzero(rare_action_rows(ds, every, 3)).tolist() == [0, 1, 2, 4, 5, 6]
    assert not rare_action_rows(ds, every, 1).any()
    # rows outside the mask (validation) neither count nor are marked: item 1 is then the action of row 1 alone
    no_row_4 = every.copy()
    no_row_4[4] = False
    assert np.flatnonzero(rare_action_rows(ds, no_row_4, 2)).tolist() == [1, 5, 6]


def test_rare_actions_are_not_trained_on_but_stay_in_histories() -> None:
    ds = synth_dataset(n_users=60, n_items=200, seed=3)
    train = ~np.asarray(ds.is_test) & ~validation_rows(ds, 0.1)
    counts = np.bincount(ds.item[train], minlength=ds.n_items + 1)
    assert (counts[ds.item[train]] < 3).any()  # the log has rare items

    def build(n: int) -> TrainData:
        cfg = TrainConfig(device="cpu", val_size=0.1, min_action_count=n, batching="rows")
        return TrainData.build(ds, AGENT, torch.device("cpu"), cfg, distributed.DistContext())

    every, common = build(1), build(3)
    rows = common.transitions.rows.numpy()
    assert np.array_equal(np.sort(every.transitions.rows.numpy()), np.flatnonzero(train))
    assert np.array_equal(np.sort(rows), np.flatnonzero(train & (counts[ds.item] >= 3)))
    # histories are built from every row, whatever is trained on
    assert torch.equal(every.transitions.hist_items, common.transitions.hist_items)
    assert torch.equal(every.transitions.hist_end, common.transitions.hist_end)


def test_a_threshold_that_leaves_nothing_is_a_clear_error(tmp_path) -> None:
    ds = _log()
    cfg = TrainConfig(device="cpu", val_size=0.0, min_action_count=50, epochs=1)
    with pytest.raises(TopkrecError, match="--min-action-count 50"):
        train_agent(ds, tmp_path / "m", AGENT, cfg, force=True)


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


def test_a_threshold_that_leaves_few_rows_warns(caplog) -> None:
    ds = synth_dataset(n_users=60, n_items=200, seed=3)

    def build(n: int) -> None:
        cfg = TrainConfig(device="cpu", val_size=0.0, min_action_count=n)
        TrainData.build(ds, AGENT, torch.device("cpu"), cfg, distributed.DistContext())

    train = ~np.asarray(ds.is_test)
    counts = np.bincount(ds.item[train])
    kept = [(counts[ds.item[train]] >= n).mean() for n in range(2, 200)]
    few = 2 + next(i for i, share in enumerate(kept) if 0 < share < 0.2)
    caplog.set_level("INFO", logger="topkrec")
    build(2)
    assert kept[0] >= 0.2 and "leaves" not in caplog.text
    build(few)
    assert f"--min-action-count {few} leaves" in caplog.text
