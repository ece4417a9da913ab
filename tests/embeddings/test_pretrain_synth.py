"""The issue's bar on `topkrec synth` data: default settings, 2 epochs → eval AUC ≥ 0.75 (slow: ~30 s)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _topkrec(*args: str | Path) -> None:
    r = subprocess.run([sys.executable, "-m", "topkrec", *map(str, args)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_default_synth_data_reaches_auc_075_in_two_epochs(tmp_path: Path) -> None:
    _topkrec("synth", "--out", tmp_path / "raw")
    _topkrec("prepare", "--format", "tianchi", "--input", tmp_path / "raw", "--out", tmp_path / "data")
    _topkrec("pretrain", "--data", tmp_path / "data", "--out", tmp_path / "emb", "--epochs", "2", "--device", "cpu")
    metrics = json.loads((tmp_path / "emb" / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2
    assert metrics["eval_auc"] >= 0.75, metrics
    assert metrics["epochs"][1]["eval_auc"] > metrics["epochs"][0]["eval_auc"]
