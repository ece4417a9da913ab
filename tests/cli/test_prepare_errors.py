"""Bad input → one line naming file/line/value and what to do, exit status 2, no traceback, no dataset left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from topkrec.data.synth import SynthConfig, generate, write_tianchi


def prepare_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "topkrec", "prepare", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def assert_clean_failure(r: subprocess.CompletedProcess[str], out: Path, *needles: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temp sibling
    return lines[0]


@pytest.fixture()
def raw(tmp_path: Path) -> Path:
    d = tmp_path / "raw"
    d.mkdir()
    write_tianchi(generate(SynthConfig(n_users=60, n_items=100, seed=0)), d)
    return d


def behavior_lines(raw: Path) -> list[str]:
    return (raw / "user_behavior.csv").read_text().splitlines()


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def test_missing_input_and_missing_file(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    r = prepare_cli("--format", "tianchi", "--input", tmp_path / "nope", "--out", out)
    assert_clean_failure(r, out, "nope", "not found")
    (raw / "user.csv").unlink()
    r = prepare_cli("--format", "tianchi", "--input", raw, "--out", out, "--no-sample")
    assert_clean_failure(r, out, "user.csv", "not found", "user.csv, item.csv and user_behavior.csv")


def test_missing_column(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("userId,movieId,timestamp\n1,2,100\n")
    r = prepare_cli("--format", "movielens", "--input", ratings, "--out", out)
    assert_clean_failure(r, out, "ratings.csv", "no column 'rating'", "userId, movieId, timestamp")
    log = tmp_path / "log.csv"
    log.write_text("user,item,time,click\n1,2,100,1\n")
    r = prepare_cli("--format", "events", "--input", log, "--out", out, "--reward-col", "click")
    assert_clean_failure(r, out, "log.csv", "no column 'ts'", "--time-col")


def test_row_with_wrong_number_of_fields(raw: Path, tmp_path: Path) -> None:
    lines = behavior_lines(raw)
    lines[9] = lines[9] + ",extra"
    write_lines(raw / "user_behavior.csv", lines)
    out = tmp_path / "ds"
    r = prepare_cli("--format", "tianchi", "--input", raw, "--out", out, "--no-sample")
    assert_clean_failure(r, out, "user_behavior.csv line 10", "expected 4 fields", "found 5", "--skip-bad-rows")
    lines[9] = ",".join(lines[9].split(",")[:3])  # too few now
    write_lines(raw / "user_behavior.csv", lines)
    r = prepare_cli("--format", "tianchi", "--input", raw, "--out", out, "--no-sample")
    assert_clean_failure(r, out, "line 10", "found 3")
    r = prepare_cli("--format", "tianchi", "--input", raw, "--out", out, "--no-sample", "--skip-bad-rows")
    assert r.returncode == 0 and "skipped 1 bad rows" in r.stderr and (out / "meta.json").exists()


def test_non_numeric_time(raw: Path, tmp_path: Path) -> None:
    lines = behavior_lines(raw)
    user, item, beh, _ = lines[41].split(",")
    lines[41] = f"{user},{item},{beh},2017-11-25"
    write_lines(raw / "user_behavior.csv", lines)
    out = tmp_path / "ds"
    r = prepare_cli("--format", "tianchi", "--input", raw, "--out", out, "--no-sample")
    assert_clean_failure(r, out, "user_behavior.csv line 42", "ts '2017-11-25' is not an integer")


def test_unknown_behavior(raw: Path, tmp_path: Path) -> None:
    lines = behavior_lines(raw)
    user, item, _, ts = lines[4].split(",")
    lines[4] = f"{user},{item},click,{ts}"
    write_lines(raw / "user_behavior.csv", lines)
    out = tmp_path / "ds"
    r = prepare_cli("--format", "tianchi", "--input", raw, "--out", out, "--no-sample")
    assert_clean_failure(r, out, "line 5", "'click'", "pv, cart, fav, buy", "--reward pv=1,cart=2,fav=2,buy=3,click=1")
    r = prepare_cli(
        "--format",
        "tianchi",
        "--input",
        raw,
        "--out",
        out,
        "--no-sample",
        "--reward",
        "pv=1,cart=2,fav=2,buy=3,click=1",
    )
    assert r.returncode == 0, r.stderr
    assert "click 1" in r.stdout


def test_empty_result_after_filtering(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    r = prepare_cli("--format", "tianchi", "--input", raw, "--out", out, "--sample-short", "0", "--sample-long", "0")
    assert_clean_failure(r, out, "no events left after sampling (kept 0 of", "--no-sample")
    (raw / "user_behavior.csv").write_text("")
    r = prepare_cli("--format", "tianchi", "--input", raw, "--out", out, "--no-sample")
    assert_clean_failure(r, out, "user_behavior.csv", "no events")


def test_more_users_asked_for_than_exist(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    r = prepare_cli("--format", "tianchi", "--input", raw, "--out", out, "--sample-short", "100000")
    line = assert_clean_failure(r, out, "--sample-short 100000", "more users than exist", "--no-sample")
    assert "users with 5 < n ≤ 50 events" in line


def test_existing_output_needs_force_and_debug_shows_traceback(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = prepare_cli("--format", "tianchi", "--input", raw, "--out", out, "--no-sample")
    assert r.returncode == 2 and "--force" in r.stderr and "Traceback" not in r.stderr
    assert (out / "keep.txt").read_text() == "mine"
    r = prepare_cli("--format", "tianchi", "--input", raw, "--out", out, "--no-sample", "--force")
    assert r.returncode == 0 and not (out / "keep.txt").exists() and (out / "meta.json").exists()
    bad = tmp_path / "ds2"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "topkrec",
            "--debug",
            "prepare",
            "--format",
            "tianchi",
            "--input",
            str(tmp_path / "x"),
            "--out",
            str(bad),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "Traceback" in r.stderr and "DataError" in r.stderr and not bad.exists()


def test_propensity_must_be_a_probability(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("u,i,t,r,p\n1,1,10,1,0.5\n1,2,11,0,0\n")
    out = tmp_path / "ds"
    cols = ["--user-col", "u", "--item-col", "i", "--time-col", "t", "--reward-col", "r", "--propensity-col", "p"]
    r = prepare_cli("--format", "events", "--input", log, "--out", out, *cols)
    assert_clean_failure(r, out, "log.csv line 3", "propensity 0.0 is not a probability")


def test_bad_flags(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    r = prepare_cli("--format", "tianchi", "--input", raw, "--out", out, "--reward", "pv:1")
    assert_clean_failure(r, out, "--reward", "behaviour=number")
    r = prepare_cli("--format", "csv", "--input", raw, "--out", out)
    assert_clean_failure(r, out, "--format 'csv'", "tianchi, taobao, movielens, events")
    r = prepare_cli("--format", "tianchi", "--input", raw, "--out", out, "--test-size", "1.5")
    assert_clean_failure(r, out, "--test-size")


def test_failure_while_writing_leaves_no_dataset(raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted write (here: an exception half-way through saving) leaves nothing that looks complete."""
    from topkrec.data import prepare as prep
    from topkrec.io import atomic_dir

    prepared, _ = prep.prepare(raw, prep.PrepareConfig(format="tianchi"))
    out = tmp_path / "ds"

    def broken_write(*args: object, **kwargs: object) -> None:
        (args[0] / "events.parquet").write_bytes(b"half")  # type: ignore[operator]
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "write_dataset_dir", broken_write)
    with pytest.raises(KeyboardInterrupt), atomic_dir(out) as tmp:
        prepared.save(tmp)
    assert not out.exists() and list(tmp_path.iterdir()) == [raw]
