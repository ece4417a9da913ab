"""The dataset-directory contract: save/load round trip, optional propensity, discounted returns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from topkrec.data.dataset import EVENT_COLUMNS, Dataset, discounted_returns
from topkrec.errors import ArtifactError
from topkrec.io import atomic_dir


def plain_returns(reward: np.ndarray, session: np.ndarray, gamma: float) -> np.ndarray:
    out = np.zeros(reward.size)
    for i in range(reward.size - 1, -1, -1):
        nxt = out[i + 1] if i + 1 < reward.size and session[i + 1] == session[i] else 0.0
        out[i] = reward[i] + gamma * nxt
    return out


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.99, 1.0])
def test_discounted_returns_match_a_plain_loop(gamma: float) -> None:
    rng = np.random.default_rng(0)
    session = np.sort(rng.integers(0, 400, size=4000))
    reward = rng.integers(0, 4, size=4000).astype(np.float32)
    got = discounted_returns(reward, session, gamma)
    assert got.dtype == np.float32
    assert np.allclose(got, plain_returns(reward, session, gamma), rtol=1e-5, atol=1e-5)


def test_discounted_returns_long_session_and_edges() -> None:
    reward = np.ones(3000)
    got = discounted_returns(reward, np.zeros(3000, dtype=np.int64), 0.99)
    closed = (1 - 0.99 ** np.arange(3000, 0, -1)) / (1 - 0.99)  # geometric series to the session end
    assert np.allclose(got, closed, rtol=1e-5)
    assert discounted_returns(np.zeros(0), np.zeros(0), 0.9).shape == (0,)
    single = discounted_returns(np.array([2.0, 3.0]), np.array([0, 1]), 0.9)  # one-event sessions
    assert np.allclose(single, [2.0, 3.0])


def make_dataset(propensity: bool) -> Dataset:
    rng = np.random.default_rng(1)
    n, n_users, n_items = 50, 4, 7
    user = np.sort(rng.integers(0, n_users, n)).astype(np.int32)
    session = np.cumsum(np.r_[True, user[1:] != user[:-1]]).astype(np.int32) - 1
    reward = rng.integers(1, 4, n).astype(np.float32)
    return Dataset(
        user=user,
        item=rng.integers(0, n_items + 1, n).astype(np.int32),
        behavior=rng.choice(np.array(["pv", "buy"], dtype=object), n),
        reward=reward,
        ts=np.arange(n, dtype=np.int64) + 1_500_000_000,
        session=session,
        is_test=rng.random(n) < 0.2,
        returns=discounted_returns(reward, session, 0.9),
        n_users=n_users,
        n_items=n_items,
        user_features={"sex": rng.integers(1, 3, n_users).astype(np.int32)},
        item_features={"category": rng.integers(0, 5, n_items).astype(np.int32)},
        user_raw=np.array([f"u{i}" for i in range(n_users)], dtype=object),
        item_raw=np.array([str(100 + i) for i in range(n_items)], dtype=object),
        meta={"gamma": 0.9, "note": "test"},
        propensity=rng.uniform(0.1, 1.0, n) if propensity else None,
    )


@pytest.mark.parametrize("propensity", [False, True])
def test_save_load_round_trip(tmp_path: Path, propensity: bool) -> None:
    ds = make_dataset(propensity)
    with atomic_dir(tmp_path / "ds") as tmp:
        ds.save(tmp)
    back = Dataset.load(tmp_path / "ds")
    for name in ("user", "item", "reward", "ts", "session", "is_test", "returns"):
        assert np.array_equal(getattr(back, name), getattr(ds, name)), name
    assert list(back.behavior) == list(ds.behavior)
    assert (back.n_users, back.n_items, back.pad_index, back.oov_index) == (4, 7, 7, 7)
    assert np.array_equal(back.user_features["sex"], ds.user_features["sex"])
    assert np.array_equal(back.item_features["category"], ds.item_features["category"])
    assert list(back.user_raw) == list(ds.user_raw) and list(back.item_raw) == list(ds.item_raw)  # type: ignore[arg-type]
    assert back.meta["note"] == "test" and back.meta["feature_cardinalities"] == ds.feature_cardinalities()
    assert back.summary() == ds.summary()
    columns = pl.read_parquet(tmp_path / "ds" / "events.parquet").columns
    assert columns[: len(EVENT_COLUMNS)] == list(EVENT_COLUMNS)
    if propensity:
        assert ds.propensity is not None and back.propensity is not None
        assert np.allclose(back.propensity, ds.propensity) and columns[-1] == "propensity"
    else:
        assert back.propensity is None and "propensity" not in columns


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not a dataset directory"):
        Dataset.load(tmp_path)
    ds = make_dataset(False)
    with atomic_dir(tmp_path / "ds") as tmp:
        ds.save(tmp)
    (tmp_path / "ds" / "events.parquet").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="re-run `topkrec prepare`"):
        Dataset.load(tmp_path / "ds")


def plain_step_returns(reward: np.ndarray, session: np.ndarray, step: np.ndarray, gamma: float) -> np.ndarray:
    """R = own reward + Σ over later steps s' of the same session of γ^(s' − s) · (that step's total reward)."""
    out = np.zeros(reward.size)
    for i in range(reward.size):
        later = (session == session[i]) & (step > step[i])
        out[i] = reward[i] + np.sum(gamma ** (step[later] - step[i]) * reward[later])
    return out


def test_step_returns_discount_once_per_step_hand_values() -> None:
    # one session, slates at steps 0 (3 rows), 1 (2 rows) and 3 (step 2 left no row): γ = 0.5
    reward = np.array([0.0, 1.0, 0.0, 2.0, 0.0, 3.0])
    step = np.array([0, 0, 0, 1, 1, 3])
    got = discounted_returns(reward, np.zeros(6, dtype=np.int64), 0.5, step=step)
    # step totals 1, 2, 3; G(3) = 3, G(1) = 2 + 0.5² · 3 = 2.75; rows keep their own reward, not their slate-mates'
    np.testing.assert_allclose(got, [1.375, 2.375, 1.375, 2.75, 0.75, 3.0])
    # per row (the old rule) the same log would discount by slate position
    per_row = discounted_returns(reward, np.zeros(6, dtype=np.int64), 0.5)
    assert not np.allclose(per_row, got)


@pytest.mark.parametrize("gamma", [0.0, 0.9, 1.0])
def test_step_returns_match_a_plain_loop(gamma: float) -> None:
    rng = np.random.default_rng(3)
    session = np.sort(rng.integers(0, 60, size=1500))
    step = np.zeros(session.size, dtype=np.int64)
    for s in np.unique(session):  # non-decreasing steps with repeats (slates) and gaps within each session
        idx = np.flatnonzero(session == s)
        step[idx] = np.cumsum(rng.choice([0, 0, 1, 2], size=idx.size))
    reward = rng.integers(0, 4, size=session.size).astype(np.float64)
    got = discounted_returns(reward, session, gamma, step=step)
    np.testing.assert_allclose(got, plain_step_returns(reward, session, step, gamma), rtol=1e-5, atol=1e-5)
    # every row its own step (step = position) is the per-row rule
    position = np.arange(session.size)
    per_row = plain_returns(reward, session, gamma)
    np.testing.assert_allclose(discounted_returns(reward, session, gamma, step=position), per_row, rtol=1e-5, atol=1e-5)


def test_step_column_round_trips(tmp_path: Path) -> None:
    ds = make_dataset(propensity=False)
    ds.step = np.arange(ds.n_events, dtype=np.int32) // 3
    with atomic_dir(tmp_path / "d") as tmp:
        ds.save(tmp)
    back = Dataset.load(tmp_path / "d")
    assert back.step is not None and back.step.dtype == np.int32
    np.testing.assert_array_equal(back.step, ds.step)
    assert Dataset.load(_saved(tmp_path / "e", make_dataset(propensity=False))).step is None


def _saved(d: Path, ds: Dataset) -> Path:
    with atomic_dir(d) as tmp:
        ds.save(tmp)
    return d
