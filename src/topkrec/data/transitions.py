"""Transitions (user, history, action, reward, return) gathered by index from flat arrays (DESIGN §1).

A transition at event t of user u has as state the user and the ``hist_num`` items before t in u's
whole event sequence (train and test together, in time order), left-padded with the pad index. Since
each user's test events come after their train events, the history of a test event holds the user's
train tail (and earlier test events), and the history of a train event holds only train events.

Histories are never materialised for the whole split: ``Transitions`` keeps one flat item array and
the start offset of each event's user, and ``Transitions.batch(idx)`` gathers the (B, H) histories of
the rows asked for. Memory is O(events), not O(events × hist_num).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

    from topkrec.data.dataset import Dataset

Split = Literal["train", "test"]


@dataclass(frozen=True)
class TransitionBatch:
    """A batch of B transitions; every field is a tensor on the same device."""

    user: torch.Tensor  # (B,) int64 user index
    history: torch.Tensor  # (B, H) int64 item indices, oldest first, left-padded with the pad index
    action: torch.Tensor  # (B,) int64 logged item index (the OOV index for unseen test items)
    reward: torch.Tensor  # (B,) float32 immediate reward r_t
    returns: torch.Tensor  # (B,) float32 discounted in-session return R_t

    def __len__(self) -> int:
        return int(self.action.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TransitionBatch:
        return TransitionBatch(
            **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)}
        )

    def pin_memory(self) -> TransitionBatch:
        return TransitionBatch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})


@dataclass(frozen=True)
class Transitions:
    """All transitions of one split, as index arrays into the dataset's flat event arrays.

    ``rows`` are the event positions of this split's transitions; ``items``/``user_start`` cover every
    event of the dataset, so histories can reach back into the other split.
    """

    items: torch.Tensor  # (E,) int64 item of every event, file order (grouped by user, time-sorted)
    user_start: torch.Tensor  # (E,) int64 position of the first event of the event's user
    users: torch.Tensor  # (E,) int64 user of every event
    reward: torch.Tensor  # (E,) float32
    returns: torch.Tensor  # (E,) float32
    rows: torch.Tensor  # (N,) int64 event positions of this split's transitions
    hist_num: int
    pad_index: int

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def device(self) -> torch.device:
        return self.items.device

    def to(self, device: torch.device | str) -> Transitions:
        import torch

        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return Transitions(**moved, hist_num=self.hist_num, pad_index=self.pad_index)

    def histories(self, positions: torch.Tensor) -> torch.Tensor:
        """(B, H) items before each event position, oldest first, left-padded with ``pad_index``."""
        import torch

        offsets = torch.arange(-self.hist_num, 0, device=positions.device)  # (H,)
        pos = positions[:, None] + offsets[None, :]  # (B, H)
        valid = pos >= self.user_start[positions][:, None]
        gathered = self.items[pos.clamp_min(0)]
        return torch.where(valid, gathered, torch.full_like(gathered, self.pad_index))

    def batch(self, idx: torch.Tensor) -> TransitionBatch:
        """The transitions at indices ``idx`` (B,) of this split (indices into ``rows``)."""
        positions = self.rows[idx]
        return TransitionBatch(
            user=self.users[positions],
            history=self.histories(positions),
            action=self.items[positions],
            reward=self.reward[positions],
            returns=self.returns[positions],
        )

    def subset(self, mask: torch.Tensor) -> Transitions:
        """Only the transitions where ``mask`` (N,) is true (histories still see every event)."""
        return Transitions(
            items=self.items,
            user_start=self.user_start,
            users=self.users,
            reward=self.reward,
            returns=self.returns,
            rows=self.rows[mask],
            hist_num=self.hist_num,
            pad_index=self.pad_index,
        )

    def first_per_user(self) -> Transitions:
        """The first transition of each user in this split (for test: the state after the train tail)."""
        import torch

        u = self.users[self.rows]
        first = torch.ones_like(u, dtype=torch.bool)
        first[1:] = u[1:] != u[:-1]
        return self.subset(first)


def user_starts(users: np.ndarray) -> np.ndarray:
    """For events grouped by user, the position of each event's user's first event (vectorised)."""
    n = users.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    boundary = np.r_[True, users[1:] != users[:-1]]
    starts = np.flatnonzero(boundary)
    lengths = np.diff(np.r_[starts, n])
    return np.repeat(starts, lengths).astype(np.int64)


def build_transitions(
    dataset: Dataset,
    split: Split = "train",
    hist_num: int = 10,
    device: torch.device | str = "cpu",
) -> Transitions:
    """The transitions of ``split``, every tensor on ``device``.

    Requires events grouped by user and time-sorted within a user (the dataset-directory contract).
    """
    import torch

    from topkrec.errors import DataError

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if hist_num < 1:
        raise ValueError(f"hist_num must be >= 1, got {hist_num}")
    users = np.asarray(dataset.user, dtype=np.int64)
    if users.size and np.any(np.diff(users) < 0) and _not_grouped(users):
        raise DataError("events are not grouped by user; the dataset directory is corrupt, re-run `topkrec prepare`")
    in_split = np.asarray(dataset.is_test, dtype=bool) if split == "test" else ~np.asarray(dataset.is_test, dtype=bool)
    rows = np.flatnonzero(in_split).astype(np.int64)

    def t(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

    return Transitions(
        items=t(dataset.item, torch.int64),
        user_start=t(user_starts(users), torch.int64),
        users=t(users, torch.int64),
        reward=t(dataset.reward, torch.float32),
        returns=t(dataset.returns, torch.float32),
        rows=t(rows, torch.int64),
        hist_num=int(hist_num),
        pad_index=int(dataset.pad_index),
    )


def _not_grouped(users: np.ndarray) -> bool:
    """True when some user's events are not contiguous."""
    boundary = np.r_[True, users[1:] != users[:-1]]
    return int(boundary.sum()) != int(np.unique(users).size)
