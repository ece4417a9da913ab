"""Data-parallel training under torchrun (Gloo on CPU): two processes match one on the same global batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from topkrec.distributed import DistContext, env_rank, env_world_size
from topkrec.policy.artifact import load_agent

WORKER = Path(__file__).resolve().parents[1] / "support" / "ddp_train_worker.py"

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with Gloo is not available",
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(args: list[str], nproc: int | None, cwd: Path) -> subprocess.CompletedProcess[str]:
    launch = [] if nproc is None else ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    proc = subprocess.run(
        [sys.executable, *launch, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_agent(model_dir).module.state_dict()


def test_shard_splits_a_global_batch_into_contiguous_parts() -> None:
    idx = torch.arange(7)
    parts = [DistContext(rank=r, world_size=3).shard(idx) for r in range(3)]
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4], [5, 6]]
    assert DistContext().shard(idx) is idx and not DistContext().enabled and DistContext().is_main


def test_env_without_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert env_world_size() == 1 and env_rank() == 0


@pytest.mark.slow
def test_two_processes_match_one_on_the_same_global_batches(tmp_path: Path) -> None:
    _run([str(WORKER), str(tmp_path / "one")], None, tmp_path)
    _run([str(WORKER), str(tmp_path / "two")], 2, tmp_path)
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert one.keys() == two.keys()
    for name in one:
        # Each rank's loss is the mean over its half of the batch and DDP averages the gradients, which
        # equals the gradient of the whole batch's mean; only the summation order differs.
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=f"{name} differs")
    state = json.loads((tmp_path / "two" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["global_step"] == 6
    log = [json.loads(line) for line in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    log_one = [json.loads(line) for line in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [r["step"] for r in log_one] == [2, 4, 6]
    for a, b in zip(log, log_one, strict=True):
        # β̂'s loss is a plain mean over rows: the mean over ranks of per-rank means is the batch mean.
        assert a["train/behavior_loss"] == pytest.approx(b["train/behavior_loss"], rel=1e-5)


def test_torchrun_with_one_process_runs_the_ddp_path_and_matches_plain(tmp_path: Path) -> None:
    """`--nproc-per-node 1` starts a process group and wraps the step in DDP (what the one-GPU check runs)."""
    _run([str(WORKER), str(tmp_path / "plain")], None, tmp_path)
    proc = _run([str(WORKER), str(tmp_path / "one_rank")], 1, tmp_path)
    assert "process group started: rank 0 of 1 (gloo, cpu)" in proc.stderr
    assert "data parallel: 1 process(es), global batch 32" in proc.stderr
    state = json.loads((tmp_path / "one_rank" / "trainer_state.json").read_text())
    assert state["world_size"] == 1 and state["global_step"] == 6
    plain, one_rank = _weights(tmp_path / "plain"), _weights(tmp_path / "one_rank")
    for name in plain:
        torch.testing.assert_close(one_rank[name], plain[name], msg=f"{name} differs")


def test_agent_weights_are_trained_by_both_runs(tmp_path: Path) -> None:
    """The comparison above must not pass because nothing moved: training changes the weights."""
    _run([str(WORKER), str(tmp_path / "one")], None, tmp_path)
    from topkrec.policy.model import Agent

    trained = load_agent(tmp_path / "one")
    torch.manual_seed(0)
    fresh = Agent(trained.config)  # the same architecture, untrained
    assert not torch.allclose(trained.module.policy_head.weight, fresh.policy_head.weight, atol=1e-4)


@pytest.mark.slow
def test_token_windows_two_processes_give_the_one_process_gradient(tmp_path: Path) -> None:
    """--batching windows under DDP: each rank trains its windows' rows (unequal counts), the loss scales make
    the all-reduced gradient the whole global batch's (compared on the first step's gradients)."""
    from safetensors.torch import load_file

    _run([str(WORKER), str(tmp_path / "one"), "--windows"], None, tmp_path)
    _run([str(WORKER), str(tmp_path / "two"), "--windows"], 2, tmp_path)
    one, two = load_file(str(tmp_path / "one_grads.safetensors")), load_file(str(tmp_path / "two_grads.safetensors"))
    assert one.keys() == two.keys() and len(one) > 5
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6, msg=f"{name} differs")


def test_two_processes_with_unrewarded_rows(tmp_path: Path) -> None:
    """Rows without a reward: π trains on a different number of rows on each rank (some batches may leave
    π's head unused on a rank, which DDP must accept); the loss scales make it the one-process step again."""
    _run([str(WORKER), str(tmp_path / "two"), "--zero-rewards"], 2, tmp_path)
    _run([str(WORKER), str(tmp_path / "one"), "--zero-rewards"], None, tmp_path)
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=f"{name} differs")


