"""``topkrec pretrain`` on several processes (torchrun + DDP, Gloo on CPU) against one process.

The real check: with batch norm off (per-rank batch statistics are the one thing that differs by design)
two processes must give the single-process result for the same global batch — same shuffles, same
negatives, gradient of the same global-batch mean — so embeddings and per-epoch metrics agree up to
floating-point summation order. The batch of 255 splits 128 / 127, so the unequal-shard loss scaling is
exercised too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from topkrec.data.dataset import Dataset
from topkrec.distributed import DistContext
from topkrec.embeddings import load_embeddings
from topkrec.embeddings.config import PretrainConfig
from topkrec.embeddings.train import min_batch_rows

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with Gloo is unavailable"
)

# Learns the planted blocks without batch norm (eval AUC ≈ 0.99 after 3 epochs), in a few seconds.
# Dense embeddings in both runs: under torchrun pretraining always uses dense embedding gradients.
COMPARABLE = ["--epochs", "3", "--batch-size", "255", "--no-batch-norm", "--dense-embeddings", "--lr", "1e-2"]
COMPARABLE += [
    "--hidden",
    "64",
    "--embed-size",
    "32",
]  # the width these settings learn the planted blocks at in 3 epochs


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT"}}
    env["OMP_NUM_THREADS"] = "1"  # what torchrun sets for its workers; the same for the one-process run
    return env


def _pretrain(*args: str | Path, nproc: int = 1, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    if nproc == 1:
        cmd = [sys.executable, "-m", "topkrec", "pretrain"]
    else:
        dist_run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
        cmd = [*dist_run, *(launcher or ["-m", "topkrec"]), "pretrain"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=240, env=_env())


# ---------------------------------------------------------------- pure helpers
@pytest.mark.parametrize(("batch", "world"), [(255, 2), (256, 2), (10, 3), (7, 1)])
def test_loss_scale_makes_the_ddp_average_the_global_mean(batch: int, world: int) -> None:
    scale = DistContext(rank=0, world_size=world).loss_scale
    g = torch.Generator().manual_seed(0)
    row_losses = torch.rand(batch, generator=g, dtype=torch.float64)
    shards = torch.tensor_split(row_losses, world)
    # DDP averages over ranks whatever each rank backpropagates; with the scale that average is the global mean
    ddp_average = sum(scale(s.numel(), batch) * s.mean() for s in shards) / world
    assert float(ddp_average) == pytest.approx(float(row_losses.mean()), rel=1e-12)
    if batch % world:  # unequal shards: the plain average of shard means would be biased
        plain = sum(s.mean() for s in shards) / world
        assert abs(float(plain) - float(row_losses.mean())) > 1e-6
    with pytest.raises(ValueError):
        scale(batch + 1, batch)


def test_min_batch_rows_is_two_per_process() -> None:
    assert [min_batch_rows(w) for w in (1, 2, 8)] == [2, 4, 16]


# ---------------------------------------------------------------- two processes
@needs_gloo
def test_two_processes_match_one_process(planted_dataset_dir: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = _pretrain("--data", planted_dataset_dir, "--out", one, *COMPARABLE, "--device", "cpu")
    assert r1.returncode == 0, r1.stderr
    r2 = _pretrain("--data", planted_dataset_dir, "--out", two, *COMPARABLE, "--device", "cpu", nproc=2)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.count("wrote ") == 1 and "on 2 processes" in r2.stdout  # rank 0 alone prints the summary

    dataset = Dataset.load(planted_dataset_dir)
    e1, e2 = load_embeddings(one, dataset), load_embeddings(two, dataset)
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    c1, c2 = (json.loads((d / "config.json").read_text()) for d in (one, two))
    assert (m1["world_size"], c1["world_size"], m2["world_size"], c2["world_size"]) == (1, 1, 2, 2)
    assert c1["config"]["sparse_embeddings"] is c2["config"]["sparse_embeddings"] is False
    # Not vacuous: the run learned (AUC rose from chance), so the embeddings moved far from initialisation.
    assert m1["epochs"][0]["eval_auc"] < 0.7 and m1["eval_auc"] > 0.95
    # Same global batches, negatives and gradients: equal up to float summation order. Measured max |Δ| on
    # the unit-norm embeddings ≈ 6e-7 (fp32 all-reduce vs one matmul, amplified a little by Adam's
    # normalisation over 33 steps); 1e-4 leaves margin, while another shuffle or other negatives (measured in
    # one process) move them by more than 0.5.
    assert torch.allclose(e1.user, e2.user, atol=1e-4) and torch.allclose(e1.item, e2.item, atol=1e-4)
    for a, b in zip(m1["epochs"], m2["epochs"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)  # mean over both ranks' rows
        assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-5)
        assert b["eval_auc"] == pytest.approx(a["eval_auc"], abs=1e-3)  # near-ties may swap order


@needs_gloo
def test_two_processes_refuse_an_existing_out_without_hanging(planted_dataset_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    # torchrun --no-python runs the console script when it is installed, else the module form
    launcher = ["--no-python", "topkrec"] if shutil.which("topkrec") else None
    args = ("--data", planted_dataset_dir, "--out", out, *COMPARABLE, "--device", "cpu")
    r = _pretrain(*args, nproc=2, launcher=launcher)
    assert r.returncode != 0
    # every rank checks before any collective work, so none waits for the other; torchrun stops the group as
    # soon as one rank exits 2, which may be before the other printed its own line: one or two lines
    assert 1 <= r.stderr.count("error:") <= 2 and "--force" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


@needs_gloo
@pytest.mark.slow
def test_two_processes_with_batch_norm_dense_softmax_learn(planted_dataset_dir: Path, tmp_path: Path) -> None:
    """The configurations that are not bit-comparable with one process (per-rank batch norm statistics,
    per-rank in-batch softmax negatives) still train, learn and write a complete artifact."""
    out = tmp_path / "emb"
    args = ["--epochs", "4", "--batch-size", "256", "--lr", "3e-3", "--loss", "softmax", "--dense-embeddings"]
    r = _pretrain("--data", planted_dataset_dir, "--out", out, *args, "--device", "cpu", nproc=2)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["eval_auc"] > 0.9
    emb = load_embeddings(out, Dataset.load(planted_dataset_dir))
    assert emb.user.shape == (200, PretrainConfig().embed_size) and torch.count_nonzero(emb.item[-1]) == 0


@needs_gloo
def test_torchrun_turns_sparse_embedding_gradients_off(planted_dataset_dir: Path, tmp_path: Path) -> None:
    """The default (sparse rows + SparseAdam) becomes dense under torchrun, recorded in config.json."""
    out = tmp_path / "emb"
    args = ("--data", planted_dataset_dir, "--out", out, "--epochs", "1", "--batch-size", "256", "--device", "cpu")
    r = _pretrain(*args, nproc=2)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "config.json").read_text())["config"]["sparse_embeddings"] is False
