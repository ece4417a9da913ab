"""`topkrec demo` end to end on a small synthetic world (the full-size run is measured in docs/agent.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("pretrain", [False, True])
def test_demo_leaves_every_stage_and_a_report(tmp_path, pretrain: bool) -> None:
    out = tmp_path / "demo"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "topkrec",
            "--no-progress",
            "demo",
            "--out",
            str(out),
            "--users",
            "150",
            "--items",
            "300",
            "--epochs",
            "1",
            "--pretrain-epochs",
            "1",
            "--device",
            "cpu",
            *(["--pretrain"] if pretrain else []),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    for sub in ("raw", "data", "model", "report"):
        assert (out / sub).is_dir(), sub
    assert (out / "embeddings").is_dir() == pretrain
    doc = json.loads((out / "report" / "metrics.json").read_text())
    assert {"none", "popularity", "behavior"} <= set(doc["models"]) and doc["k"] == 10  # the default correction
    stages = {"synth", "prepare", "train", "evaluate", "recommend"} | ({"pretrain"} if pretrain else set())
    assert set(doc["demo"]["timings_s"]) == stages
    assert (out / "report" / "training_curves.png").stat().st_size > 0
    assert (out / "report" / "weight_histogram.png").stat().st_size > 0
    assert "× popularity" in r.stdout and "ndcg@10" in r.stdout
    # a second run into the same directory needs --force
    r2 = subprocess.run([sys.executable, "-m", "topkrec", "demo", "--out", str(out)], capture_output=True, text=True)
    assert r2.returncode == 2 and "--force" in r2.stderr