def test_shard_scales_count_rewarded_rows_of_the_global_batch() -> None:
    """Unequal rewarded rows per rank: the π factors make the ranks' average the global mean."""
    from topkrec.train.loop import TrainData

    class _T:  # the two fields the scales read
        reward = torch.tensor([1.0, 0.0, 0.0, 2.0, 1.0, 3.0, 0.0, 1.0])
        rows = torch.arange(8)

    def scales(dist: DistContext, idx: torch.Tensor, n_local: int, all_rewarded: bool) -> tuple[float, float]:
        return TrainData(_T(), None, all_rewarded, 1, 1).shard_scales(dist, idx, n_local)  # type: ignore[arg-type]

    idx = torch.tensor([0, 1, 2, 3, 4, 5])  # rank 0: rows 0-2 (1 rewarded), rank 1: rows 3-5 (3 rewarded)
    assert [scales(DistContext(rank=r, world_size=2), idx, 3, False) for r in (0, 1)] == [
        (1.0, 2 * 1 / 4),
        (1.0, 2 * 3 / 4),
    ]
    assert scales(DistContext(), idx, 6, False) == (1.0, 1.0)
    assert scales(DistContext(rank=1, world_size=2), torch.tensor([0, 1, 2]), 1, True) == (2 / 3, 2 / 3)


@pytest.mark.slow
def test_cli_train_under_torchrun(tmp_path: Path) -> None:
    """`torchrun -m topkrec train`: rank 0 alone writes and prints; an existing --out fails on every rank."""
    from support.agent_data import synth_dataset

    data = tmp_path / "data"
    data.mkdir()
    synth_dataset(n_users=50, n_items=80, seed=4).save(data)
    args = ["-m", "topkrec", "--no-progress", "train", "--data", str(data), "--out", str(tmp_path / "model")]
    args += ["--epochs", "1", "--batch-size", "64", "--lr", "1e-3", "--device", "cpu", "--hist-num", "8"]
    proc = _run(args, 2, tmp_path)
    assert proc.stdout.count("trained ") == 1, proc.stdout
    state = json.loads((tmp_path / "model" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["finished"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model.tmp")]  # no stray temp dirs
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    again = subprocess.run(
        [sys.executable, *launch, *args], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240
    )
    assert again.returncode != 0 and "already exists" in again.stderr


@pytest.mark.parametrize("command", ["evaluate", "compare", "demo", "serve"])
def test_commands_that_are_not_data_parallel_refuse_torchrun(tmp_path: Path, command: str) -> None:
    env = {**_env(), "WORLD_SIZE": "2", "RANK": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "topkrec", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert f"`topkrec {command}` does not run under torchrun" in proc.stderr and "train and pretrain" in proc.stderr


@pytest.mark.slow
def test_resume_on_another_number_of_processes(tmp_path: Path) -> None:
    """Stopped on 2 processes, resumed on 1: the same weights as one uninterrupted process (no lost work);
    sampled heads (row-sparse Adam alone, dense under DDP) refuse with a one-line error instead."""
    from support.agent_data import synth_dataset

    data = tmp_path / "data"
    data.mkdir()
    synth_dataset(n_users=50, n_items=80, seed=4).save(data)
    base = ["-m", "topkrec", "--no-progress", "train", "--data", str(data), "--epochs", "2", "--batch-size", "64"]
    # the reference's concat encoder over rows, no dropout: bitwise comparable across process counts
    base += ["--lr", "1e-3", "--device", "cpu", "--encoder", "concat", "--hist-num", "10", "--dropout", "0"]
    _run([*base, "--out", str(tmp_path / "whole")], None, tmp_path)
    _run([*base, "--out", str(tmp_path / "split"), "--max-steps", "5"], 2, tmp_path)
    assert json.loads((tmp_path / "split" / "trainer_state.json").read_text())["global_step"] == 5
    _run([*base, "--out", str(tmp_path / "split"), "--resume"], None, tmp_path)
    whole, split = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-5, msg=f"{name} differs")

    sampled = [*base, "--out", str(tmp_path / "sampled"), "--softmax", "sampled", "--negatives", "16"]
    _run([*sampled, "--max-steps", "2"], None, tmp_path)
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    proc = subprocess.run(
        [sys.executable, *launch, *sampled, "--resume"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode != 0 and "resume on the same number of processes" in proc.stderr
