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


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` (sorted distinct values) by a sort and a neighbour test: the same array, measured
    0.04 s instead of 2.3 s (NumPy 2.4's hash-based ``np.unique``) for 2.6 M int64 keys."""
    ordered = np.sort(values)
    if ordered.size == 0:
        return ordered
    keep = np.empty(ordered.size, dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def unique_keys(keys: torch.Tensor) -> torch.Tensor:
    """Sorted distinct values of a 1-D int64 tensor (``torch.unique``; through NumPy on CPU, ~10x faster)."""
    if keys.device.type == "cpu":
        return torch.from_numpy(sorted_unique(keys.numpy()))
    return torch.unique(keys)  # torch.unique sorts


def consumed_keys(users: torch.Tensor, items: torch.Tensor, n_items: int) -> torch.Tensor:
    """Sorted unique keys of the consumed (user, item) pairs."""
    return unique_keys(pair_keys(users, items, n_items))


def is_consumed(keys: torch.Tensor, sorted_keys: torch.Tensor) -> torch.Tensor:
    """Boolean mask: which ``keys`` occur in ``sorted_keys`` (same shape as ``keys``)."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    if keys.device.type == "cpu":
        # NumPy's searchsorted is ~20x faster than torch's on CPU (measured: 0.7 ms vs 15 ms for 2 048
        # queries into 240 000 keys); the arrays are shared, not copied. Queries in ascending order are
        # another ~2.5x (1.6 ms → 0.6 ms for 2 048 queries into the 2.3 M keys of the reference-scale
        # data): NumPy starts each search from the previous one, so the big array is walked once instead
        # of one cache-missing binary search per query. The answer does not depend on the order.
        flat, table = keys.contiguous().view(-1).numpy(), sorted_keys.numpy()
        if flat.size > _SORT_QUERIES_ABOVE:
            order = np.argsort(flat)
            pos_np = np.empty_like(order)
            pos_np[order] = np.searchsorted(table, flat[order])
        else:
            pos_np = np.searchsorted(table, flat)
        pos = torch.from_numpy(np.minimum(pos_np, sorted_keys.numel() - 1)).view(keys.shape)
    else:
        pos = torch.searchsorted(sorted_keys, keys.contiguous()).clamp_(max=sorted_keys.numel() - 1)
    return sorted_keys[pos] == keys


_SORT_QUERIES_ABOVE = 64  # fewer queries: sorting them costs more than the cache misses it saves


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
        """(B,) users → (B, k) int64 negative items.

        Every round draws a fresh (B, k) block from the generator and replaces the colliding items; the
        CPU path then checks only the replaced positions (the others are known not consumed) and stops
        when none collides. Both paths make the same draws and return the same items.
        """
        shape = (users.shape[0], k)
        device = users.device
        items = torch.randint(0, self.n_items, shape, generator=self.generator, device=device)
        users_k = users.long()[:, None].expand(shape)
        if device.type == "cpu":
            return self._sample_cpu(users_k, items)
        for _ in range(self.max_rounds):
            hit = is_consumed(pair_keys(users_k, items, self.n_items), self.sorted_keys)
            fresh = torch.randint(0, self.n_items, shape, generator=self.generator, device=device)
            items = torch.where(hit, fresh, items)
        self._unresolved += is_consumed(pair_keys(users_k, items, self.n_items), self.sorted_keys).sum()
        return items

    def _sample_cpu(self, users_k: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        hit = is_consumed(pair_keys(users_k, items, self.n_items), self.sorted_keys).view(-1)
        flat_users, flat_items = users_k.reshape(-1), items.view(-1)  # items is contiguous: a view
        for _ in range(self.max_rounds):
            where = hit.nonzero().squeeze(1)
            if where.numel() == 0:
                return items
            fresh = torch.randint(0, self.n_items, items.shape, generator=self.generator)
            flat_items[where] = fresh.view(-1)[where]
            hit = torch.zeros_like(hit)
            hit[where] = is_consumed(pair_keys(flat_users[where], flat_items[where], self.n_items), self.sorted_keys)
        self._unresolved += hit.sum()
        return items
