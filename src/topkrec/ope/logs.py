"""Reading logged-bandit files (CSV or Parquet) for ``topkrec ope``.

One row per logged decision: the action taken, the reward observed and the logging policy's
propensity of that action; optionally its position in a slate, the slate's id and context features.
Open Bandit Dataset CSVs (item_id, position, click, propensity_score, user features) work as they are:
each (position, item) row is one decision with its own recorded propensity.

A target policy can also be given as a per-row distribution over actions (and positions) in a ``.npy``
file (``read_target_distribution``): shape (n, n_actions) or (n, n_actions, n_positions), row i for
row i of the log, the Open Bandit Pipeline's ``action_dist`` layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from topkrec.errors import DataError

__all__ = [
    "MAX_CATEGORIES",
    "LoggedBandit",
    "TargetDistribution",
    "encode_context",
    "position_slots",
    "read_logged_bandit",
    "read_table",
    "read_target_distribution",
]

MAX_CATEGORIES = 50
"""A text context column is one-hot encoded over its most frequent values, at most this many."""


@dataclass(frozen=True)
class LoggedBandit:
    """The columns of a logged-bandit file that the estimators need (all (n,) arrays)."""

    action: np.ndarray  # (n,) raw action ids (any dtype)
    reward: np.ndarray  # (n,) float64
    propensity: np.ndarray  # (n,) float64, logging policy's probability of the logged action
    target_prob: np.ndarray | None  # (n,) float64, target policy's probability of it, when given as a column
    columns: tuple[str, ...]  # every column of the file, for error messages and --model features
    position: np.ndarray | None = None  # (n,) raw positions, when a position column is named
    slate: np.ndarray | None = None  # (n,) raw slate ids, when a slate column is named
    context: np.ndarray | None = None  # (n, d) float64 encoded context features, when context columns are named
    context_names: tuple[str, ...] = ()  # name of each of the d context features

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


def encode_context(df, cols: list[str], path: Path) -> tuple[np.ndarray, tuple[str, ...]]:  # df: polars.DataFrame
    """(n, d) float64 features of the named columns: numeric columns as they are (NaN refused), text
    columns one-hot over their ``MAX_CATEGORIES`` most frequent values (rarer values: all zeros)."""
    import polars as pl

    blocks: list[np.ndarray] = []
    names: list[str] = []
    for col in cols:
        series = df[col]
        if series.dtype.is_numeric() or series.dtype == pl.Boolean:
            values = _numeric(df, col, path)
            bad = ~np.isfinite(values)
            if bad.any():
                raise DataError(
                    f"{path}: context column {col!r} has {int(bad.sum())} missing or non-finite values "
                    f"(first at row {int(np.flatnonzero(bad)[0])})"
                )
            blocks.append(values[:, None])
            names.append(col)
            continue
        text = np.array([str(v) for v in series.to_list()], dtype=object)
        levels, counts = np.unique(text.astype(str), return_counts=True)
        top = levels[np.argsort(-counts, kind="stable")[:MAX_CATEGORIES]]
        blocks.append((text.astype(str)[:, None] == top[None, :]).astype(np.float64))
        names.extend(f"{col}={v}" for v in top)
    n = df.height
    return (np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0))), tuple(names)


def read_logged_bandit(
    path: Path,
    action_col: str,
    reward_col: str,
    propensity_col: str,
    target_prob_col: str | None = None,
    position_col: str | None = None,
    slate_col: str | None = None,
    context_cols: list[str] | None = None,
) -> LoggedBandit:
    """Read the named columns; missing columns, non-numeric values or a log without rows raise ``DataError``.

    Value checks (propensities in (0, 1], no NaN) are done by ``topkrec.ope.check_inputs``.
    """
    df = read_table(path)
    context_cols = list(context_cols or [])
    optional = [c for c in (target_prob_col, position_col, slate_col) if c]
    wanted = [action_col, reward_col, propensity_col, *optional, *context_cols]
    missing = [c for c in dict.fromkeys(wanted) if c not in df.columns]
    if missing:
        shown = ", ".join(df.columns[:20]) + (" …" if len(df.columns) > 20 else "")
        raise DataError(f"{path} has no column(s) {', '.join(map(repr, missing))}; its columns are: {shown}")
    if df.height == 0:
        raise DataError(f"{path} has a header but no rows: there is nothing to estimate from")
    for col in (action_col, position_col, slate_col):
        if col is not None and df[col].null_count():
            raise DataError(f"{path}: column {col!r} has {df[col].null_count()} missing values")
    context, names = encode_context(df, context_cols, path) if context_cols else (None, ())
    return LoggedBandit(
        action=df[action_col].to_numpy(),
        reward=_numeric(df, reward_col, path),
        propensity=_numeric(df, propensity_col, path),
        target_prob=_numeric(df, target_prob_col, path) if target_prob_col else None,
        columns=tuple(df.columns),
        position=df[position_col].to_numpy() if position_col else None,
        slate=df[slate_col].to_numpy() if slate_col else None,
        context=context,
        context_names=names,
    )


def position_slots(position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(slot (n,) int64, values): the k-th smallest distinct position value is slot k − 1."""
    values, slot = np.unique(np.asarray(position), return_inverse=True)
    return slot.reshape(-1).astype(np.int64), values


