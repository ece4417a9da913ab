"""The dataset directory: the contract between ``prepare`` and every later stage (DESIGN §1).

Layout of a dataset directory::

    events.parquet   one row per event, sorted by (user, ts, original order); columns
                       user     int32   user index, 0..n_users-1
                       item     int32   item index, 0..n_items-1; n_items (OOV) for test items unseen in train
                       behavior str     raw behaviour label (pv/cart/fav/buy, or e.g. "rating" for MovieLens)
                       reward   float32 reward from the behaviour→reward map (or the rating)
                       ts       int64   unix seconds
                       session  int32   global session index, non-decreasing in file order, one per (user, session)
                       split    str     "train" or "test"
                       return   float32 discounted in-session return R_t with meta["gamma"]
                       propensity float64  OPTIONAL: the logging policy's probability of the logged item,
                                when the raw log had one (``prepare --format events --propensity-col``)
                       step     int32   OPTIONAL: the slate step of the row, counted from the user's first
                                step (0); non-decreasing within a user, rows of one slate share it, gaps
                                kept (a step that left no row still counts in the discount). Absent:
                                every row is its own step. (``prepare --format events --step-col``)
    users.parquet    user (int32) + user feature columns (int32 codes, 0 = unknown), one row per user index
    items.parquet    item (int32) + item feature columns (int32 codes, 0 = unknown), one row per item index
    maps/user_map.parquet  index (int32), raw (str)   raw id of each user index
    maps/item_map.parquet  index (int32), raw (str)   raw id of each item index (train items only)
    meta.json        counts, pad/OOV index, feature cardinalities, the config used, format version,
                     input hashes
    summary.json     DESIGN §9 keys (n_users, n_items, n_events, …)

Item indices are ordered by descending train frequency (0 = most frequent). The pad index and the OOV
index are the same row, ``n_items``: item embedding tables have ``n_items + 1`` rows and the last one is
zeros. Feature codes are 1-based with 0 meaning unknown, so a feature table has ``cardinality`` rows
where ``cardinality`` (in meta) already counts the 0 row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from topkrec.errors import ArtifactError
from topkrec.io import read_json, write_json

if TYPE_CHECKING:
    import polars as pl

FORMAT_VERSION = 1
EVENT_COLUMNS = ("user", "item", "behavior", "reward", "ts", "session", "split", "return")


@dataclass
class Dataset:
    """A prepared dataset in memory, as NumPy arrays (all of length n_events, in file order)."""

    user: np.ndarray  # (E,) int32
    item: np.ndarray  # (E,) int32, oov_index for unseen test items
    behavior: np.ndarray  # (E,) object/str
    reward: np.ndarray  # (E,) float32
    ts: np.ndarray  # (E,) int64
    session: np.ndarray  # (E,) int32
    is_test: np.ndarray  # (E,) bool
    returns: np.ndarray  # (E,) float32
    n_users: int
    n_items: int
    user_features: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (n_users,) int32 codes
    item_features: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (n_items,) int32 codes
    user_raw: np.ndarray | None = None  # (n_users,) str
    item_raw: np.ndarray | None = None  # (n_items,) str
    meta: dict[str, Any] = field(default_factory=dict)
    propensity: np.ndarray | None = None  # (E,) float64 logged propensities, None when the log had none
    step: np.ndarray | None = None  # (E,) int32 slate step within the user, None when every row is its own step
    context: np.ndarray | None = None  # (E,) bool context-only rows (history, never actions); None: no such rows

    @property
    def pad_index(self) -> int:
        return self.n_items

    @property
    def oov_index(self) -> int:
        return self.n_items

    @property
    def n_events(self) -> int:
        return int(self.user.shape[0])

    def context_mask(self) -> np.ndarray:
        """(E,) bool: rows that are context only (organic views, page visits): history, never actions."""
        if self.context is None:
            return np.zeros(self.n_events, dtype=bool)
        return np.asarray(self.context, dtype=bool)

    def event_vocabulary(self) -> tuple[tuple[str, ...], np.ndarray]:
        """(event type names, (E,) int32 code of each row): what the user did with the item, for the state.

        The type is the behaviour label (pv, cart, fav, buy, skip, ...). When one label carries several
        reward values (MovieLens: every row is a ``rating``, its value the reward), and the (label, reward)
        pairs are few (<= 32), each pair is its own type, named ``label=reward`` (``rating=4.5``): a one-star
        and a five-star rating are different feedback. Names are sorted, so codes are stable across runs.
        """
        # Computed once per (behavior, reward) array pair: training asks up to 7 times (transitions, histories,
        # the agent's vocabulary), 1.2 s each on 3.3 M events. The codes are copied out, so callers may write.
        cached = self.__dict__.get("_event_vocabulary")
        if cached is None or cached[0] is not self.behavior or cached[1] is not self.reward:
            vocab = event_vocabulary(np.asarray(self.behavior).astype(str), np.asarray(self.reward, dtype=np.float64))
            cached = (self.behavior, self.reward, vocab)
            self.__dict__["_event_vocabulary"] = cached
        names, codes = cached[2]
        return names, codes.copy()

    def train_item_counts(self) -> np.ndarray:
        """(n_items,) int64 train-split event count of each item (popularity; OOV test rows not counted)."""
        train = ~np.asarray(self.is_test, dtype=bool)
        return np.bincount(self.item[train], minlength=self.n_items + 1)[: self.n_items].astype(np.int64)

    def feature_cardinalities(self) -> dict[str, int]:
        """Rows needed per feature table (max code + 1, so code 0 = unknown is included)."""
        out: dict[str, int] = {}
        for name, codes in {**self.user_features, **self.item_features}.items():
            out[name] = int(codes.max()) + 1 if codes.size else 1
        return out

    def summary(self) -> dict[str, Any]:
        """The DESIGN §9 keys of ``summary.json``."""
        beh, counts = np.unique(self.behavior.astype(str), return_counts=True)
        return {
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_events": self.n_events,
            "n_train_events": int((~self.is_test).sum()),
            "n_test_events": int(self.is_test.sum()),
            "n_oov_test_events": int((self.is_test & (self.item == self.oov_index)).sum()),
            "n_sessions": int(np.unique(self.session).size),
            "behavior_counts": {str(b): int(c) for b, c in zip(beh, counts, strict=True)},
        }

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path) -> None:
        """Write the dataset directory into ``directory`` (which must exist; callers use io.atomic_dir)."""
        import polars as pl

        columns = [
            pl.Series("user", self.user.astype(np.int32)),
            pl.Series("item", self.item.astype(np.int32)),
            pl.Series("behavior", self.behavior, dtype=pl.String),
            pl.Series("reward", self.reward.astype(np.float32)),
            pl.Series("ts", self.ts.astype(np.int64)),
            pl.Series("session", self.session.astype(np.int32)),
            pl.Series("split", ["train", "test"]).gather(np.asarray(self.is_test, dtype=np.uint32)),
            pl.Series("return", self.returns.astype(np.float32)),
        ]
        if self.propensity is not None:
            columns.append(pl.Series("propensity", self.propensity.astype(np.float64)))
        if self.step is not None:
            columns.append(pl.Series("step", self.step.astype(np.int32)))
        if self.context is not None:
            columns.append(pl.Series("context", np.asarray(self.context, dtype=bool)))
        user_raw = self.user_raw if self.user_raw is not None else np.arange(self.n_users).astype(str)
        item_raw = self.item_raw if self.item_raw is not None else np.arange(self.n_items).astype(str)
        write_dataset_dir(
            Path(directory),
            events=pl.DataFrame(columns),
            users=pl.DataFrame({"user": np.arange(self.n_users, dtype=np.int32), **self._codes(self.user_features)}),
            items=pl.DataFrame({"item": np.arange(self.n_items, dtype=np.int32), **self._codes(self.item_features)}),
            user_raw=pl.Series("raw", user_raw.astype(str)),
            item_raw=pl.Series("raw", item_raw.astype(str)),
            meta=self.meta,
            summary=self.summary(),
        )

    @staticmethod
    def _codes(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v.astype(np.int32) for k, v in sorted(features.items())}

    @classmethod
    def load(cls, directory: Path) -> Dataset:
        """Read a dataset directory written by ``topkrec prepare``; a clear error if it is not one."""
        import polars as pl

        from topkrec.io import recover_interrupted

        d = Path(directory)
        recover_interrupted(d)  # a run killed while swapping the directory in left it beside d
        if not (d / "meta.json").exists():
            raise ArtifactError(f"{d} is not a dataset directory (no meta.json); create one with `topkrec prepare`")
        meta = read_json(d / "meta.json")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{d}/meta.json has format_version {meta.get('format_version')!r}, this topkrec reads "
                f"{FORMAT_VERSION}; re-run `topkrec prepare`"
            )
        try:
            ev = pl.read_parquet(d / "events.parquet")
            users = pl.read_parquet(d / "users.parquet")
            items = pl.read_parquet(d / "items.parquet")
            umap = pl.read_parquet(d / "maps" / "user_map.parquet")
            imap = pl.read_parquet(d / "maps" / "item_map.parquet")
        except Exception as e:  # polars raises several kinds for missing/corrupt files
            raise ArtifactError(f"{d}: cannot read dataset files ({e}); re-run `topkrec prepare`") from e
        missing = [c for c in EVENT_COLUMNS if c not in ev.columns]
        if missing:
            raise ArtifactError(f"{d}/events.parquet lacks columns {missing}; re-run `topkrec prepare`")
        return cls(
            user=ev["user"].to_numpy().astype(np.int32),
            item=ev["item"].to_numpy().astype(np.int32),
            behavior=ev["behavior"].to_numpy(),
            reward=ev["reward"].to_numpy().astype(np.float32),
            ts=ev["ts"].to_numpy().astype(np.int64),
            session=ev["session"].to_numpy().astype(np.int32),
            is_test=(ev["split"] == "test").to_numpy(),
            returns=ev["return"].to_numpy().astype(np.float32),
            n_users=int(meta["n_users"]),
            n_items=int(meta["n_items"]),
            user_features={c: users[c].to_numpy().astype(np.int32) for c in users.columns if c != "user"},
            item_features={c: items[c].to_numpy().astype(np.int32) for c in items.columns if c != "item"},
            user_raw=umap["raw"].to_numpy(),
            item_raw=imap["raw"].to_numpy(),
            meta=meta,
            propensity=ev["propensity"].to_numpy().astype(np.float64) if "propensity" in ev.columns else None,
            step=ev["step"].to_numpy().astype(np.int32) if "step" in ev.columns else None,
            context=ev["context"].to_numpy().astype(bool) if "context" in ev.columns else None,
        )


def write_dataset_dir(
    d: Path,
    events: pl.DataFrame,
    users: pl.DataFrame,
    items: pl.DataFrame,
    user_raw: pl.Series,
    item_raw: pl.Series,
    meta: dict[str, Any],
    summary: dict[str, Any],
) -> None:
    """Write the files of a dataset directory from frames (used by ``Dataset.save`` and ``prepare``).

    ``events`` has the EVENT_COLUMNS (+ optional ``propensity``, ``step``) in file order; ``users``/``items`` have
    ``user``/``item`` 0..n-1 plus int32 feature codes; ``user_raw``/``item_raw`` give each index's raw id.
    """
    import polars as pl

    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise ValueError(f"events frame lacks {missing}")
    n_users, n_items = users.height, items.height
    d = Path(d)
    (d / "maps").mkdir(parents=True, exist_ok=True)
    # zstd level 1: as small as the default level at 5 M events, and a third faster to write.
    events.select([*EVENT_COLUMNS, *[c for c in events.columns if c not in EVENT_COLUMNS]]).write_parquet(
        d / "events.parquet", compression="zstd", compression_level=1
    )
    users.write_parquet(d / "users.parquet")
    items.write_parquet(d / "items.parquet")
    pl.DataFrame(
        {"index": np.arange(n_users, dtype=np.int32), "raw": user_raw.cast(pl.String).rename("raw")}
    ).write_parquet(d / "maps" / "user_map.parquet")
    pl.DataFrame(
        {"index": np.arange(n_items, dtype=np.int32), "raw": item_raw.cast(pl.String).rename("raw")}
    ).write_parquet(d / "maps" / "item_map.parquet")
    user_features = [c for c in users.columns if c != "user"]
    item_features = [c for c in items.columns if c != "item"]
    cardinalities = {
        c: int(frame[c].cast(pl.Int64).max() or 0) + 1 if frame.height else 1  # type: ignore[arg-type]
        for frame, cols in ((users, user_features), (items, item_features))
        for c in cols
    }
    full_meta = {
        **meta,
        "format_version": FORMAT_VERSION,
        "n_users": n_users,
        "n_items": n_items,
        "pad_index": n_items,
        "oov_index": n_items,
        "user_features": sorted(user_features),
        "item_features": sorted(item_features),
        "feature_cardinalities": cardinalities,
        **{k: v for k, v in summary.items() if k not in ("n_users", "n_items")},
    }
    write_json(d / "meta.json", full_meta)
    write_json(d / "summary.json", summary)


def discounted_returns(
    reward: np.ndarray, session: np.ndarray, gamma: float, step: np.ndarray | None = None
) -> np.ndarray:
    """Discounted in-session returns for events laid out session-contiguously.

    Without ``step`` every event is its own step: R_t = Σ_{t'≥t, same session} γ^{t'−t} r_{t'}.

    With ``step`` (non-decreasing within a session; the rows of one slate share a step) the discount is
    paid once per step, by step distance: a row at step s gets

        R = r_row + Σ_{s' > s, same session} γ^{s'−s} · (Σ of the rewards of the rows at step s').

    A row's return holds its own reward and the whole future, but not the rewards of its slate-mates
    (the other rows of its step): those are the rewards of other actions taken at the same step, and the
    return is the credit of this action (the paper's R_t, §4.1, per action of the step). A step that
    left no row (e.g. a slate without engagement in an interactions-only log) still counts in the
    distance, so steps 3 and 5 are γ² apart.

    Exact and vectorised over events: G = T + γ^d·G_next is applied one "distance from the session
    end" level at a time over the steps (level 0 = last step of each session), so the Python loop runs
    over the longest session's number of steps, never over events. A closed form through γ^t cumulative
    sums would lose precision on long sessions (γ^2000 ≈ 2e-9).
    """
    reward = np.asarray(reward, dtype=np.float64)
    session = np.asarray(session)
    n = reward.shape[0]
    if n == 0:
        return reward.astype(np.float32)
    if step is None:
        group_start = np.r_[True, session[1:] != session[:-1]]
        totals, group_step = reward, np.arange(n)
        first = None
    else:
        step = np.asarray(step, dtype=np.int64)
        new_group = np.r_[True, (session[1:] != session[:-1]) | (step[1:] != step[:-1])]
        first = np.flatnonzero(new_group)
        group_of_row = np.cumsum(new_group) - 1
        totals = np.bincount(group_of_row, weights=reward, minlength=first.size)
        group_step = step[first]
        group_session = session[first]
        group_start = np.r_[True, group_session[1:] != group_session[:-1]]
    # per group: the discount to the next group of the same session (0 at a session's last group)
    m = totals.shape[0]
    starts = np.flatnonzero(group_start)
    lengths = np.diff(np.r_[starts, m])
    gap = np.diff(group_step).astype(np.float64) if m > 1 else np.zeros(0)
    factor = np.r_[gamma ** np.maximum(gap, 0.0), 0.0] if step is not None else np.full(m, gamma)
    future = np.zeros(m)  # Σ over later groups, discounted to this group's step
    value = totals.astype(np.float64).copy()  # G = T + future
    by_length = np.argsort(-lengths, kind="stable")
    last = (starts + lengths - 1)[by_length]  # last group of each session, longest sessions first
    n_longer = np.searchsorted(-lengths[by_length], -np.arange(int(lengths.max())), side="left")
    # n_longer[L] = number of sessions with more than L groups
    for level in range(1, int(lengths.max())):
        idx = last[: n_longer[level]] - level
        future[idx] = factor[idx] * value[idx + 1]
        value[idx] += future[idx]
    if step is None:
        return value.astype(np.float32)
    return (reward + future[group_of_row]).astype(np.float32)


MAX_VALUED_EVENT_TYPES = 32


def event_type_name(behavior: str, reward: float, valued: bool) -> str:
    """The event type of one row (see ``Dataset.event_vocabulary``)."""
    return f"{behavior}={reward:g}" if valued else str(behavior)


def event_vocabulary(behavior: np.ndarray, reward: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """(sorted type names, (E,) int32 codes) for rows with these behaviour labels and rewards."""
    if behavior.size == 0:
        return (), np.zeros(0, dtype=np.int32)
    labels, label_code = np.unique(behavior, return_inverse=True)
    # The (label, reward) pairs in lexicographic order, as one integer key per row: label code × #rewards +
    # the reward's rank (np.unique over an (E, 2) array with axis=0 gave the same codes 15× slower).
    values, value_code = np.unique(reward, return_inverse=True)
    keys, pair_code = np.unique(label_code.astype(np.int64) * values.size + value_code, return_inverse=True)
    if not labels.size < keys.size <= MAX_VALUED_EVENT_TYPES:
        return tuple(str(x) for x in labels), label_code.astype(np.int32)
    pairs = zip(keys // values.size, values[keys % values.size], strict=True)
    names = [event_type_name(str(labels[int(code)]), float(value), True) for code, value in pairs]
    order = np.argsort(names, kind="stable")
    rank = np.empty(len(names), dtype=np.int32)
    rank[order] = np.arange(len(names), dtype=np.int32)
    return tuple(names[i] for i in order), rank[pair_code.reshape(-1)]
