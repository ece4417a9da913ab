"""Outputs that never destroy inputs, and writes that survive a kill (issue 14 items 3, 6 and 8).

- ``atomic_dir`` killed at every step of its final swap: the complete result (or the previous one) is
  back in place after ``recover_interrupted``, nothing else is left beside it;
- ``train --resume`` after a kill between the two renames of a checkpoint write continues from it;
- stale temporary directories of killed runs are removed (dead writer) or reported (unknown writer);
- overlap and location checks; files of a model directory and a dataset are created 0644 under umask 022.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from topkrec.errors import TopkrecError
from topkrec.io import (
    atomic_dir,
    atomic_write_bytes,
    check_no_overlap,
    check_output_dir,
    check_output_file,
    recover_interrupted,
)

KILL_DURING_SWAP = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from topkrec import io

    out, stop_after = Path(sys.argv[1]), int(sys.argv[2])
    real_rename = Path.rename
    done = []

    def rename(self, target):
        result = real_rename(self, target)
        done.append(target)
        if len(done) == stop_after:
            os._exit(9)  # SIGKILL-like: no cleanup, no finally
        return result

    Path.rename = rename
    with io.atomic_dir(out, force=True) as tmp:
        (tmp / "version.txt").write_text("new")
        if stop_after == 0:
            os._exit(9)  # killed while writing
    """
)


def dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.mark.parametrize(
    ("stop_after", "expected"),
    [
        (0, "old"),  # killed while writing: the temporary dir is removed, the previous output stays
        (1, "new"),  # killed after tmp → .new-: the complete new result replaces the old one
        (2, "new"),  # killed between out → .old- and .new- → out: out was missing; the new one is put back
        (3, "new"),  # killed after the swap, before the old copy was deleted: the old copy is removed
    ],
)
def test_atomic_dir_killed_at_every_step_of_the_swap_loses_nothing(
    tmp_path: Path, stop_after: int, expected: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "version.txt").write_text("old")
    r = subprocess.run([sys.executable, "-c", KILL_DURING_SWAP, str(out), str(stop_after)], capture_output=True)
    assert r.returncode == 9, r.stderr
    if stop_after == 2:
        assert not out.exists() and len(siblings(out)) == 2  # the state the issue describes: out missing
    done = recover_interrupted(out)
    assert done, "something had to be repaired"
    assert (out / "version.txt").read_text() == expected
    assert siblings(out) == []


def test_a_fresh_output_killed_between_renames_is_recovered_by_the_next_check(tmp_path: Path) -> None:
    out = tmp_path / "fresh"
    r = subprocess.run([sys.executable, "-c", KILL_DURING_SWAP, str(out), "1"], capture_output=True)
    assert r.returncode == 9 and not out.exists()
    with pytest.raises(TopkrecError, match="already exists"):  # recovered, so it now exists
        check_output_dir(out, force=False)
    assert (out / "version.txt").read_text() == "new" and siblings(out) == []


def test_dataset_load_recovers_a_dataset_swapped_in_when_killed(tmp_path: Path) -> None:
    from topkrec.data.dataset import Dataset
    from topkrec.embeddings.planted import planted_block_dataset

    out = tmp_path / "data"
    with atomic_dir(out) as tmp:
        planted_block_dataset().save(tmp)
    pid = dead_pid()
    out.rename(tmp_path / f".data.new-{pid}-abcd1234")  # complete, swap interrupted before it took out's place
    ds = Dataset.load(out)
    assert ds.n_events > 0 and siblings(out) == []


def test_stale_temporary_dirs_are_removed_or_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    pid = dead_pid()
    dead = tmp_path / f".ds.tmp-{pid}-x1"
    dead.mkdir()
    (dead / "events.parquet").write_bytes(b"half")
    alive = tmp_path / f".ds.tmp-{os.getpid()}-x2"  # a live writer (this process): left alone
    alive.mkdir()
    unknown = tmp_path / ".ds.tmp-abcdef"  # the naming of older versions: no pid, reported only
    unknown.mkdir()
    with caplog.at_level("WARNING", logger="topkrec.io"):
        check_output_dir(out, force=True)
    assert not dead.exists() and alive.exists() and unknown.exists()
    assert any(str(dead) in r.message and "removed" in r.message for r in caplog.records)
    assert any(str(unknown) in r.message and "delete it" in r.message for r in caplog.records)


def test_prepare_cleans_the_temporary_dir_of_a_killed_prepare(tmp_path: Path) -> None:
    from topkrec.data.synth import SynthConfig, generate, write_tianchi

    raw = tmp_path / "raw"
    raw.mkdir()
    write_tianchi(generate(SynthConfig(n_users=40, n_items=80, seed=0)), raw)
    stale = tmp_path / f".ds.tmp-{dead_pid()}-k"
    stale.mkdir()
    (stale / "events.parquet").write_bytes(b"half")
    cmd = [sys.executable, "-m", "topkrec", "prepare", "--format", "tianchi", "--input", str(raw), "--no-sample"]
    r = subprocess.run([*cmd, "--out", str(tmp_path / "ds")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not stale.exists() and "left by an interrupted run" in r.stderr
    assert siblings(tmp_path / "ds") == []


KILL_IN_CHECKPOINT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path

    real_rename = Path.rename
    olds = []

    def rename(self, target):
        result = real_rename(self, target)
        if ".old-" in Path(target).name:
            olds.append(target)
            if len(olds) == 2:  # the third checkpoint: out was moved aside, the new one not yet in place
                os._exit(9)
        return result

    Path.rename = rename
    from topkrec.cli import main

    sys.argv = ["topkrec", *sys.argv[1:]]
    main()
    """
)


def test_train_resume_after_a_kill_between_the_two_renames_of_a_checkpoint(tmp_path: Path) -> None:
    from topkrec.embeddings.planted import planted_block_dataset

    data = tmp_path / "data"
    with atomic_dir(data) as tmp:
        planted_block_dataset().save(tmp)
    model = tmp_path / "model"
    args = ["train", "--data", str(data), "--out", str(model), "--device", "cpu", "--batch-size", "16"]
    args += ["--checkpoint-every", "1", "--embed-dim", "8", "--hidden", "8"]
    r = subprocess.run(
        [sys.executable, "-c", KILL_IN_CHECKPOINT, *args, "--max-steps", "5"], capture_output=True, text=True
    )
    assert r.returncode == 9, r.stderr
    assert not model.exists(), "the kill should leave --out missing (the failure of issue 14 item 6)"
    r = subprocess.run(
        [sys.executable, "-m", "topkrec", *args, "--max-steps", "5", "--resume"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "recovered" in r.stderr and "no checkpoint" not in r.stderr
    state = json.loads((model / "trainer_state.json").read_text())
    assert state["global_step"] == 5
    assert siblings(model) == []
    # Resumed from the recovered checkpoint (step 3), not restarted: the weights equal an uninterrupted run's.
    straight = tmp_path / "straight"
    args[args.index(str(model))] = str(straight)
    r = subprocess.run([sys.executable, "-m", "topkrec", *args, "--max-steps", "5"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    weights = [p.name for p in straight.glob("*.safetensors") if p.stem not in ("optimizer", "rng")]
    assert weights
    for name in weights:
        assert (model / name).read_bytes() == (straight / name).read_bytes(), name


# ------------------------------------------------------------------------------------------ overlap checks
@pytest.mark.parametrize(
    ("out", "inp", "word"),
    [("d/raw", "d/raw", "is"), ("d", "d/raw", "contains"), ("d/raw/ds", "d/raw", "lies inside")],
)
def test_overlap_is_refused_with_what_overlaps(tmp_path: Path, out: str, inp: str, word: str) -> None:
    (tmp_path / "d" / "raw").mkdir(parents=True)
    with pytest.raises(TopkrecError, match=f"--out .* {word} --input"):
        check_no_overlap(tmp_path / out, {"--input": tmp_path / inp})


def test_overlap_sees_through_symlinks_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "raw")
    with pytest.raises(TopkrecError, match=" is --input"):
        check_no_overlap(tmp_path / "link", {"--input": tmp_path / "raw"})
    monkeypatch.chdir(tmp_path / "raw")
    with pytest.raises(TopkrecError, match="contains --input"):
        check_no_overlap(Path(".."), {"--input": Path("../raw")})
    check_no_overlap(tmp_path / "rawer", {"--input": tmp_path / "raw"})  # a shared prefix is no overlap


def test_file_outputs(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "metrics.json").write_text("{}")
    inputs = {"--model": model}
    with pytest.raises(TopkrecError, match="is a directory"):
        check_output_file(model, inputs)
    with pytest.raises(TopkrecError, match="would replace a file of the input --model"):
        check_output_file(model / "config.json", inputs)
    check_output_file(model / "metrics.json", inputs, allowed=[model / "metrics.json"])
    check_output_file(model / "new.json", inputs)  # a new file beside the model's is not destroying anything
    with pytest.raises(TopkrecError, match="is a file, not a directory"):
        check_output_file(model / "config.json" / "x.json", inputs)


def test_read_only_location_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories; the read-only file system case covers it")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(TopkrecError, match="not writable"):
            check_output_dir(ro / "out", force=False)
    finally:
        ro.chmod(0o755)


def test_read_only_file_system_is_refused() -> None:
    ro = Path("/proc/self")  # read-only for every user, root included
    if os.access(ro, os.W_OK):
        pytest.skip("/proc/self is writable here")
    with pytest.raises(TopkrecError, match="choose another"):
        check_output_dir(ro / "topkrec-out", force=False)


# ------------------------------------------------------------------------------------------ file modes
def test_files_are_created_with_the_umask_mode_not_0600(tmp_path: Path) -> None:
    from topkrec.serve.synthetic import make_random_model

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f.bin", b"x")
        model = make_random_model(tmp_path / "model", n_users=3, n_items=20, hist_num=2, seed=0)
        os.umask(0o027)
        atomic_write_bytes(tmp_path / "g.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "g.bin").stat().st_mode & 0o777 == 0o640
    modes = {p.name: p.stat().st_mode & 0o777 for p in model.rglob("*") if p.is_file()}
    assert modes and all(m == 0o644 for m in modes.values()), modes
    assert model.stat().st_mode & 0o777 == 0o755
