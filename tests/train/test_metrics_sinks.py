"""Metrics sinks: TensorBoard scalars with the same namespaced keys as train_log.jsonl (train and pretrain)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from support.agent_data import synth_dataset
from topkrec.cli import app

runner = CliRunner()


def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_train_and_pretrain_write_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    data = tmp_path / "data"
    data.mkdir()
    synth_dataset(n_users=30, n_items=40, seed=5).save(data)
    tb = tmp_path / "tb"
    r = runner.invoke(
        app,
        ["--no-progress", "train", "--data", str(data), "--out", str(tmp_path / "m"), "--device", "cpu"]
        + ["--log-every", "2", "--max-steps", "6", "--batch-size", "16", "--tensorboard", str(tb / "train")],
    )
    assert r.exit_code == 0, r.output
    log = [json.loads(line) for line in (tmp_path / "m" / "train_log.jsonl").read_text().splitlines()]
    scalars = _scalars(tb / "train")
    assert set(log[0]) - {"step"} <= set(scalars) and "train/policy_loss" in scalars
    assert [s for s, _ in scalars["train/policy_loss"]] == [rec["step"] for rec in log]
    assert [v for _, v in scalars["train/behavior_loss"]] == pytest.approx([rec["train/behavior_loss"] for rec in log])
    r = runner.invoke(
        app,
        ["--no-progress", "pretrain", "--data", str(data), "--out", str(tmp_path / "e"), "--epochs", "2"]
        + ["--batch-size", "64", "--device", "cpu", "--tensorboard", str(tb / "pretrain")],
    )
    assert r.exit_code == 0, r.output
    pre = _scalars(tb / "pretrain")
    assert {"pretrain/train_loss", "eval/auc"} <= set(pre) and len(pre["pretrain/train_loss"]) == 2
