"""Vectorised negative sampling: uniform random items the user has not consumed.

Membership is checked against a sorted array of ``user * n_items + item`` keys with ``searchsorted``; the
few collisions are redrawn, a bounded number of rounds (a user who consumed almost the whole catalogue
could otherwise loop for ever; what still collides after that is kept and counted).
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def pair_keys(users: torch.Tensor, items: torch.Tensor, n_items: int) -> torch.Tensor:
    """int64 key of each (user, item) pair, unique for items in [0, n_items]."""
    return users.long() * (n_items + 1) + items.long()


def consumed_keys(users: torch.Tensor, items: torch.Tensor, n_items: int) -> torch.Tensor:
    """Sorted unique keys of the consumed (user, item) pairs."""
    return torch.unique(pair_keys(users, items, n_items))  # torch.unique sorts


def is_consumed(keys: torch.Tensor, sorted_keys: torch.Tensor) -> torch.Tensor:
    """Boolean mask: which ``keys`` occur in ``sorted_keys`` (same shape as ``keys``)."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    pos = torch.searchsorted(sorted_keys, keys).clamp_(max=sorted_keys.numel() - 1)
    return sorted_keys[pos] == keys


class NegativeSampler:
    """Draws (B, k) items uniformly from [0, n_items) excluding each user's consumed items."""

    def __init__(
        self, sorted_keys: torch.Tensor, n_items: int, generator: torch.Generator, max_rounds: int = 10
    ) -> None:
        self.sorted_keys = sorted_keys
        self.n_items = n_items
        self.generator = generator
        self.max_rounds = max_rounds
        self.n_unresolved = 0  # collisions left after max_rounds (kept as negatives), for diagnostics

    def sample(self, users: torch.Tensor, k: int) -> torch.Tensor:
        """(B,) users → (B, k) int64 negative items."""
        shape = (users.shape[0], k)
        items = torch.randint(0, self.n_items, shape, generator=self.generator, device=users.device)
        users_k = users.long()[:, None].expand(shape)
        for _ in range(self.max_rounds):
            hit = is_consumed(pair_keys(users_k, items, self.n_items), self.sorted_keys)
            n_hit = int(hit.sum())
            if n_hit == 0:
                return items
            items[hit] = torch.randint(0, self.n_items, (n_hit,), generator=self.generator, device=users.device)
        hit = is_consumed(pair_keys(users_k, items, self.n_items), self.sorted_keys)
        self.n_unresolved += int(hit.sum())
        return items
