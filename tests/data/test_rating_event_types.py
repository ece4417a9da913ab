"""``label=reward`` event types: MovieLens ratings prepared through the installed command become one event type
per rating value (``rating=4.5``), and a model trained on them lists those types in its config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl

from topkrec.data.dataset import Dataset

RATINGS = (1.0, 3.5, 4.5, 5.0)
NAMES = ("rating=1", "rating=3.5", "rating=4.5", "rating=5")  # %g, sorted as text


def write_movielens(d: Path) -> Path:
    d.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for user in range(1, 7):
        for j, movie in enumerate(rng.permutation(np.arange(1, 16))[:8]):
            rows.append((user, int(movie), RATINGS[(user + j) % len(RATINGS)], 1_000_000 + 3_600 * user + 30 * j))
    pl.DataFrame(rows, schema=["userId", "movieId", "rating", "timestamp"], orient="row").write_csv(d / "ratings.csv")
    movies = pl.DataFrame(
        {
            "movieId": list(range(1, 16)),
            "title": [f"Movie {m} (1999)" for m in range(1, 16)],
            "genres": ["Drama|Comedy" if m % 2 else "Action" for m in range(1, 16)],
        }
    )
    movies.write_csv(d / "movies.csv")
    return d


def topkrec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "topkrec", "--no-progress", *args], capture_output=True, text=True, timeout=600
    )


def test_movielens_ratings_are_event_types_and_the_model_keeps_them(tmp_path: Path) -> None:
    raw = write_movielens(tmp_path / "ml")
    r = topkrec("prepare", "--format", "movielens", "--input", str(raw), "--out", str(tmp_path / "ds"))
    assert r.returncode == 0, r.stderr
    ds = Dataset.load(tmp_path / "ds")
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert meta["behaviors"] == ["rating"] and meta["reward_source"] == "column"
    assert set(np.asarray(ds.behavior).astype(str)) == {"rating"}
    names, codes = ds.event_vocabulary()
    assert names == NAMES
    # each row's type is its own rating (the reward)
    np.testing.assert_array_equal([names[c] for c in codes], [f"rating={r:g}" for r in ds.reward])
    assert "genre" in ds.item_features  # movies.csv was read

    r = topkrec(
        "train", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "m"), "--epochs", "1", "--val-size", "0",
        "--hist-num", "5", "--device", "cpu", "--embed-size", "8", "--hidden", "8",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    agent = json.loads((tmp_path / "m" / "config.json").read_text())["agent"]
    assert tuple(agent["event_types"]) == NAMES
    # every rating has a non-zero reward, so under the default context_engaged every type is history
    assert agent["history"] == "context_engaged" and tuple(agent["history_events"]) == NAMES
    # and serving takes them as the feedback of a given history
    from topkrec.serve import Recommender

    rec = Recommender.load(tmp_path / "m", device="cpu")
    assert tuple(rec.info()["event_types"]) == NAMES
    items = [str(x) for x in ds.item_raw[:2]]  # type: ignore[index]
    loved = rec.recommend(history=items, history_events=["rating=5", "rating=4.5"], k=3)
    hated = rec.recommend(history=items, history_events=["rating=1", "rating=1"], k=3)
    assert len(loved.items) == 3 and loved.scores != hated.scores


def test_vocabulary_of_mixed_labels_and_rewards_by_hand() -> None:
    """(label, reward) pairs: codes follow the sorted names; a label with one reward stays bare only when no
    label has several (then every pair is a type)."""
    from topkrec.data.dataset import event_vocabulary

    behavior = np.array(["rating", "click", "rating", "rating", "click"])
    reward = np.array([4.5, 1.0, 0.5, 4.5, 1.0])
    names, codes = event_vocabulary(behavior, reward)
    assert names == ("click=1", "rating=0.5", "rating=4.5")
    assert codes.tolist() == [2, 0, 1, 2, 0] and codes.dtype == np.int32
    names, codes = event_vocabulary(np.array(["pv", "buy", "pv"]), np.array([1.0, 5.0, 1.0]))
    assert names == ("buy", "pv") and codes.tolist() == [1, 0, 1]  # one reward per label: the labels


def test_dataset_vocabulary_is_computed_once_per_arrays_and_hands_out_copies() -> None:
    from support.datasets import pv_dataset

    n = 6
    ds = pv_dataset(np.zeros(n, np.int32), np.arange(n, dtype=np.int32) % 3, np.zeros(n, bool), n_items=3)
    names, codes = ds.event_vocabulary()
    codes[:] = 99  # the caller's copy
    again = ds.event_vocabulary()
    assert again[0] == names and (again[1] != 99).all()
    ds.behavior = np.array(["buy"] * n, dtype=object)  # new arrays: computed again
    assert ds.event_vocabulary()[0] == ("buy",)
