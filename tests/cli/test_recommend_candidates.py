"""``topkrec recommend --candidates FILE`` through the installed command: only those items come back.

One user (a .csv whose ``item`` column is not the first) and a batch (a .parquet read by its first column),
each compared with ``Recommender.recommend(candidates=...)``; unknown ids are skipped, and a file with no
known id is one ``error:`` line with exit status 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from topkrec.serve import Recommender
from topkrec.serve.synthetic import make_random_model

N_ITEMS = 60
ALLOWED = [f"i{j}" for j in range(1, N_ITEMS, 7)]


def topkrec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "topkrec", "recommend", "--device", "cpu", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_model(
        tmp_path_factory.mktemp("cand") / "m", n_users=6, n_items=N_ITEMS, hist_num=3, mean_events=4, seed=5
    )


def test_one_user_gets_only_candidates(model: Path, tmp_path: Path) -> None:
    path = tmp_path / "ads.csv"
    pl.DataFrame({"campaign": ["a"] * (len(ALLOWED) + 1), "item": [*ALLOWED, "zzz-unknown"]}).write_csv(path)
    rec = Recommender.load(model, device="cpu")
    seen = {rec.item_raw[i] for i in rec.histories.of(rec.user_index["u2"])}
    fresh = [c for c in ALLOWED if c not in seen]
    assert fresh and len(fresh) < 30
    r = topkrec("--model", str(model), "--user", "u2", "--k", "30", "--candidates", str(path), "--json")
    assert r.returncode == 0, r.stderr
    items = [x["item"] for x in json.loads(r.stdout)["items"]]
    # every unseen candidate once, nothing else (k is larger than the set), in the policy's order
    assert sorted(items) == sorted(fresh)
    assert items == rec.recommend(user="u2", k=30, candidates=[*ALLOWED, "zzz-unknown"]).items
    # the table output shows the same items
    r = topkrec("--model", str(model), "--user", "u2", "--k", "3", "--candidates", str(path))
    assert r.returncode == 0, r.stderr
    assert [line.split()[1] for line in r.stdout.strip().splitlines()[1:]] == items[:3]


def test_a_batch_gets_only_candidates(model: Path, tmp_path: Path) -> None:
    cands = tmp_path / "stock.parquet"
    pl.DataFrame({"sku": ALLOWED}).write_parquet(cands)  # no `item` column: the first one is read
    users = tmp_path / "users.csv"
    users.write_text("user,history\nu0,\nu4,i3 i10\nstranger,i1\n")
    out = tmp_path / "recs.csv"
    r = topkrec("--model", str(model), "--users", str(users), "--out", str(out), "--k", "4", "--candidates", str(cands))
    assert r.returncode == 0, r.stderr
    df = pl.read_csv(out, schema_overrides={"item": pl.String, "user": pl.String})
    assert df.height > 0 and set(df["item"]) <= set(ALLOWED)
    rec = Recommender.load(model, device="cpu")
    for user, history in (("u0", None), ("u4", ["i3", "i10"]), ("stranger", ["i1"])):
        want = rec.recommend(user=user, history=history, k=4, candidates=ALLOWED).items
        assert df.filter(pl.col("user") == user)["item"].to_list() == want


@pytest.mark.parametrize(
    ("content", "message"),
    [("nope\nnada\n", "none of the 2 candidates is in the model's catalogue"), ("\n\n", "holds no item id")],
)
def test_no_known_candidate_is_one_line_exit_2(model: Path, tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "c.txt"
    path.write_text(content)
    r = topkrec("--model", str(model), "--user", "u1", "--candidates", str(path))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert message in r.stderr
