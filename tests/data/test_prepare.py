"""prepare: counts checked against an independent pandas / plain-Python computation written here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from topkrec.data.dataset import Dataset
from topkrec.data.prepare import PrepareConfig, SamplingConfig, prepare
from topkrec.data.readers import EventColumns
from topkrec.data.synth import SynthConfig, generate, write_tianchi
from topkrec.io import atomic_dir

REWARD = {"pv": 1.0, "cart": 2.0, "fav": 2.0, "buy": 3.0}


def run(input_path: Path, out: Path, cfg: PrepareConfig) -> Dataset:
    prepared, _ = prepare(input_path, cfg)
    with atomic_dir(out, force=True) as tmp:
        prepared.save(tmp)
    return Dataset.load(out)


def reference(ev: pd.DataFrame, test_size: float = 0.2, gap: int | None = 3600, dedupe: bool = True) -> pd.DataFrame:
    """The DESIGN §1 steps in plain pandas: columns user, item, behavior, time, test, new_session."""
    ev = ev.copy()
    ev["line"] = np.arange(len(ev))
    ev = ev.sort_values(["time", "line"], kind="stable")
    if dedupe:
        ev = ev.drop_duplicates(["user", "item", "behavior"], keep="first")
    ev = ev.sort_values(["user", "time", "line"], kind="stable").reset_index(drop=True)
    n = ev.groupby("user")["item"].transform("size")
    pos = ev.groupby("user").cumcount()
    # The reference rule: the first round((1 - test_size) * n) events in train (Python round, half to even).
    n_test = [k - round((1 - test_size) * k) if k > 3 else 0 for k in n]
    ev["test"] = pos >= n - np.array(n_test)
    same_user = ev.user.eq(ev.user.shift())
    new = ~same_user | (ev.test & ~ev.test.shift(fill_value=False))
    if gap is not None:
        new |= ev.time.diff().fillna(0) > gap
    ev["new_session"] = new
    return ev


def plain_returns(reward: list[float], session: list[int], gamma: float) -> list[float]:
    out = [0.0] * len(reward)
    for i in range(len(reward) - 1, -1, -1):
        nxt = out[i + 1] if i + 1 < len(reward) and session[i + 1] == session[i] else 0.0
        out[i] = reward[i] + gamma * nxt
    return out


@pytest.fixture(scope="module")
def raw_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("raw")
    write_tianchi(generate(SynthConfig(n_users=400, n_items=800, seed=1)), d)
    return d


def read_synth(d: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    ev = pd.read_csv(d / "user_behavior.csv", header=None, names=["user", "item", "behavior", "time"])
    users = pd.read_csv(d / "user.csv", header=None, names=["user", "sex", "age", "pur_power"])
    items = pd.read_csv(d / "item.csv", header=None, names=["item", "category", "shop", "brand"])
    return ev, users, items


def test_tianchi_no_sample_matches_reference(raw_synth: Path, tmp_path: Path) -> None:
    ds = run(raw_synth, tmp_path / "ds", PrepareConfig(format="tianchi", sampling=None))
    ev, users, items = read_synth(raw_synth)
    ref = reference(ev)
    train = ref[~ref.test]
    train_counts = train.item.value_counts()
    s = ds.summary()
    assert s["n_events"] == len(ref)
    assert s["n_train_events"] == len(train) and s["n_test_events"] == int(ref.test.sum())
    assert s["n_users"] == ref.user.nunique() and s["n_items"] == len(train_counts)
    assert s["n_oov_test_events"] == int((ref.test & ~ref.item.isin(train_counts.index)).sum())
    assert s["n_sessions"] == int(ref.new_session.sum())
    assert s["behavior_counts"] == {k: int(v) for k, v in ref.behavior.value_counts().items()}
    written = json.loads((tmp_path / "ds" / "summary.json").read_text())
    assert {k: written[k] for k in s} == s

    # Row by row: same order (user, time, input order), same split, same raw ids through the maps.
    assert ds.user_raw is not None and ds.item_raw is not None
    raw_user = ds.user_raw[ds.user].astype(np.int64)
    assert np.array_equal(raw_user, ref.user.to_numpy())
    assert np.array_equal(ds.ts, ref.time.to_numpy())
    assert np.array_equal(ds.is_test, ref.test.to_numpy())
    known = ds.item != ds.oov_index
    assert np.array_equal(ds.item_raw[ds.item[known]].astype(np.int64), ref.item.to_numpy()[known])
    assert np.array_equal(ds.behavior.astype(str), ref.behavior.to_numpy().astype(str))
    assert np.allclose(ds.reward, ref.behavior.map(REWARD).to_numpy())
    # Item ids by descending train frequency.
    freq = train_counts.reindex(ds.item_raw.astype(np.int64)).to_numpy()
    assert (np.diff(freq) <= 0).all()
    # Returns against a plain loop.
    expected = plain_returns(ds.reward.tolist(), ds.session.tolist(), 0.99)
    assert np.allclose(ds.returns, expected, rtol=1e-5)
    # Sessions never straddle the split and are numbered in file order.
    assert (np.diff(ds.session) >= 0).all()
    assert not (np.diff(ds.session) == 0)[np.diff(ds.is_test.astype(int)) != 0].any()

    # Features: age buckets and 1-based codes, joined by raw id.
    urow = users.set_index("user").loc[ds.user_raw.astype(np.int64)]
    bucket = np.select([urow.age < 30, urow.age < 40, urow.age < 50], [1, 2, 3], 4)
    assert np.array_equal(ds.user_features["age"], bucket)
    sex_codes = pd.Series(ds.user_features["sex"]).groupby(urow.sex.to_numpy()).nunique()
    assert (sex_codes == 1).all() and ds.user_features["sex"].min() >= 1
    irow = items.set_index("item").loc[ds.item_raw.astype(np.int64)]
    for col in ("category", "shop", "brand"):
        codes = ds.item_features[col]
        assert codes.min() == 1 and codes.max() == irow[col].nunique()
        assert (pd.Series(codes).groupby(irow[col].to_numpy()).nunique() == 1).all()
    assert ds.meta["feature_cardinalities"]["category"] == irow.category.nunique() + 1


def test_tianchi_sampling_by_journey_length(raw_synth: Path, tmp_path: Path) -> None:
    ev, _, _ = read_synth(raw_synth)
    n = reference(ev).groupby("user").size()
    short_pool = set(n[(n > 5) & (n <= 50)].index)
    long_pool = set(n[(n > 50) & (n <= 200)].index)
    cfg = PrepareConfig(format="tianchi", sampling=SamplingConfig(short=100, long=40, strict=True), seed=3)
    ds = run(raw_synth, tmp_path / "a", cfg)
    assert ds.user_raw is not None
    kept = set(ds.user_raw.astype(np.int64).tolist())
    assert len(kept & short_pool) == 100 and len(kept & long_pool) == 40 and len(kept) == 140
    again = run(raw_synth, tmp_path / "b", cfg)
    assert again.user_raw is not None and np.array_equal(again.user_raw, ds.user_raw)
    other = run(raw_synth, tmp_path / "c", PrepareConfig(format="tianchi", sampling=cfg.sampling, seed=4))
    assert other.user_raw is not None and not np.array_equal(other.user_raw, ds.user_raw)
    # Defaults (60 000 / 20 000) on a small log keep every user of both bands, and say so.
    prepared, warnings = prepare(raw_synth, PrepareConfig(format="tianchi", sampling=SamplingConfig()))
    assert prepared.summary["n_users"] == len(short_pool) + len(long_pool)
    assert len(warnings) == 2 and "--sample-short" in warnings[0] and "--no-sample" in warnings[0]
    assert prepared.meta["sampling"]["short"] == {
        "band": [5, 50],
        "asked": 60000,
        "available": len(short_pool),
        "kept": len(short_pool),
    }


def test_session_one_and_options(raw_synth: Path, tmp_path: Path) -> None:
    ev, _, _ = read_synth(raw_synth)
    cfg = PrepareConfig(format="tianchi", session="one", test_size=0.5, dedupe=False, reward=(*REWARD.items(),))
    ds = run(raw_synth, tmp_path / "one", cfg)
    ref = reference(ev, test_size=0.5, gap=None, dedupe=False)
    assert ds.n_events == len(ev)
    assert ds.summary()["n_sessions"] == int(ref.new_session.sum())
    assert int(ds.is_test.sum()) == int(ref.test.sum())
    cfg2 = PrepareConfig(format="tianchi", reward=(("pv", 0.5), ("cart", 1), ("fav", 1), ("buy", 5)), gamma=0.5)
    ds2 = run(raw_synth, tmp_path / "rw", cfg2)
    assert np.allclose(ds2.reward, pd.Series(ds2.behavior).map({"pv": 0.5, "cart": 1, "fav": 1, "buy": 5}))
    assert np.allclose(ds2.returns, plain_returns(ds2.reward.tolist(), ds2.session.tolist(), 0.5), rtol=1e-5)


def test_taobao4k_counts(taobao4k: Path, tmp_path: Path) -> None:
    ds = run(taobao4k, tmp_path / "t", PrepareConfig(format="taobao"))
    ev = pd.read_csv(taobao4k, header=None, names=["user", "item", "category", "behavior", "time"])
    ref = reference(ev)
    s = ds.summary()
    assert s["n_events"] == len(ref) and s["n_users"] == ev.user.nunique()
    assert s["n_test_events"] == int(ref.test.sum())
    assert s["n_items"] == ref[~ref.test].item.nunique()
    assert s["n_sessions"] == int(ref.new_session.sum())
    assert ds.item_raw is not None
    cats = ev.drop_duplicates("item").set_index("item").category.loc[ds.item_raw.astype(np.int64)]
    assert (pd.Series(ds.item_features["category"]).groupby(cats.to_numpy()).nunique() == 1).all()
    assert set(ds.item_features) == {"category"} and not ds.user_features


def test_taobao84k_truncated_last_line(taobao84k: Path, tmp_path: Path) -> None:
    from topkrec.errors import DataError

    with pytest.raises(DataError, match=r"line 84476: expected 5 fields .* found 4.*--skip-bad-rows"):
        prepare(taobao84k, PrepareConfig(format="taobao"))
    prepared, warnings = prepare(taobao84k, PrepareConfig(format="taobao", skip_bad_rows=True))
    assert prepared.summary["n_bad_rows_skipped"] == 1 and "line 84476" in warnings[0]
    good = pd.read_csv(taobao84k, header=None, names=["user", "item", "category", "behavior", "time"]).dropna()
    assert prepared.summary["n_raw_events"] == len(good) == 84475
    assert prepared.summary["n_events"] == len(reference(good.astype({"time": np.int64})))


def test_movielens_rating_reward(movielens_small: Path, tmp_path: Path) -> None:
    ds = run(movielens_small, tmp_path / "ml", PrepareConfig(format="movielens"))
    ratings = pd.read_csv(movielens_small / "ratings.csv")
    assert ds.n_events == len(ratings) and ds.n_users == ratings.userId.nunique()
    assert set(ds.behavior.astype(str)) == {"rating"}
    assert ds.meta["reward_source"] == "column"
    assert ds.user_raw is not None
    r = ratings.rename(columns={"userId": "user", "movieId": "item", "timestamp": "time"})
    r["behavior"] = "rating"
    ref = reference(r)
    assert np.allclose(ds.reward, ref.rating.to_numpy())
    assert int(ds.is_test.sum()) == int(ref.test.sum())
    assert "genre" in ds.item_features and ds.item_features["genre"].min() >= 1


def test_events_csv_with_string_ids_and_propensity(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 3000
    df = pd.DataFrame(
        {
            "uid": [f"u{i}" for i in rng.integers(0, 60, n)],
            "sku": [f"sku-{i}" for i in rng.integers(0, 200, n)],
            "when": rng.integers(1_600_000_000, 1_600_500_000, n),
            "click": rng.integers(0, 2, n).astype(float),
            "pscore": rng.uniform(0.01, 1.0, n),
            "extra": "x",
        }
    )
    path = tmp_path / "log.csv"
    df.to_csv(path, index=False)
    cols = EventColumns(user="uid", item="sku", time="when", reward="click", propensity="pscore")
    ds = run(path, tmp_path / "ds", PrepareConfig(format="events", columns=cols, dedupe=False))
    assert ds.propensity is not None and ds.n_events == n
    assert "propensity" in pl.read_parquet(tmp_path / "ds" / "events.parquet").columns
    ref = df.assign(line=np.arange(n)).sort_values(["uid", "when", "line"], kind="stable")
    assert np.allclose(ds.propensity, ref.pscore.to_numpy())
    assert np.allclose(ds.reward, ref.click.to_numpy())
    assert ds.user_raw is not None and list(ds.user_raw[ds.user]) == ref.uid.tolist()
    # A Parquet log with a datetime column and a behaviour column works the same way.
    pq = tmp_path / "log.parquet"
    pl.DataFrame(
        {
            "u": [1, 1, 2, 2, 2, 2, 2],
            "i": [5, 6, 5, 7, 8, 9, 5],
            "kind": ["pv", "buy", "pv", "pv", "cart", "pv", "pv"],
            "t": pl.datetime_range(pl.datetime(2024, 1, 1), pl.datetime(2024, 1, 1, 6), "1h", eager=True),
        }
    ).write_parquet(pq)
    cols2 = EventColumns(user="u", item="i", time="t", event="kind")
    ds2 = run(pq, tmp_path / "ds2", PrepareConfig(format="events", columns=cols2))
    assert ds2.propensity is None
    assert ds2.n_events == 6  # (2, 5, pv) appears twice: the later one is a duplicate
    assert ds2.ts[0] == 1704067200 and ds2.n_users == 2


def test_events_csv_quoted_fields_and_datetime_strings(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(
        "uid,sku,when,kind,note\n"
        'u1,a,2024-01-01 10:00:00,pv,"x, y"\n'
        "u1,b,2024-01-01 11:30:00,buy,\n"
        "u2,a,2024-01-02 00:00:00,cart,z\n"
    )
    cols = EventColumns(user="uid", item="sku", time="when", event="kind")
    ds = run(path, tmp_path / "ds", PrepareConfig(format="events", columns=cols))
    assert ds.ts.tolist() == [1704103200, 1704108600, 1704153600]
    assert ds.session.tolist() == [0, 1, 2]  # 90 minutes apart: a new session
    assert ds.reward.tolist() == [1.0, 3.0, 2.0]


def test_cli_synth_then_prepare_default_out_of_the_box(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "ds"
    py = [sys.executable, "-m", "topkrec"]
    r = subprocess.run([*py, "synth", "--out", str(raw), "--users", "300", "--items", "600"], capture_output=True)
    assert r.returncode == 0
    r = subprocess.run(
        [*py, "prepare", "--format", "tianchi", "--input", str(raw), "--out", str(out)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "users" in r.stdout and "sessions" in r.stdout
    assert "warning: sampling: only" in r.stderr  # defaults larger than the log: said, not silent
    summary = json.loads((out / "summary.json").read_text())
    keys = ["n_users", "n_items", "n_events", "n_train_events", "n_test_events", "n_oov_test_events", "n_sessions"]
    assert all(isinstance(summary[k], int) for k in keys)
    assert set(summary["behavior_counts"]) == {"pv", "cart", "fav", "buy"}
    assert {p.name for p in out.iterdir()} == {
        "events.parquet",
        "users.parquet",
        "items.parquet",
        "maps",
        "meta.json",
        "summary.json",
    }
    meta = json.loads((out / "meta.json").read_text())
    assert set(meta["input_sha256"]) == {"user_behavior.csv", "user.csv", "item.csv"}
    assert meta["pad_index"] == meta["oov_index"] == summary["n_items"]
    r = subprocess.run(
        [*py, "prepare", "--format", "tianchi", "--input", str(raw), "--out", str(out), "--no-sample", "--json"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "--force" in r.stderr
