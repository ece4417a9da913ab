"""The agent's commands through the real CLI (subprocess): train, evaluate --json, compare, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support.agent_data import synth_dataset


def topkrec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "topkrec", "--no-progress", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("agent_cli") / "data"
    d.mkdir()
    synth_dataset(n_users=50, n_items=80, seed=4).save(d)
    return d


def test_train_evaluate_json_and_resume(data_dir, tmp_path) -> None:
    model = tmp_path / "model"
    train = ["train", "--data", str(data_dir), "--out", str(model), "--lr", "1e-3", "--batch-size", "64"]
    train += ["--device", "cpu", "--encoder", "mean", "--correction", "is"]
    r = topkrec(*train, "--epochs", "1")
    assert r.returncode == 0, r.stderr
    assert "trained" in r.stdout
    for f in (
        "config.json",
        "encoder.safetensors",
        "policy_head.safetensors",
        "behavior_head.safetensors",
        "maps.json",
        "optimizer.safetensors",
        "trainer_state.json",
        "train_log.jsonl",
    ):
        assert (model / f).exists(), f
    r = topkrec("evaluate", "--model", str(model), "--data", str(data_dir), "--k", "5", "--json", "--plots")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["k"] == 5 and {"is", "popularity", "behavior"} <= set(doc["models"])
    assert {"ndcg@5", "recall@5", "mrr", "ndcg_all@5", "coverage", "tail_share", "ips", "snips", "ess"} <= set(
        doc["models"]["is"]
    )
    assert json.loads((model / "metrics.json").read_text()) == doc
    assert (model / "training_curves.png").exists() and (model / "weight_histogram.png").exists()
    # a second epoch continues from the checkpoint
    r = topkrec(*train, "--epochs", "2", "--resume")
    assert r.returncode == 0, r.stderr
    assert json.loads((model / "trainer_state.json").read_text())["epoch"] == 2


def test_user_errors_are_one_line(data_dir, tmp_path) -> None:
    r = topkrec("evaluate", "--model", str(tmp_path / "nope"), "--data", str(data_dir))
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    r = topkrec("train", "--data", str(data_dir), "--out", str(tmp_path / "m"), "--correction", "bogus")
    assert r.returncode == 2 and "correction" in r.stderr
    (tmp_path / "empty").mkdir()
    r = topkrec("train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "m"))
    assert r.returncode == 2 and "dataset" in r.stderr


@pytest.mark.slow
def test_compare_prints_one_table(data_dir, tmp_path) -> None:
    r = topkrec(
        "compare",
        "--data",
        str(data_dir),
        "--out",
        str(tmp_path / "cmp"),
        "--corrections",
        "none,topk",
        "--epochs",
        "1",
        "--lr",
        "1e-3",
        "--device",
        "cpu",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {"none", "topk", "popularity", "behavior"} <= set(doc["models"])
    assert (tmp_path / "cmp" / "none" / "config.json").exists() and (tmp_path / "cmp" / "metrics.json").exists()
