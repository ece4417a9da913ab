"""SIGTERM (job schedulers, torchrun's shutdown) stops training like Ctrl-C: a checkpoint, exit 130, --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.agent_data import synth_dataset

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("signals") / "data"
    d.mkdir()
    synth_dataset(n_users=600, n_items=300, seed=5).save(d)
    return d


def _train_args(data: Path, out: Path) -> list[str]:
    return [
        "-m",
        "topkrec",
        "-v",
        "--no-progress",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "40",
    ] + [
        "--hist-num",
        "8",
    ]


def _terminate_after_first_log(cmd: list[str], cwd: Path) -> tuple[int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    extra = ["--batch-size", "32", "--lr", "1e-3", "--device", "cpu", "--log-every", "20"]
    proc = subprocess.Popen([*cmd, *extra], cwd=cwd, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + 120
    for line in proc.stderr:  # wait until training is under way (the first metrics line)
        seen.append(line)
        if "topkrec.metrics: step 20 " in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    return proc.returncode, "".join(seen) + rest


def _state(out: Path) -> dict:
    return json.loads((out / "trainer_state.json").read_text())


def test_sigterm_writes_a_checkpoint_and_resume_finishes(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    rc, log = _terminate_after_first_log([sys.executable, *_train_args(data_dir, out)], tmp_path)
    assert rc == 130, log[-2000:]
    assert "interrupted: writing a checkpoint" in log
    state = _state(out)
    assert state["global_step"] >= 20 and not state["finished"]
    done = subprocess.run(
        [sys.executable, *_train_args(data_dir, out), "--resume", "--batch-size", "32", "--lr", "1e-3"]
        + ["--device", "cpu", "--max-steps", str(state["global_step"] + 10)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert _state(out)["global_step"] == state["global_step"] + 10


@pytest.mark.slow
def test_sigterm_to_torchrun_checkpoints_on_rank_0(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    rc, log = _terminate_after_first_log([*launch, *_train_args(data_dir, out)[0:]], tmp_path)
    assert rc != 0
    assert log.count("interrupted: writing a checkpoint") == 1, log[-3000:]  # rank 0 only
    state = _state(out)
    assert state["world_size"] == 2 and state["global_step"] >= 20 and not state["finished"]
