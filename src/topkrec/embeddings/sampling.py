"""Vectorised negative sampling: uniform random items the user has not consumed.

Membership is checked against a sorted array of ``user * n_items + item`` keys with ``searchsorted``; the
few collisions are redrawn, a bounded number of rounds (a user who consumed almost the whole catalogue
could otherwise loop for ever; what still collides after that is kept and counted).
"""

from __future__ import annotations

import logging

import numpy as np
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
    if keys.device.type == "cpu":
        # NumPy's searchsorted is ~20x faster than torch's on CPU (measured: 0.7 ms vs 15 ms for 2 048
        # queries into 240 000 keys); the arrays are shared, not copied.
        pos_np = np.searchsorted(sorted_keys.numpy(), keys.contiguous().numpy())
        pos = torch.from_numpy(np.minimum(pos_np, sorted_keys.numel() - 1))
    else:
        pos = torch.searchsorted(sorted_keys, keys.contiguous()).clamp_(max=sorted_keys.numel() - 1)
    return sorted_keys[pos] == keys


class NegativeSampler:
    """Draws (B, k) items uniformly from [0, n_items) excluding each user's consumed items.

    Collisions are redrawn for at most ``max_rounds`` rounds. On CPU the loop stops as soon as none is
    left; on CUDA it runs the fixed number of rounds with ``torch.where`` so a step never waits for the
    host (a collision survives all rounds with probability p^(rounds+1), p = the user's consumed share).
    """

    def __init__(
        self, sorted_keys: torch.Tensor, n_items: int, generator: torch.Generator, max_rounds: int = 6
    ) -> None:
        self.sorted_keys = sorted_keys
        self.n_items = n_items
        self.generator = generator
        self.max_rounds = max_rounds
        self._unresolved = torch.zeros((), dtype=torch.long, device=sorted_keys.device)

    @property
    def n_unresolved(self) -> int:
        """Consumed items kept as negatives after ``max_rounds`` (users who consumed nearly everything)."""
        return int(self._unresolved)

    def sample(self, users: torch.Tensor, k: int) -> torch.Tensor:
        """(B,) users → (B, k) int64 negative items."""
        shape = (users.shape[0], k)
        device = users.device
        items = torch.randint(0, self.n_items, shape, generator=self.generator, device=device)
        users_k = users.long()[:, None].expand(shape)
        for _ in range(self.max_rounds):
            hit = is_consumed(pair_keys(users_k, items, self.n_items), self.sorted_keys)
            if device.type == "cpu" and not bool(hit.any()):
                return items
            fresh = torch.randint(0, self.n_items, shape, generator=self.generator, device=device)
            items = torch.where(hit, fresh, items)
        self._unresolved += is_consumed(pair_keys(users_k, items, self.n_items), self.sorted_keys).sum()
        return items
