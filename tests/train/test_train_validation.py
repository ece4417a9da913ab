"""--val-size: held-out train events, validation against popularity, best epoch kept, early stopping, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from support.agent_data import synth_dataset
from support.datasets import pv_dataset
from topkrec.cli import app
from topkrec.data.transitions import build_transitions, validation_rows
from topkrec.policy.config import AgentConfig, TrainConfig
from topkrec.train import train_agent

AGENT = AgentConfig(embed_size=8, hidden=16, encoder="mean")


def _cfg(**kw: object) -> TrainConfig:
    base = {"lr": 5e-3, "batch_size": 32, "device": "cpu", "val_size": 0.2, "seed": 1}
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_validation_rows_follow_the_split_rule_inside_the_train_part() -> None:
    user = np.array([0] * 5 + [1] * 3 + [2] * 7, np.int32)
    n = user.size
    is_test = np.zeros(n, bool)
    is_test[[4, 14]] = True
    ds = pv_dataset(user, np.zeros(n, np.int32), is_test, n_items=1)
    # user 0: 4 train events → round(0.75·4) = 3 kept, 1 held; user 1: 3 → none; user 2: 6 → round(4.5) = 4 (half
    # to even) kept, 2 held
    assert np.flatnonzero(validation_rows(ds, 0.25)).tolist() == [3, 12, 13]
    assert not validation_rows(ds, 0.0).any()
    tr = build_transitions(ds, "train", 2, rows_mask=~validation_rows(ds, 0.25))
    assert len(tr) == 13 - 3


def _weights(model) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {
        f"{f.stem}.{k}": v
        for f in model.glob("*.safetensors")
        if "head" in f.stem
        for k, v in load_file(str(f)).items()
    }


def test_early_stopping_keeps_the_best_epoch_and_equals_a_run_that_stopped_there(tmp_path) -> None:
    ds = synth_dataset(n_users=60, n_items=70, seed=2)
    records: list[dict[str, float]] = []
    long = train_agent(ds, tmp_path / "long", AGENT, _cfg(epochs=8, patience=1), on_epoch=records.append)
    state = long.state
    assert state.finished and state.best_epoch is not None and state.best_metric is not None
    best = max(r["val/ndcg@10"] for r in records)
    assert state.best_metric == pytest.approx(best)
    assert all(r["val/popularity_ndcg@10"] == records[0]["val/popularity_ndcg@10"] for r in records)
    assert state.stopped_early and state.best_epoch < state.epoch == len(records) < 8  # this seed stops early
    train_agent(ds, tmp_path / "short", AGENT, _cfg(epochs=state.best_epoch, patience=0))
    one, two = _weights(tmp_path / "long"), _weights(tmp_path / "short")
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    assert not (tmp_path / "long" / "best_weights.safetensors").exists()  # only kept while training


def test_a_validated_run_resumed_mid_epoch_ends_as_the_uninterrupted_one(tmp_path) -> None:
    ds = synth_dataset(n_users=60, n_items=70, seed=3)
    full = train_agent(ds, tmp_path / "full", AGENT, _cfg(epochs=3, patience=0))
    steps_per_epoch = full.state.global_step // 3
    train_agent(ds, tmp_path / "cut", AGENT, _cfg(epochs=3, patience=0, max_steps=steps_per_epoch * 2 + 1))
    assert (tmp_path / "cut" / "best_weights.safetensors").exists()
    resumed = train_agent(ds, tmp_path / "cut", AGENT, _cfg(epochs=3, patience=0), resume=True)
    assert resumed.state.best_epoch == full.state.best_epoch
    one, two = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_train_prints_validation_against_popularity_each_epoch(tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    synth_dataset(n_users=40, n_items=50, seed=4).save(data)
    r = CliRunner().invoke(
        app,
        ["--no-progress", "train", "--data", str(data), "--out", str(tmp_path / "m"), "--epochs", "2"]
        + ["--val-size", "0.2", "--device", "cpu", "--lr", "0.003"],
    )
    assert r.exit_code == 0, r.output
    assert "epoch 1: validation ndcg@10" in r.output and "(popularity " in r.output
    assert "validation ndcg@10" in r.output.splitlines()[-1]


def test_popularity_ndcg_from_one_sort_equals_scoring_every_row() -> None:
    """The validator ranks popularity once per item; the figure is the one target_rank gives on every row."""
    from topkrec.evaluate.metrics import ndcg_from_rank, target_rank
    from topkrec.train.loop import Validator

    ds = synth_dataset(n_users=60, n_items=70, seed=2)
    config = _cfg()
    validator = Validator.build(ds, AGENT, config, torch.device("cpu"), None)
    assert validator is not None
    mask = validation_rows(ds, config.val_size)
    val = build_transitions(ds, "train", AGENT.hist_num, rows_mask=mask)
    train = ~np.asarray(ds.is_test, dtype=bool) & ~mask
    counts = np.bincount(ds.item[train], minlength=ds.n_items + 1)[: ds.n_items]
    pop = torch.log(torch.as_tensor(counts, dtype=torch.float32).clamp_min(0.5))
    batch = val.batch(torch.arange(len(val)))
    scores = pop[None, :].expand(len(val), -1)
    want = float(ndcg_from_rank(target_rank(scores, batch.action), config.k).mean())
    assert len(np.unique(counts)) < ds.n_items  # popularity ties, the case the index order decides
    assert validator.popularity_ndcg == pytest.approx(want, rel=1e-12)


def test_validation_scores_only_the_held_out_rows_with_a_positive_reward() -> None:
    """Shown-and-skipped rows (reward 0) are held out of training but are no validation target; when every
    row (or none) has a positive reward, every held-out row is scored."""
    from dataclasses import replace

    from topkrec.train.loop import Validator

    ds = synth_dataset(n_users=60, n_items=70, seed=2)
    config = _cfg()
    mask = validation_rows(ds, config.val_size)
    held = build_transitions(ds, "train", AGENT.hist_num, rows_mask=mask)
    everything = Validator.build(ds, AGENT, config, torch.device("cpu"), None)
    assert everything is not None and len(everything.val) == len(held)

    reward = np.asarray(ds.reward).copy()
    reward[::3] = 0.0  # every third event a skipped impression
    skips = replace(ds, reward=reward)
    engaged = Validator.build(skips, AGENT, config, torch.device("cpu"), None)
    assert engaged is not None
    want = int((reward[held.rows.numpy()] > 0).sum())
    assert 0 < want < len(held) and len(engaged.val) == want
    assert bool((engaged.val.reward[engaged.val.rows] > 0).all())
    # the scored rows keep the states the split gives them (histories are built before rows are dropped)
    held_skips = build_transitions(skips, "train", AGENT.hist_num, history=AGENT.history, rows_mask=mask)
    kept = held_skips.subset(torch.as_tensor(reward[held_skips.rows.numpy()] > 0))
    a, b = engaged.val.batch(torch.arange(want)), kept.batch(torch.arange(want))
    assert torch.equal(a.history, b.history) and torch.equal(a.action, b.action)

    none_positive = Validator.build(replace(ds, reward=np.zeros_like(reward)), AGENT, config, torch.device("cpu"), None)
    assert none_positive is not None and len(none_positive.val) == len(held)
