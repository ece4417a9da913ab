"""Each known user's history rows, stored beside the model for serving.

Serving needs, for a user known to the dataset, their history rows — the rows the model's ``history``
setting keeps (``topkrec.data.transitions.history_rows``), as (item, event type) tokens: the last
``hist_num`` of them form the state, built exactly as training builds the state of a next event (tested),
and their items are excluded from recommendations when ``exclude_seen`` is on. They are kept as flat
arrays plus per-user offsets (O(events) memory), in ``user_histories.safetensors`` in the model directory::

    items    (R,)           int32  item indices of every user's history rows in time order (never OOV)
    events   (R,)           int32  their event-type codes (absent in files written before feedback tokens)
    offsets  (n_users + 1,) int64  user u's rows are [offsets[u], offsets[u + 1])

Both splits are included: at serving time the held-out events are in the past too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from topkrec.errors import ArtifactError
from topkrec.io import atomic_write_bytes

if TYPE_CHECKING:
    from topkrec.data.dataset import Dataset

HISTORIES_FILE = "user_histories.safetensors"

__all__ = ["HISTORIES_FILE", "UserHistories", "write_user_histories"]


@dataclass(frozen=True)
class UserHistories:
    """Flat per-user (item, event type) sequences (oldest first)."""

    items: np.ndarray  # (R,) int32
    offsets: np.ndarray  # (n_users + 1,) int64
    events: np.ndarray | None = None  # (R,) int32 event-type codes; None: unknown (older model directories)

    @property
    def n_users(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def of(self, user: int) -> np.ndarray:
        """(n_u,) item indices of user index ``user``, oldest first."""
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    @classmethod
    def empty(cls, n_users: int) -> UserHistories:
        return cls(
            items=np.zeros(0, dtype=np.int32),
            offsets=np.zeros(n_users + 1, dtype=np.int64),
            events=np.zeros(0, dtype=np.int32),
        )

    @classmethod
    def from_dataset(cls, dataset: Dataset, history: str = "context_engaged") -> UserHistories:
        """Every user's history rows (``history``: which rows, as the model's setting) in dataset order
        (user, then time); rows of items outside the catalogue are never history rows."""
        from topkrec.data.transitions import history_rows

        _, codes = dataset.event_vocabulary()
        keep = history_rows(dataset, history)
        users = dataset.user[keep].astype(np.int64)
        items = dataset.item[keep].astype(np.int32)
        events = codes[keep].astype(np.int32)
        order = np.argsort(users, kind="stable")  # the file is user-grouped already; stable keeps time order
        users, items, events = users[order], items[order], events[order]
        counts = np.bincount(users, minlength=dataset.n_users)
        offsets = np.zeros(dataset.n_users + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(items=items, offsets=offsets, events=events)

    def to_bytes(self) -> bytes:
        """The safetensors file contents."""
        from safetensors.numpy import save

        tensors = {"items": np.ascontiguousarray(self.items), "offsets": np.ascontiguousarray(self.offsets)}
        if self.events is not None:
            tensors["events"] = np.ascontiguousarray(self.events)
        return save(tensors)

    def save(self, path: Path) -> None:
        atomic_write_bytes(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: Path, n_users: int, n_items: int) -> UserHistories:
        """Read and check against the model's shapes; ``ArtifactError`` if corrupt or mismatched."""
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(path))
            items = tensors["items"].astype(np.int32, copy=False)
            offsets = tensors["offsets"].astype(np.int64, copy=False)
            events = tensors["events"].astype(np.int32, copy=False) if "events" in tensors else None
        except Exception as e:  # safetensors raises several kinds for corrupt files
            raise ArtifactError(f"{path} is not a readable user-histories file ({e}); rebuild the model dir") from e
        if offsets.shape != (n_users + 1,) or offsets[0] != 0 or offsets[-1] != items.shape[0]:
            raise ArtifactError(
                f"{path}: offsets of shape {offsets.shape} do not fit {n_users} users and {items.shape[0]} items"
            )
        if np.any(np.diff(offsets) < 0) or (items.size and (items.min() < 0 or items.max() > n_items)):
            raise ArtifactError(f"{path}: item indices or offsets out of range for a {n_items}-item model")
        if events is not None and events.shape != items.shape:
            raise ArtifactError(f"{path}: {events.shape[0]} event codes for {items.shape[0]} items")
        return cls(items=items, offsets=offsets, events=events)


def write_user_histories(model_dir: Path, dataset: Dataset, history: str = "context_engaged") -> Path:
    """Write ``user_histories.safetensors`` for ``dataset`` into ``model_dir`` (``train`` does it itself)."""
    path = Path(model_dir) / HISTORIES_FILE
    UserHistories.from_dataset(dataset, history).save(path)
    return path