@dataclass(frozen=True)
class TargetDistribution:
    """A target policy as a per-row distribution over integer actions (and position slots)."""

    probs: np.ndarray  # (n, n_actions, n_slots) float64; n_slots = 1 without positions
    path: Path

    @property
    def n_actions(self) -> int:
        return int(self.probs.shape[1])

    def at(self, rows: np.ndarray, slot: np.ndarray | None) -> np.ndarray:
        """(m, n_actions) distribution of each row at the row's own slot."""
        s = np.zeros(rows.shape[0], dtype=np.int64) if slot is None else slot[rows]
        return self.probs[rows, :, s]


def read_target_distribution(
    path: Path, n_rows: int, action: np.ndarray, slot: np.ndarray | None, n_slots: int
) -> tuple[TargetDistribution, np.ndarray]:
    """Read a .npy target distribution and check it against the log; also return the action codes (n,).

    Actions must be integers in [0, n_actions) (they index the file's second axis). With positions the
    file's third axis has one entry per distinct position of the log (``position_slots``); without, the
    file is (n, n_actions) or (n, n_actions, 1). Each row's distribution at its slot must sum to 1.
    """
    path = Path(path)
    if path.suffix.lower() != ".npy":
        raise DataError(f"{path}: a target distribution is a .npy array (n, n_actions[, n_positions])")
    if not path.exists():
        raise DataError(f"{path} not found")
    try:
        probs = np.load(path, allow_pickle=False)
    except Exception as e:  # a corrupt or pickled file
        raise DataError(f"cannot read {path}: {e}") from e
    if probs.ndim == 2:
        probs = probs[:, :, None]
    if probs.ndim != 3 or probs.shape[0] != n_rows:
        raise DataError(
            f"{path} has shape {probs.shape}; expected ({n_rows}, n_actions) or ({n_rows}, n_actions, n_positions): "
            "one distribution per row of the log"
        )
    if not np.issubdtype(probs.dtype, np.number):
        raise DataError(f"{path} holds {probs.dtype} values, not probabilities")
    probs = probs.astype(np.float64, copy=False)
    if probs.shape[2] != n_slots:
        raise DataError(
            f"{path} has {probs.shape[2]} position slot(s) but the log has {n_slots} distinct position(s)"
            + ("" if slot is not None else "; pass --position-col")
        )
    if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
        raise DataError(f"{path}: probabilities must be finite and in [0, 1]")
    try:
        codes = np.asarray(action).astype(np.int64)
        exact = np.array_equal(codes, np.asarray(action).astype(np.float64))
    except (TypeError, ValueError):
        exact = False
    if not exact or codes.min() < 0 or codes.max() >= probs.shape[1]:
        raise DataError(
            f"with a target distribution, actions must be integers in [0, {probs.shape[1]}) that index {path}'s "
            "second axis"
        )
    rows = np.arange(n_rows)
    totals = probs[rows, :, slot if slot is not None else 0].sum(axis=1)
    bad = np.abs(totals - 1.0) > 1e-6
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: the target distribution of {int(bad.sum())} rows does not sum to 1 over actions at the row's "
            f"position (first at row {row}: {totals[row]:.6g})"
        )
    return TargetDistribution(probs=probs, path=path), codes
