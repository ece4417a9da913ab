"""benchmarks/bench_train.py: the real path is train_agent's loop body, and the script's JSON keeps its keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from support.paths import load_script

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_train.py"


def _bench() -> ModuleType:
    return load_script(BENCH)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # the benchmark's own maker, at the default synth size (the reference scale takes ~20 s)
    return _bench().make_reference_scale_data(tmp_path_factory.mktemp("bench"), 300, 600)


def test_real_path_trains_like_train_agent(data_dir: Path, tmp_path: Path) -> None:
    """Same seed and steps: the benchmark's loop body ends with train_agent's weights."""
    from topkrec.data.dataset import Dataset
    from topkrec.policy.config import PRESETS, AgentConfig, TrainConfig
    from topkrec.train import train_agent

    bench = _bench()
    ds = Dataset.load(data_dir)
    real = bench.RealPath(ds, 32, 0, torch.device("cpu"), embeddings=False)
    for _ in range(7):
        assert real.step() == 32
    assert real.state.global_step == 7 and 0.0 < real.rewarded_share <= 1.0
    # the benchmark's default: the reference's model and algorithm (--preset seed) at the given batch
    seed = {k: v for k, v in PRESETS["seed"]["train"].items() if k not in ("epochs", "batch_size")}
    config = TrainConfig(
        **{**seed, "correction": "topk"}, batch_size=32, device="cpu", seed=0, epochs=1000, max_steps=7
    )
    trained = train_agent(ds, tmp_path / "m", AgentConfig(**PRESETS["seed"]["agent"]), config).agent
    for (name, p), q in zip(real.agent.named_parameters(), trained.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_script_prints_old_and_new_keys(data_dir: Path) -> None:
    cmd = [sys.executable, str(BENCH), "--items", "300", "--users", "50", "--events", "2000", "--steps", "2"]
    cmd += ["--rounds", "1", "--batch-size", "16", "--threads", "1", "--data", str(data_dir), "--profile-steps", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("ours_transitions_per_s", "reference_transitions_per_s", "speedup", "matmul_gflops_head_shapes"):
        assert key in result  # the keys before --data
    assert result["real_n_items"] > 0 and result["real_transitions_per_s"] > 0
    assert result["real_reference_transitions_per_s"] > 0 and result["real_cpu_ms_per_step"] > 0
    buckets = result["real_breakdown"]["buckets_ms"]
    assert buckets["heads: GEMMs (B×h·h×N and their gradients)"] > 0
    assert any(k.startswith("batch:") for k in buckets) and "optimizer (fused Adam)" in buckets
    assert "| part | ms / step | share |" in r.stderr
    assert isinstance(result["malloc_tuned"], bool)
