"""Training on whole token windows (``TrainConfig.batching = "windows"``): one encoder pass per window gives
the state of every training row in it, as SASRec trains (Kang & McAuley, ICDM 2018).

Per-row training encodes each row's own window of ``hist_num`` tokens: for a causal encoder over windows
of 50 tokens that is ~50 times the work of one pass over the user's sequence. Here each user's history
tokens (``topkrec.data.transitions``: the rows the ``history`` setting keeps) are cut, from the last one a
training row needs, into windows of ``hist_num`` tokens (the first left-padded), and every training row is
attached to the window holding the last token before its step: its state is the encoder's output at that
position (``Agent.encode_windows``), or the empty history's state when the row has no token before it.

The one approximation: a row whose last token sits early in a window sees only the tokens of that window
before it (fewer than ``hist_num``), and a causal attention encoder sees them at other positions than
evaluation and serving do (they put the last token at position ``hist_num − 1``). SASRec trains this way;
the per-row path (``batching = "rows"``) is exact. Evaluation and serving always use the per-row states.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from topkrec.data.transitions import Transitions

__all__ = ["WindowBatch", "Windows"]


@dataclass(frozen=True)
class WindowBatch:
    """W token windows and the R training rows attached to them."""

    user: torch.Tensor  # (W,) int64
    history: torch.Tensor  # (W, H) int64 items, left-padded with the pad index
    history_event: torch.Tensor  # (W, H) int64 event codes, padded with the event pad code
    row_window: torch.Tensor  # (R,) int64 window of each row (0..W−1)
    row_pos: torch.Tensor  # (R,) int64 position of its state in the window (−1: the empty history's state)
    action: torch.Tensor  # (R,) int64
    reward: torch.Tensor  # (R,) float32
    returns: torch.Tensor  # (R,) float32
    propensity: torch.Tensor  # (R,) float32 (NaN: none logged)

    def __len__(self) -> int:
        return int(self.action.shape[0])


@dataclass(frozen=True)
class Windows:
    """The training rows of ``Transitions`` grouped into token windows; ``batch(window indices)``."""

    transitions: Transitions
    start: torch.Tensor  # (W,) int64 token index of each window's first slot (may precede the user's first token)
    first_token: torch.Tensor  # (W,) int64 the window's user's first token (slots before it are padding)
    user: torch.Tensor  # (W,) int64
    row_offsets: torch.Tensor  # (W + 1,) int64 the rows of window w are rows[row_offsets[w]:row_offsets[w + 1]]
    rows: torch.Tensor  # (N,) int64 event positions, grouped by window
    row_pos: torch.Tensor  # (N,) int64
    rows_per_window: np.ndarray  # (W,) int64, on the host (DDP loss scales need no device sync)
    rewarded_per_window: np.ndarray  # (W,) int64 rows with a non-zero reward

    def __len__(self) -> int:
        return int(self.start.shape[0])

    @classmethod
    def build(cls, transitions: Transitions) -> Windows:
        """Windows over the users of ``transitions``' rows (see the module docstring)."""
        t = transitions
        h = t.hist_num
        rows = t.rows.cpu().numpy()
        last = t.hist_end.cpu().numpy()[rows] - 1  # the row's last token (global index), < first: none
        first = t.hist_start.cpu().numpy()[rows]
        users = t.users.cpu().numpy()[rows]
        # rows are grouped by user (file order): per user, the tokens it needs end after its rows' last token
        bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        sizes = np.diff(np.r_[bounds, rows.size])
        end = np.maximum.reduceat(last, bounds) + 1 if rows.size else np.zeros(0, dtype=np.int64)
        user_first = first[bounds]
        n_win = np.maximum(1, -(-(end - user_first) // h))  # ceil(tokens / H), at least one
        win_owner = np.repeat(np.arange(bounds.size), n_win)
        back = np.arange(win_owner.size) - np.repeat(np.cumsum(n_win) - n_win, n_win)  # 0 = the user's last window
        win_end = end[win_owner] - back * h
        win_id0 = np.cumsum(n_win) - n_win  # the id of each user's window 0 (its last one)
        row_user = np.repeat(np.arange(bounds.size), sizes)
        has_token = last >= first
        row_back = np.where(has_token, (end[row_user] - 1 - last) // h, n_win[row_user] - 1)
        row_window = win_id0[row_user] + row_back
        row_pos = np.where(has_token, last - (win_end[row_window] - h), -1)
        order = np.argsort(row_window, kind="stable")
        counts = np.bincount(row_window, minlength=win_owner.size)
        rewarded = np.bincount(row_window, weights=t.reward.cpu().numpy()[rows] != 0, minlength=win_owner.size)
        device = t.device

        def on(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.int64, device=device)

        return cls(
            transitions=t,
            start=on(win_end - h),
            first_token=on(user_first[win_owner]),
            user=on(users[bounds][win_owner]),
            row_offsets=on(np.r_[0, np.cumsum(counts)]),
            rows=on(rows[order]),
            row_pos=on(row_pos[order]),
            rows_per_window=counts.astype(np.int64),
            rewarded_per_window=rewarded.astype(np.int64),
        )

    def batch(self, idx: torch.Tensor) -> WindowBatch:
        """The windows ``idx`` (W,) with their rows."""
        t = self.transitions
        h = t.hist_num
        slots = self.start[idx][:, None] + torch.arange(h, device=idx.device)[None, :]
        valid = slots >= self.first_token[idx][:, None]
        at = slots.clamp(0, max(t.hist_items.numel() - 1, 0))
        if t.hist_items.numel():
            items = torch.where(valid, t.hist_items[at], t.pad_index)
            events = torch.where(valid, t.hist_events[at], t.event_pad)
        else:
            items = torch.full_like(slots, t.pad_index)
            events = torch.full_like(slots, t.event_pad)
        lo, hi = self.row_offsets[idx], self.row_offsets[idx + 1]
        counts = hi - lo
        row_window = torch.repeat_interleave(torch.arange(idx.numel(), device=idx.device), counts)
        within = torch.arange(int(counts.sum()), device=idx.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts
        )
        sel = torch.repeat_interleave(lo, counts) + within
        positions = self.rows[sel]
        return WindowBatch(
            user=self.user[idx],
            history=items,
            history_event=events,
            row_window=row_window,
            row_pos=self.row_pos[sel],
            action=t.items[positions],
            reward=t.reward[positions],
            returns=t.returns[positions],
            propensity=t.propensity[positions],
        )
