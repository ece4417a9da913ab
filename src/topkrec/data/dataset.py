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
from typing import Any

import numpy as np

from topkrec.errors import ArtifactError
from topkrec.io import read_json, write_json

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

    @property
    def pad_index(self) -> int:
        return self.n_items

    @property
    def oov_index(self) -> int:
        return self.n_items

    @property
    def n_events(self) -> int:
        return int(self.user.shape[0])

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

        d = Path(directory)
        (d / "maps").mkdir(parents=True, exist_ok=True)
        pl.DataFrame(
            {
                "user": self.user.astype(np.int32),
                "item": self.item.astype(np.int32),
                "behavior": self.behavior.astype(str),
                "reward": self.reward.astype(np.float32),
                "ts": self.ts.astype(np.int64),
                "session": self.session.astype(np.int32),
                "split": np.where(self.is_test, "test", "train"),
                "return": self.returns.astype(np.float32),
            }
        ).write_parquet(d / "events.parquet")
        pl.DataFrame(
            {"user": np.arange(self.n_users, dtype=np.int32), **self._codes(self.user_features)}
        ).write_parquet(d / "users.parquet")
        pl.DataFrame(
            {"item": np.arange(self.n_items, dtype=np.int32), **self._codes(self.item_features)}
        ).write_parquet(d / "items.parquet")
        user_raw = self.user_raw if self.user_raw is not None else np.arange(self.n_users).astype(str)
        item_raw = self.item_raw if self.item_raw is not None else np.arange(self.n_items).astype(str)
        pl.DataFrame({"index": np.arange(self.n_users, dtype=np.int32), "raw": user_raw.astype(str)}).write_parquet(
            d / "maps" / "user_map.parquet"
        )
        pl.DataFrame({"index": np.arange(self.n_items, dtype=np.int32), "raw": item_raw.astype(str)}).write_parquet(
            d / "maps" / "item_map.parquet"
        )
        meta = {
            **self.meta,
            "format_version": FORMAT_VERSION,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "pad_index": self.pad_index,
            "oov_index": self.oov_index,
            "user_features": sorted(self.user_features),
            "item_features": sorted(self.item_features),
            "feature_cardinalities": self.feature_cardinalities(),
            **{k: v for k, v in self.summary().items() if k not in ("n_users", "n_items")},
        }
        write_json(d / "meta.json", meta)
        write_json(d / "summary.json", self.summary())

    @staticmethod
    def _codes(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v.astype(np.int32) for k, v in sorted(features.items())}

    @classmethod
    def load(cls, directory: Path) -> Dataset:
        """Read a dataset directory written by ``topkrec prepare``; a clear error if it is not one."""
        import polars as pl

        d = Path(directory)
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
        )


def discounted_returns(reward: np.ndarray, session: np.ndarray, gamma: float) -> np.ndarray:
    """R_t = Σ_{t'≥t, same session} γ^{t'−t} r_{t'} for events laid out session-contiguously.

    Exact and vectorised over events: R_t = r_t + γ·R_{t+1} is applied one "distance from the session
    end" level at a time (level 0 = last event of each session), so the Python loop runs over the
    longest session's length, never over events. A closed form through γ^t cumulative sums would
    lose precision on long sessions (γ^2000 ≈ 2e-9).
    """
    reward = np.asarray(reward, dtype=np.float64)
    session = np.asarray(session)
    n = reward.shape[0]
    out = reward.copy()
    if n == 0:
        return out.astype(np.float32)
    starts = np.flatnonzero(np.r_[True, session[1:] != session[:-1]])
    lengths = np.diff(np.r_[starts, n])
    ends = np.repeat(starts + lengths, lengths)  # one past each event's session end
    from_end = ends - 1 - np.arange(n)  # 0 for the last event of a session
    order = np.argsort(from_end, kind="stable")
    bounds = np.searchsorted(from_end[order], np.arange(int(from_end.max()) + 2))
    for level in range(1, bounds.shape[0] - 1):
        idx = order[bounds[level] : bounds[level + 1]]
        out[idx] += gamma * out[idx + 1]
    return out.astype(np.float32)
