"""Step-wise sessions on a trained model: feedback in, recommendations out, many sessions per forward pass.

::

    rec = Recommender.load("model/")
    session = rec.session(user="1001")              # or user=None: a new user, served from feedback alone
    session.recommend(k=10, candidates=ads)          # a Recommendation (raw ids, scores, propensities)
    session.observe("42", "cart")                    # what the user did with an item

    many = rec.sessions(["1001", "1002", None])     # one row per running session
    many.recommend(k=5)                              # one batched forward pass for every row
    many.observe([0, 2], ["42", "7"], ["pv", "skip"])

Each row keeps its state window — the last ``hist_num`` (item, event type) tokens, oldest first — and
``observe`` appends to it in place (no re-encoding of a history from raw ids): a known user starts from
their stored history, as ``Recommender.recommend`` does, and each observed token enters the window exactly
when training would have put that row into a later state (the model's ``history`` setting: a ``skip`` is
dropped by an ``engaged`` model; items outside the catalogue never enter). ``recommend`` scores every
asked row in one batch through the recommender's own scoring (exclusion of seen items, candidate sets,
Boltzmann exploration with exact propensities).

The index API (``observe_indices``, ``logits``) takes item indices and event codes directly, for
simulators that already speak the model's ids (``topkrec.simulate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from topkrec.errors import TopkrecError

if TYPE_CHECKING:
    import torch

    from topkrec.serve.recommender import Recommendation, Recommender

RawId = str | int

__all__ = ["Session", "Sessions"]


class Sessions:
    """Running sessions, one row each (see the module docstring)."""

    def __init__(self, recommender: Recommender, user_index: np.ndarray, stored_history: bool = True) -> None:
        """``user_index`` (B,) model user indices (−1: unknown); ``stored_history`` False starts every row empty."""
        self.recommender = recommender
        self.user = np.asarray(user_index, dtype=np.int64)
        n = self.user.shape[0]
        self._seen_rows: list[np.ndarray] = []
        self._seen_items: list[np.ndarray] = []
        if stored_history:
            self.history, self.history_event, self.valid = recommender.stored_windows(self.user)
            seen_rows, seen_items = recommender.stored_seen(self.user)
            self._seen_rows.append(seen_rows)
            self._seen_items.append(seen_items)
        else:
            h = recommender.hist_num
            self.history = np.full((n, h), recommender.pad_index, dtype=np.int64)
            self.history_event = np.full((n, h), recommender.event_pad, dtype=np.int64)
            self.valid = np.zeros((n, h), dtype=bool)

    @classmethod
    def start(cls, recommender: Recommender, users: Sequence[RawId | None]) -> Sessions:
        """Sessions for raw user ids (None or an id the model does not know: a new user)."""
        index = recommender.user_index
        user_idx = np.array([-1 if u is None else index.get(str(u), -1) for u in users], dtype=np.int64)
        return cls(recommender, user_idx)

    def __len__(self) -> int:
        return int(self.user.shape[0])

    # ------------------------------------------------------------------ feedback
    def observe(self, rows: Sequence[int], items: Sequence[RawId], events: Sequence[str]) -> list[str]:
        """Feedback for rows ``rows``: the user did ``events[i]`` with raw item ``items[i]``, in that order.

        Items outside the model's catalogue cannot enter a state; they are skipped and returned (raw ids, in
        order), as ``Recommendation.unknown_history_items`` reports them for ``recommend(history=...)``.
        """
        rec = self.recommender
        if not len(rows) == len(items) == len(events):
            raise TopkrecError(
                f"observe needs aligned rows, items and events (got {len(rows)}, {len(items)}, {len(events)})"
            )
        item_idx = np.array([rec.item_index.get(str(i), rec.pad_index) for i in items], dtype=np.int64)
        codes = np.array([rec._event_code(e) for e in events], dtype=np.int64)
        self.observe_indices(np.asarray(rows, dtype=np.int64), item_idx, codes)
        return [str(i) for i, idx in zip(items, item_idx, strict=True) if idx == rec.pad_index]

    def observe_indices(self, rows: np.ndarray, items: np.ndarray, events: np.ndarray) -> None:
        """``observe`` with item indices (``pad_index``: outside the catalogue) and event codes."""
        rec = self.recommender
        rows, items, events = (np.asarray(a, dtype=np.int64) for a in (rows, items, events))
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise TopkrecError(f"observe: rows must be in 0..{len(self) - 1}")
        known = items != rec.pad_index
        if known.any():
            self._seen_rows.append(rows[known])
            self._seen_items.append(items[known])
        keep = known & rec.enters_history(events)
        rows, items, events = rows[keep], items[keep], events[keep]
        if rows.size == 0:
            return
        # the k-th token of a row in this call is appended in round k (rows within a round are distinct)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        first = np.r_[0, np.flatnonzero(np.diff(sorted_rows)) + 1]
        rank = np.empty(rows.size, dtype=np.int64)
        rank[order] = np.arange(rows.size) - np.repeat(first, np.diff(np.r_[first, rows.size]))
        for r in range(int(rank.max()) + 1):
            sel = rank == r
            at = rows[sel]
            self.history[at] = np.concatenate([self.history[at, 1:], items[sel, None]], axis=1)
            self.history_event[at] = np.concatenate([self.history_event[at, 1:], events[sel, None]], axis=1)
            self.valid[at] = np.concatenate([self.valid[at, 1:], np.ones((at.size, 1), dtype=bool)], axis=1)

    # ------------------------------------------------------------------ scoring
    def logits(self, rows: np.ndarray | None = None, head: str = "policy_head") -> torch.Tensor:
        """(B, n_items) logits of ``rows`` (all rows by default) under π (``head="behavior_head"``: β̂)."""
        import torch

        sel = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        if head == "policy_head":
            return self.recommender.logits(self.user[sel], self.history[sel], self.history_event[sel])
        module = self.recommender.agent.module
        device = self.recommender.device
        with torch.inference_mode():
            hist = torch.as_tensor(self.history[sel], device=device)
            hist_event = torch.as_tensor(self.history_event[sel], device=device)
            state = module.encode(torch.as_tensor(self.user[sel], device=device), hist, hist_event)
            logits: torch.Tensor = module.head_logits(head, state, hist, hist_event).float()
        return logits

    def recommend(
        self,
        k: int = 10,
        rows: Sequence[int] | None = None,
        candidates: Sequence[RawId] | None = None,
        exclude_seen: bool = True,
        explore: bool = False,
        m: int = 200,
        k_prime: int | None = None,
        temperature: float = 1.0,
        seed: int | None = None,
    ) -> list[Recommendation]:
        """One Recommendation per asked row (all rows by default), scored in one batch."""
        from topkrec.serve.recommender import RecommendOptions, _Prepared

        rec = self.recommender
        options = RecommendOptions(k, exclude_seen, explore, m, k_prime, temperature, seed)
        options.validate()
        sel = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        seen_rows = seen_items = np.zeros(0, dtype=np.int64)
        if exclude_seen and self._seen_rows:
            all_rows, all_items = np.concatenate(self._seen_rows), np.concatenate(self._seen_items)
            position = np.full(len(self), -1, dtype=np.int64)
            position[sel] = np.arange(sel.size)
            mine = position[all_rows] >= 0
            seen_rows, seen_items = position[all_rows[mine]], all_items[mine]
        prepared = _Prepared(
            user=self.user[sel],
            history=self.history[sel],
            history_event=self.history_event[sel],
            seen_rows=seen_rows,
            seen_items=seen_items,
            user_known=(self.user[sel] >= 0).tolist(),
            unknown_items=[[] for _ in range(sel.size)],
            allowed=rec.candidate_mask(candidates),
        )
        return rec._recommend_prepared(prepared, options, int(sel.size))


class Session:
    """One user's running session (``Recommender.session``): ``observe(item, event)``, ``recommend(k)``."""

    def __init__(self, sessions: Sessions) -> None:
        if len(sessions) != 1:
            raise ValueError("a Session wraps exactly one row")
        self.sessions = sessions

    def observe(self, item: RawId, event: str) -> bool:
        """Feedback: the user did ``event`` with ``item``. False: the item is not in the catalogue (skipped)."""
        return not self.sessions.observe([0], [item], [event])

    def recommend(self, k: int = 10, candidates: Sequence[RawId] | None = None, **options: object) -> Recommendation:
        return self.sessions.recommend(k, candidates=candidates, **options)[0]  # type: ignore[arg-type]

    @property
    def history(self) -> tuple[np.ndarray, np.ndarray]:
        """(items (H,), event codes (H,)) of the current state window."""
        return self.sessions.history[0], self.sessions.history_event[0]
