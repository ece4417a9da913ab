"""``prepare --format events --step-col``: the slate step goes into the dataset and returns discount once per step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl

from topkrec.data.dataset import Dataset, discounted_returns

# Two users. u1: a slate of 3 at step 10 (one pv), a slate of 2 at step 11 (one buy), a lone row at step 14
# (steps 12, 13 left no row). u2: rows written out of time order in the file (prepare sorts by time).
ROWS = [
    ("u1", "a", "skip", 100, 10),
    ("u1", "b", "pv", 100, 10),
    ("u1", "c", "skip", 100, 10),
    ("u1", "a", "buy", 160, 11),
    ("u1", "d", "skip", 160, 11),
    ("u1", "b", "cart", 340, 14),
    ("u2", "c", "pv", 500, 3),
    ("u2", "a", "skip", 400, 2),
]


def write(path: Path, rows: list[tuple]) -> Path:
    pl.DataFrame(rows, schema=["user", "item", "event", "ts", "slate"], orient="row").write_csv(path)
    return path


def prepare(csv: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "topkrec", "prepare", "--format", "events", "--input", str(csv), "--out", str(out),
         "--event-col", "event", "--reward", "pv=1,cart=2,fav=2,buy=3,skip=0", "--no-dedupe", "--test-size", "0",
         "--gamma", "0.5", *extra],
        capture_output=True, text=True,
    )  # fmt: skip


def test_step_col_keeps_steps_and_discounts_per_step(tmp_path: Path) -> None:
    csv = write(tmp_path / "log.csv", ROWS)
    r = prepare(csv, tmp_path / "d", "--step-col", "slate")
    assert r.returncode == 0, r.stderr
    ds = Dataset.load(tmp_path / "d")
    assert ds.step is not None and ds.meta["has_step"] is True
    # counted from each user's first step, gaps kept; u2's rows in time order
    np.testing.assert_array_equal(ds.step, [0, 0, 0, 1, 1, 4, 0, 1])
    # u1: step totals 1 (step 0), 3 (step 1), 2 (step 4) → G(4) = 2, G(1) = 3 + 0.5³·2 = 3.25
    np.testing.assert_allclose(ds.returns[:6], [1.625, 2.625, 1.625, 3.25, 0.25, 2.0])
    np.testing.assert_allclose(ds.returns[6:], [0.5, 1.0])
    np.testing.assert_allclose(ds.returns, discounted_returns(ds.reward, ds.session, 0.5, step=ds.step))
    # without --step-col every row is its own step: the same log discounts by row
    r = prepare(csv, tmp_path / "rows")
    assert r.returncode == 0, r.stderr
    rows = Dataset.load(tmp_path / "rows")
    assert rows.step is None and rows.meta["has_step"] is False
    np.testing.assert_allclose(rows.returns, discounted_returns(rows.reward, rows.session, 0.5))
    assert not np.allclose(rows.returns, ds.returns)


def test_step_col_errors_name_the_line(tmp_path: Path) -> None:
    bad = [*ROWS[:3], ("u1", "a", "buy", 160, 9)]  # a later slate with a smaller step
    r = prepare(write(tmp_path / "back.csv", bad), tmp_path / "d1", "--step-col", "slate")
    assert r.returncode == 2 and "line 5" in r.stderr and "non-decreasing" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    not_int = pl.DataFrame(ROWS, schema=["user", "item", "event", "ts", "slate"], orient="row")
    not_int = not_int.with_columns(pl.col("slate").cast(pl.String).replace("11", "eleven"))
    not_int.write_csv(tmp_path / "nan.csv")
    r = prepare(tmp_path / "nan.csv", tmp_path / "d2", "--step-col", "slate")
    assert r.returncode == 2 and "'slate'" in r.stderr and "eleven" in r.stderr, r.stderr
    r = prepare(write(tmp_path / "ok.csv", ROWS), tmp_path / "d3", "--step-col", "nope")
    assert r.returncode == 2 and "nope" in r.stderr, r.stderr


def test_train_gamma_override_keeps_the_per_step_discount(tmp_path: Path) -> None:
    from topkrec.data.dataset import Dataset
    from topkrec.train.build import with_gamma

    r = prepare(write(tmp_path / "log.csv", ROWS), tmp_path / "d", "--step-col", "slate")
    assert r.returncode == 0, r.stderr
    ds = with_gamma(Dataset.load(tmp_path / "d"), 0.9)  # `topkrec train --gamma 0.9` on a γ = 0.5 dataset
    np.testing.assert_allclose(ds.returns, discounted_returns(ds.reward, ds.session, 0.9, step=ds.step))
    assert not np.allclose(ds.returns, discounted_returns(ds.reward, ds.session, 0.9))
