"""Reading logged-bandit files (CSV or Parquet) for ``topkrec ope``.

One row per logged decision: the action taken, the reward observed and the logging policy's
propensity of that action. Open Bandit Dataset CSVs (item_id, position, click, propensity_score) work
as they are: each (position, item) row is one decision with its own recorded propensity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from topkrec.errors import DataError

__all__ = ["LoggedBandit", "direct_method_uniform", "read_logged_bandit", "read_table"]


@dataclass(frozen=True)
class LoggedBandit:
    """The columns of a logged-bandit file that the estimators need (all (n,) arrays)."""

    action: np.ndarray  # (n,) raw action ids (any dtype)
    reward: np.ndarray  # (n,) float64
    propensity: np.ndarray  # (n,) float64, logging policy's probability of the logged action
    target_prob: np.ndarray | None  # (n,) float64, target policy's probability of it, when given as a column
    columns: tuple[str, ...]  # every column of the file, for error messages and --model features

    @property
    def n(self) -> int:
        return int(self.reward.shape[0])

    @property
    def n_distinct_actions(self) -> int:
        return int(np.unique(self.action).shape[0])


def read_table(path: Path):  # -> polars.DataFrame (polars imported lazily)
    """Read a .csv or .parquet file into a Polars DataFrame, with one-line errors."""
    import polars as pl

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pl.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt"):
            return pl.read_csv(path, separator="\t" if suffix == ".tsv" else ",", infer_schema_length=10_000)
    except Exception as e:  # polars raises several error kinds for unreadable files
        raise DataError(f"cannot read {path}: {e}") from e
    raise DataError(f"{path}: unknown file type {suffix!r}; use .csv or .parquet")


def _numeric(df, col: str, path: Path) -> np.ndarray:  # df: polars.DataFrame
    import polars as pl

    try:
        values = df[col].cast(pl.Float64, strict=True).to_numpy()
    except Exception as e:
        raise DataError(f"{path}: column {col!r} is not numeric ({df[col].dtype})") from e
    return np.asarray(values, dtype=np.float64)


def read_logged_bandit(
    path: Path,
    action_col: str,
    reward_col: str,
    propensity_col: str,
    target_prob_col: str | None = None,
) -> LoggedBandit:
    """Read the named columns; missing columns or non-numeric values raise ``DataError``.

    Value checks (propensities in (0, 1], no NaN) are done by ``topkrec.ope.check_inputs``.
    """
    df = read_table(path)
    wanted = [action_col, reward_col, propensity_col] + ([target_prob_col] if target_prob_col else [])
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        shown = ", ".join(df.columns[:20]) + (" …" if len(df.columns) > 20 else "")
        raise DataError(f"{path} has no column(s) {', '.join(map(repr, missing))}; its columns are: {shown}")
    if df[action_col].null_count():
        raise DataError(f"{path}: column {action_col!r} has {df[action_col].null_count()} missing values")
    return LoggedBandit(
        action=df[action_col].to_numpy(),
        reward=_numeric(df, reward_col, path),
        propensity=_numeric(df, propensity_col, path),
        target_prob=_numeric(df, target_prob_col, path) if target_prob_col else None,
        columns=tuple(df.columns),
    )


def direct_method_uniform(action: np.ndarray, reward: np.ndarray, n_actions: int) -> tuple[np.ndarray, np.ndarray]:
    """A context-free reward model for DR under the uniform target: r̂(a) = mean logged reward of a.

    Returns (r̂ of each logged action, v̂ = (1/N) Σ_a r̂(a) per row). Actions of the N that never
    appear in the log get the overall mean reward. The model is fitted on the same log (no
    cross-fitting), which is fine for a per-action mean with many rows per action.
    """
    codes, inverse = np.unique(action, return_inverse=True)
    sums = np.bincount(inverse, weights=reward, minlength=codes.shape[0])
    counts = np.bincount(inverse, minlength=codes.shape[0])
    means = sums / counts
    unseen = max(n_actions - codes.shape[0], 0)
    value = (means.sum() + unseen * float(reward.mean())) / max(n_actions, codes.shape[0])
    return means[inverse], np.full(reward.shape, value)
