"""`topkrec train --softmax sampled|adaptive` end to end through the CLI, then `topkrec evaluate`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.agent_data import synth_dataset

REPO = Path(__file__).resolve().parents[2]


def topkrec(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "topkrec", *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("scale_cli") / "data"
    synth_dataset(n_users=120, n_items=200).save(d)
    return d


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "want"),
    [
        (
            ["--softmax", "sampled", "--negatives", "32", "--sampled-logp", "estimate"],
            {"negatives": 32, "proposal": "log_uniform", "normaliser": "estimate"},
        ),
        (
            ["--softmax", "sampled", "--negatives", "32", "--proposal", "popularity"],
            {"negatives": 32, "proposal": "popularity", "normaliser": "exact"},
        ),
        (["--softmax", "adaptive"], {}),
    ],
)
def test_train_and_evaluate_with_large_catalogue_heads(data_dir: Path, tmp_path: Path, flags, want):
    model = tmp_path / "model"
    r = topkrec("train", "--data", str(data_dir), "--out", str(model), "--device", "cpu", "--max-steps", "3", *flags)
    assert r.returncode == 0, r.stderr
    assert "item counts" not in r.stderr  # a popularity proposal really got the train counts
    agent = json.loads((model / "config.json").read_text())["agent"]
    assert agent["softmax"] == flags[1]
    assert {k: agent["head_options"][k] for k in want} == want
    r = topkrec("evaluate", "--model", str(model), "--data", str(data_dir), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((model / "metrics.json").read_text())
    assert {"none", "popularity", "behavior"} <= set(metrics["models"])


def test_bad_sampled_option_is_one_clear_line(data_dir: Path, tmp_path: Path):
    r = topkrec(
        "train", "--data", str(data_dir), "--out", str(tmp_path / "m"), "--softmax", "sampled", "--negatives", "0"
    )
    assert r.returncode == 2
    assert "negatives" in r.stderr and "Traceback" not in r.stderr
