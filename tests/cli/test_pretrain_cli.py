"""``topkrec pretrain`` through subprocess: outputs, loader round trip, --force, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from topkrec.data.dataset import Dataset
from topkrec.embeddings import load_embeddings
from topkrec.embeddings.config import PretrainConfig


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "topkrec", "pretrain", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def test_cli_writes_embeddings_dir(planted_dataset_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    args = ["--data", planted_dataset_dir, "--out", out, "--epochs", "3", "--batch-size", "256", "--lr", "3e-3"]
    r = _run(*args, "--export-npy", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "eval AUC" in r.stdout
    dataset = Dataset.load(planted_dataset_dir)
    emb = load_embeddings(out, dataset)
    d = PretrainConfig().embed_size
    assert emb.user.shape == (200, d) and emb.item.shape == (129, d)
    assert torch.count_nonzero(emb.item[-1]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["epochs"] == 3 and cfg["config"]["loss"] == "cosine"
    assert cfg["shapes"] == {"user_embeddings": [200, d], "item_embeddings": [129, d]}
    assert cfg["dataset"]["n_users"] == 200 and cfg["dataset"]["n_items"] == 128 and cfg["topkrec_version"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    assert set(metrics["epochs"][0]) >= {"epoch", "train_loss", "eval_loss", "eval_auc"}
    assert metrics["eval_auc"] == metrics["epochs"][-1]["eval_auc"] > 0.5
    assert (out / "maps" / "user_map.parquet").exists() and (out / "maps" / "item_map.parquet").exists()
    # --export-npy: the reference pipeline's files, identical to the safetensors tables
    assert np.array_equal(np.load(out / "dssm_user_embeddings.npy"), emb.user.numpy())
    assert np.array_equal(np.load(out / "dssm_item_embeddings.npy"), emb.item.numpy())
    item_map = json.loads((out / "item_map.json").read_text())
    assert item_map[str(dataset.item_raw[5])] == 5 and len(item_map) == 128
    # an existing output is refused without --force (one line, exit 2), replaced with it
    r = _run(*args)
    assert r.returncode == 2 and "--force" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _run(*args, "--force", "--loss", "softmax", "--epochs", "1")
    assert r.returncode == 0, r.stderr
    assert "; 1 epoch, train loss" in r.stdout  # the summary counts in the noun's number
    assert json.loads((out / "config.json").read_text())["config"]["loss"] == "softmax"
    assert not (out / "dssm_user_embeddings.npy").exists()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--loss", "hinge"], "--loss"),
        (["--epochs", "0"], "--epochs"),
        (["--neg-items", "0"], "--neg-items"),
        (["--lr", "-1"], "--lr"),
        (["--device", "tpu"], "device"),
        (["--hidden", "256,x"], "--hidden"),
    ],
)
def test_cli_bad_flag_values_exit_2_with_one_line(
    planted_dataset_dir: Path, tmp_path: Path, extra: list[str], needle: str
):
    r = _run("--data", planted_dataset_dir, "--out", tmp_path / "emb", *extra)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.stderr
    assert not (tmp_path / "emb").exists()


def test_cli_missing_or_bad_dataset_dir(tmp_path: Path) -> None:
    r = _run("--data", tmp_path / "nope", "--out", tmp_path / "emb")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "prepare" in r.stderr
    (tmp_path / "empty").mkdir()
    r = _run("--data", tmp_path / "empty", "--out", tmp_path / "emb")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "meta.json" in r.stderr
    assert not (tmp_path / "emb").exists()
