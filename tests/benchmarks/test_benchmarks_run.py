"""Every benchmark script runs at its smallest size and ends with one JSON line of figures (DESIGN §9).

A smoke test, not a measurement: each script runs in its own process (``sys.executable benchmarks/X.py``,
cwd the repository root) with the options that make it take seconds. bench_train.py is smoke-run with its
JSON checked in test_bench_train.py; the gpu_check*.sh scripts are not run here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.paths import REPO

CASES: dict[str, list[str]] = {
    "bench_prepare.py": ["--events", "2000", "--workdir", "{tmp}/prepare"],
    # a dataset of ten batches an epoch: the data-path timing and the profile run over epochs
    "bench_pretrain.py": ["--data", "{planted}", "--seconds", "0.2", "--batch-size", "256", "--threads", "1"]
    + ["--profile-steps", "6"],
    # one case worker (plus the peak-matmul worker) on a 1 000-item catalogue, no estimate-error check
    "bench_scale.py": ["--quick", "--seconds", "0.3", "--items", "1000", "--only", "full", "--error-items", "0"],
    "bench_serve.py": ["--items", "1000", "--users", "100", "--clients", "1,4", "--duration", "0.5"]
    + ["--max-requests", "50", "--batch-users", "500", "--explore-users", "20", "--threads", "1"],
    "bench_simulate.py": ["--users", "20", "--items", "30", "--sessions", "1", "--rounds", "1"],
    # the quick simulator world, one seed (its own checks: β rebuilt, IPS/capped IPS/SNIPS equal the simulator's)
    "bench_ope_slates.py": ["--quick", "--seeds", "1"],
    "reference_sasrec.py": ["--data", "{planted}", "--max-epochs", "2", "--dim", "16", "--blocks", "1"]
    + ["--max-len", "8"],
    # the synthetic dataset only (no shared data), one correction, one training step
    "bench_quality.py": ["--datasets", "synthetic", "--corrections", "none", "--no-seed-preset", "--no-sasrec"]
    + ["--synth-users", "60", "--synth-items", "200", "--epochs", "1", "--max-steps", "1", "--work", "{tmp}/q"]
    + ["--pretrained"],
}


def check(script: str, result: dict[str, Any]) -> None:
    """What each script's figures must hold beyond being one JSON object."""
    if script == "bench_scale.py":
        assert result["results"] and not any("error" in r for r in result["results"]), result["results"]
    elif script == "bench_quality.py":
        models = [r["model"] for r in result["results"]]
        assert models == ["none", "popularity", "recent", "behavior", "pretrained, fine-tuned (none)"] + [
            "pretrained, frozen (none)"
        ]
        for row in result["results"]:  # the reward-weighted and per-behaviour figures of `evaluate`
            assert 0.0 <= row["reward_ndcg@10"] <= 1.0 and row["ndcg_by_event"]
    elif script == "bench_serve.py":
        assert all(level["errors"] == 0 and level["requests"] > 0 for level in result["http"])
    elif script == "bench_pretrain.py":
        assert result["n_users"] == 200 and result["profile"]["buckets_ms"]  # the planted dataset, profiled
    elif script == "bench_ope_slates.py":
        estimators = result["estimator_names"]
        assert estimators == ["ips", "capped_ips", "snips", "dm", "dr", "sndr", "switch_dr", "dros", "pi", "sn_pi"]
        assert result["reward_model"] == "linear" and result["reward_model_context"] == "last_engaged_item"
        policies = [r["policy"] for r in result["results"]]
        assert policies == ["none", "none_greedy", "is", "is_greedy", "topk", "topk_greedy", "behavior", "logging"]
        for row in result["results"]:
            for key in ("true_value", "item_ips", "item_ips_error", "pi", "pi_error", "pi_weight_ess_share"):
                assert isinstance(row[key], float), (row["policy"], key)  # the keys the table had before
            assert set(row["estimators"]) == set(estimators)
            for name, est in row["estimators"].items():
                assert est["error"] == pytest.approx(est["value"] - row["true_value"]), (row["policy"], name)
                assert len(est["error_per_seed"]) == 1 and est["error_ci_low"] <= est["error"] <= est["error_ci_high"]
            assert row["estimators"]["ips"]["value"] == pytest.approx(row["item_ips"])
            assert row["estimators"]["pi"]["value"] == pytest.approx(row["pi"])
        logging = result["results"][-1]  # β's own weights are all 1: every IPS form is the log's mean return
        assert logging["item_weight_ess_share"] == pytest.approx(1.0)
        assert logging["estimators"]["capped_ips"]["value"] == pytest.approx(logging["item_ips"])
    elif script == "reference_sasrec.py":
        assert result["model"] == "sasrec" and 0.0 <= result["ndcg@10"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("script", list(CASES), ids=list(CASES))
def test_benchmark_runs_and_ends_with_one_json_line(
    script: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    planted = request.getfixturevalue("planted_dataset_dir") if "{planted}" in CASES[script] else ""
    args = [a.format(tmp=tmp_path, planted=planted) for a in CASES[script]]
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert lines, f"no output; stderr: {r.stderr[-3000:]}"
    result = json.loads(lines[-1])
    assert isinstance(result, dict)
    check(script, result)


@pytest.mark.slow
def test_bench_quality_runs_on_a_dataset_the_user_prepared(tmp_path: Path, planted_dataset_dir: Path) -> None:
    """``--data NAME=DIR`` benchmarks a prepared directory (any log) instead of the built-in samples."""
    quick = ["--corrections", "none", "--no-seed-preset", "--no-sasrec", "--epochs", "1", "--max-steps", "1"]

    def bench(data: Path, work: str, timeout: int) -> subprocess.CompletedProcess[str]:
        script = [sys.executable, str(REPO / "benchmarks" / "bench_quality.py"), "--data", f"mine={data}", *quick]
        return subprocess.run(
            [*script, "--work", str(tmp_path / work)], cwd=REPO, capture_output=True, text=True, timeout=timeout
        )

    r = bench(planted_dataset_dir, "w", 300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(r.stdout.splitlines()[-1])["results"]
    assert [(row["dataset"], row["model"]) for row in rows] == [
        ("mine", m) for m in ("none", "popularity", "recent", "behavior")
    ]
    assert not (tmp_path / "w" / "mine" / "data").exists()  # the given directory is used, not re-prepared
    bad = bench(tmp_path, "w2", 60)
    assert bad.returncode != 0 and "has no meta.json" in bad.stderr
