"""``topkrec recommend`` through subprocess: single user JSON, batch files, user errors (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from topkrec.serve.recommender import Recommender
from topkrec.serve.synthetic import make_random_model


def topkrec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "topkrec", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_model(tmp_path_factory.mktemp("cli") / "model", n_users=20, n_items=200, hist_num=3, seed=2)


def test_recommend_one_user_json_and_table(model: Path) -> None:
    r = topkrec("recommend", "--model", str(model), "--user", "u4", "--history", "i1, i2,zzz", "--k", "4", "--json")
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    expected = Recommender.load(model, device="cpu").recommend(user="u4", history=["i1", "i2", "zzz"], k=4)
    assert [x["item"] for x in body["items"]] == expected.items
    assert body["unknown_history_items"] == ["zzz"] and body["user"] == "u4"
    r = topkrec("recommend", "--model", str(model), "--history", "i3", "--explore", "--m", "30", "--seed", "1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "item", "score", "propensity"] and len(lines) == 11


def test_recommend_batch_to_csv_and_parquet(model: Path, tmp_path: Path) -> None:
    csv = tmp_path / "users.csv"
    csv.write_text("user,history\nu1,\nu2,i5 i6\nstranger,i7\n")
    txt = tmp_path / "users.txt"  # plain text: one user per line
    txt.write_text("u1\nu2\nstranger\n")
    for name, users in (("recs.csv", csv), ("recs.parquet", txt)):
        out = tmp_path / name
        r = topkrec("recommend", "--model", str(model), "--users", str(users), "--out", str(out), "--k", "3", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.strip().splitlines()[-1])["unknown_users"] == 1
        df = pl.read_csv(out) if name.endswith(".csv") else pl.read_parquet(out)
        assert df.columns == ["user", "rank", "item", "score", "propensity"]
        assert df.height == 9 and df["user"].to_list()[::3] == ["u1", "u2", "stranger"]
        rec = Recommender.load(model, device="cpu")
        history = ["i5", "i6"] if users == csv else None
        expected = rec.recommend(user="u2", history=history, k=3).items
        assert df.filter(pl.col("user") == "u2")["item"].to_list() == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", "u1"], "does not exist"),
        ([], "give --user"),
        (["--users", "nofile.csv"], "--out"),
        (["--user", "u1", "--explore", "--temperature", "0"], "temperature"),
    ],
)
def test_user_errors_exit_2_with_one_line(model: Path, tmp_path: Path, args: list[str], message: str) -> None:
    target = str(tmp_path / "missing") if message == "does not exist" else str(model)
    r = topkrec("recommend", "--model", target, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr
