"""Transitions (user, history, action, reward, return) gathered by index from flat arrays (DESIGN §1).

The state of the event at position t is the user and the ``hist_num`` most recent *history rows* of
the user strictly before t's step — each an (item, event type) token, oldest first, left-padded:

- which rows are history rows is a setting (``AgentConfig.history``): ``all`` rows, only ``engaged``
  ones (non-context rows with a non-zero reward), or ``context_engaged`` (context-only rows — organic
  views, page visits — plus the engaged ones; skipped impressions are left out);
- "strictly before t's step": rows of the same slate (the dataset's ``step`` column) never see each other,
  so a training state is what was known when the slate was shown — the state serving builds
  (``topkrec.data.histories``, tested equal);
- a user's whole sequence is used, train and test together in time order, so the history of a test event
  holds the user's train tail (and earlier test events), and the history of a train event holds only
  train events.

Context-only rows are never transitions (actions). Histories are never materialised for the whole split:
``Transitions`` keeps the history rows' items and event types as flat arrays plus, per event, where its
history ends and where its user's history starts; ``Transitions.batch(idx)`` gathers the (B, H) windows
of the rows asked for. Memory is O(events), not O(events × hist_num).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

    from topkrec.data.dataset import Dataset

Split = Literal["train", "test"]
HistoryRows = Literal["all", "engaged", "context_engaged"]
HISTORY_ROWS: tuple[str, ...] = ("all", "engaged", "context_engaged")


@dataclass(frozen=True)
class TransitionBatch:
    """A batch of B transitions; every field is a tensor on the same device."""

    user: torch.Tensor  # (B,) int64 user index
    history: torch.Tensor  # (B, H) int64 item indices, oldest first, left-padded with the pad index
    action: torch.Tensor  # (B,) int64 logged item index (the OOV index for unseen test items)
    reward: torch.Tensor  # (B,) float32 immediate reward r_t
    returns: torch.Tensor  # (B,) float32 discounted in-session return R_t
    history_event: torch.Tensor | None = None  # (B, H) int64 event-type codes of the history (None: unknown)
    propensity: torch.Tensor | None = None  # (B,) float32 logged propensity of the action (NaN / None: none)

    def __len__(self) -> int:
        return int(self.action.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TransitionBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> TransitionBatch:
        return self._map(lambda t: t.pin_memory())

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TransitionBatch:
        from dataclasses import replace

        changes: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            changes[f.name] = None if value is None else fn(value)
        return replace(self, **changes)


@dataclass(frozen=True)
class Transitions:
    """All transitions of one split, as index arrays into the dataset's flat event arrays.

    ``rows`` are the event positions of this split's transitions; the per-event arrays cover every event of
    the dataset and the ``hist_*`` arrays every history row, so histories reach back into the other split.
    """

    items: torch.Tensor  # (E,) int64 item of every event, file order (grouped by user, time-sorted)
    users: torch.Tensor  # (E,) int64 user of every event
    reward: torch.Tensor  # (E,) float32
    returns: torch.Tensor  # (E,) float32
    propensity: torch.Tensor  # (E,) float32 logged propensity (NaN where the log has none)
    hist_items: torch.Tensor  # (R,) int64 items of the history rows, file order
    hist_events: torch.Tensor  # (R,) int64 event-type codes of the history rows
    hist_end: torch.Tensor  # (E,) int64 per event: history rows strictly before its step (an index into hist_*)
    hist_start: torch.Tensor  # (E,) int64 per event: index of its user's first history row
    rows: torch.Tensor  # (N,) int64 event positions of this split's transitions
    hist_num: int
    pad_index: int
    event_pad: int  # the event code of padding (= the number of event types)

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
        return Transitions(**moved, hist_num=self.hist_num, pad_index=self.pad_index, event_pad=self.event_pad)

    def rare_actions(self, min_count: int) -> torch.Tensor:
        """(pad_index + 1,) bool: the items that are the action of fewer than ``min_count`` of this split's rows
        (none when ``min_count`` <= 1)."""
        import torch

        counts = torch.bincount(self.items[self.rows], minlength=self.pad_index + 1)
        return counts < min_count if min_count > 1 else torch.zeros_like(counts, dtype=torch.bool)

    def histories(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(items (B, H), event codes (B, H)) of the history before each event position, oldest first."""
        import torch

        end = self.hist_end[positions]
        pos = end[:, None] + torch.arange(-self.hist_num, 0, device=positions.device)[None, :]  # (B, H)
        valid = pos >= self.hist_start[positions][:, None]
        safe = pos.clamp_min(0)
        if self.hist_items.numel() == 0:
            items = torch.full_like(pos, self.pad_index)
            return items, torch.full_like(pos, self.event_pad)
        safe = safe.clamp_max(self.hist_items.numel() - 1)
        items = torch.where(valid, self.hist_items[safe], torch.full_like(pos, self.pad_index))
        events = torch.where(valid, self.hist_events[safe], torch.full_like(pos, self.event_pad))
        return items, events

    def seen(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row (S,), item (S,)) of every history row before each event position's step — the items its user
        had consumed, as serving's ``exclude_seen`` counts them (pairs in row order)."""
        import torch

        start, end = self.hist_start[positions], self.hist_end[positions]
        lengths = end - start
        rows = torch.repeat_interleave(torch.arange(positions.numel(), device=positions.device), lengths)
        offsets = torch.cumsum(lengths, 0) - lengths
        at = torch.arange(int(lengths.sum()), device=positions.device) - torch.repeat_interleave(offsets, lengths)
        return rows, self.hist_items[torch.repeat_interleave(start, lengths) + at]

    def batch(self, idx: torch.Tensor) -> TransitionBatch:
        """The transitions at indices ``idx`` (B,) of this split (indices into ``rows``)."""
        positions = self.rows[idx]
        history, history_event = self.histories(positions)
        return TransitionBatch(
            user=self.users[positions],
            history=history,
            history_event=history_event,
            action=self.items[positions],
            reward=self.reward[positions],
            returns=self.returns[positions],
            propensity=self.propensity[positions],
        )

    def subset(self, mask: torch.Tensor) -> Transitions:
        """Only the transitions where ``mask`` (N,) is true (histories still see every event)."""
        from dataclasses import replace

        return replace(self, rows=self.rows[mask])

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


def step_starts(users: np.ndarray, step: np.ndarray | None) -> np.ndarray:
    """For events grouped by user, the position of the first event of each event's step (its own position
    when the dataset has no step column: every row is then its own step)."""
    n = users.shape[0]
    if step is None or n == 0:
        return np.arange(n, dtype=np.int64)
    boundary = np.r_[True, (users[1:] != users[:-1]) | (step[1:] != step[:-1])]
    return np.maximum.accumulate(np.where(boundary, np.arange(n), 0)).astype(np.int64)


def token_windows(
    users: np.ndarray,
    keep: np.ndarray,
    items: np.ndarray,
    events: np.ndarray,
    step: np.ndarray | None,
    hist_num: int,
    pad: int,
    event_pad: int,
) -> tuple[np.ndarray, np.ndarray]:
    """NumPy states of every row: (items (n, H), event codes (n, H)) of the last ``hist_num`` ``keep`` rows of
    the row's user strictly before its step, oldest first, left-padded — the rule ``build_transitions`` uses,
    for rows grouped by user in time order (``topkrec ope --model`` builds a log's states with it)."""
    users = np.asarray(users)
    before = np.r_[0, np.cumsum(keep)]
    end = before[step_starts(users, step)]
    start = before[user_starts(users)]
    kept_items, kept_events = np.asarray(items)[keep], np.asarray(events)[keep]
    pos = end[:, None] + np.arange(-hist_num, 0)[None, :]
    valid = pos >= start[:, None]
    if kept_items.size == 0:
        return np.full(pos.shape, pad, dtype=np.int64), np.full(pos.shape, event_pad, dtype=np.int64)
    at = np.clip(pos, 0, kept_items.size - 1)
    return (
        np.where(valid, kept_items[at], pad).astype(np.int64),
        np.where(valid, kept_events[at], event_pad).astype(np.int64),
    )


def validation_rows(dataset: Dataset, val_size: float) -> np.ndarray:
    """(E,) bool: the last round(val_size · n) train events of each user with n > 3 train events (the split rule
    of ``prepare``, applied inside the train part; Python's round, half to even). Context rows never count."""
    out = np.zeros(dataset.n_events, dtype=bool)
    if val_size <= 0:
        return out
    candidate = ~np.asarray(dataset.is_test, dtype=bool) & ~dataset.context_mask()
    rows = np.flatnonzero(candidate)
    users = np.asarray(dataset.user)[rows]
    if rows.size == 0:
        return out
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    lengths = np.diff(np.r_[starts, rows.size])
    n = np.repeat(lengths, lengths)
    pos = np.arange(rows.size) - np.repeat(starts, lengths)
    keep_train = np.round((1.0 - val_size) * lengths).astype(np.int64)  # half to even, as Python's round
    held = (n > 3) & (pos >= np.repeat(keep_train, lengths))
    out[rows[held]] = True
    return out


def history_rows(dataset: Dataset, which: str) -> np.ndarray:
    """(E,) bool: the rows that enter histories under ``which`` (see the module docstring).

    Rows of items outside the catalogue (test items never seen in train) never do: the model cannot
    represent them, and serving drops unknown items of a request's history the same way.
    """
    if which not in HISTORY_ROWS:
        raise ValueError(f"history must be one of {', '.join(HISTORY_ROWS)}, got {which!r}")
    context = dataset.context_mask()
    engaged = ~context & (np.asarray(dataset.reward) != 0)
    known = np.asarray(dataset.item) != dataset.pad_index
    if which == "all":
        return known
    if which == "engaged":
        return engaged & known
    return (engaged | context) & known


@dataclass(frozen=True)
class HistoryIndex:
    """The history rows of a dataset and, per event, the window of them its state reads (NumPy)."""

    items: np.ndarray  # (R,) int64
    events: np.ndarray  # (R,) int64
    end: np.ndarray  # (E,) int64 history rows strictly before the event's step
    start: np.ndarray  # (E,) int64 the event's user's first history row
    user_start: np.ndarray  # (E,) int64 the event's user's first event

    @classmethod
    def build(cls, dataset: Dataset, which: str) -> HistoryIndex:
        users = np.asarray(dataset.user, dtype=np.int64)
        keep = history_rows(dataset, which)
        _, codes = dataset.event_vocabulary()
        before = np.r_[0, np.cumsum(keep)]  # history rows before each position
        first = user_starts(users)
        return cls(
            items=np.asarray(dataset.item, dtype=np.int64)[keep],
            events=codes.astype(np.int64)[keep],
            end=before[step_starts(users, dataset.step)],
            start=before[first],
            user_start=first,
        )


def build_transitions(
    dataset: Dataset,
    split: Split = "train",
    hist_num: int = 10,
    device: torch.device | str = "cpu",
    history: str = "context_engaged",
    rows_mask: np.ndarray | None = None,
) -> Transitions:
    """The transitions of ``split`` (context-only rows excluded; ``rows_mask`` (E,) keeps fewer), every tensor
    on ``device``.

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
    is_test = np.asarray(dataset.is_test, dtype=bool)
    in_split = (is_test if split == "test" else ~is_test) & ~dataset.context_mask()
    if rows_mask is not None:
        in_split &= np.asarray(rows_mask, dtype=bool)
    rows = np.flatnonzero(in_split).astype(np.int64)
    index = HistoryIndex.build(dataset, history)
    names, _ = dataset.event_vocabulary()
    propensity = (
        np.full(dataset.n_events, np.nan, dtype=np.float32)
        if dataset.propensity is None
        else np.asarray(dataset.propensity, dtype=np.float32)
    )

    def t(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

    return Transitions(
        items=t(dataset.item, torch.int64),
        users=t(users, torch.int64),
        reward=t(dataset.reward, torch.float32),
        returns=t(dataset.returns, torch.float32),
        propensity=t(propensity, torch.float32),
        hist_items=t(index.items, torch.int64),
        hist_events=t(index.events, torch.int64),
        hist_end=t(index.end, torch.int64),
        hist_start=t(index.start, torch.int64),
        rows=t(rows, torch.int64),
        hist_num=int(hist_num),
        pad_index=int(dataset.pad_index),
        event_pad=len(names),
    )


def _not_grouped(users: np.ndarray) -> bool:
    """True when some user's events are not contiguous."""
    boundary = np.r_[True, users[1:] != users[:-1]]
    return int(boundary.sum()) != int(np.unique(users).size)
