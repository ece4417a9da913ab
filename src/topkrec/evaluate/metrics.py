"""Ranking metrics as pure functions of score matrices (DESIGN §4); tested against hand-computed values.

Ranks are 0-based: rank r means r items score higher. Ties are broken by item index (lower index
first), which for popularity scores is the train-frequency order the dataset assigns ids in, and keeps
every metric deterministic.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "dcg_discounts",
    "ndcg_all_at_k",
    "ndcg_from_rank",
    "recall_from_rank",
    "reciprocal_rank",
    "target_rank",
]


def target_rank(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) 0-based rank of ``target[b]`` among the (B, N) scores; −1 for targets outside [0, N)."""
    n = scores.shape[1]
    valid = (target >= 0) & (target < n)
    t = target.clamp(0, n - 1).long()
    s_t = scores.gather(1, t[:, None])  # (B, 1)
    higher = (scores > s_t).sum(1)
    idx = torch.arange(n, device=scores.device)
    tied_before = ((scores == s_t) & (idx[None, :] < t[:, None])).sum(1)
    rank = higher + tied_before
    return torch.where(valid, rank, torch.full_like(rank, -1))


def ndcg_from_rank(rank: torch.Tensor, k: int) -> torch.Tensor:
    """One relevant item: 1/log2(rank + 2) if it is in the top k, else 0 (rank −1 = not rankable → 0)."""
    hit = (rank >= 0) & (rank < k)
    return torch.where(hit, 1.0 / torch.log2(rank.clamp_min(0).double() + 2.0), torch.zeros((), dtype=torch.float64))


def recall_from_rank(rank: torch.Tensor, k: int) -> torch.Tensor:
    """One relevant item: 1 if in the top k (the hit rate)."""
    return ((rank >= 0) & (rank < k)).double()


def reciprocal_rank(rank: torch.Tensor) -> torch.Tensor:
    """1/(rank + 1) over the whole catalogue; 0 for targets that cannot be ranked."""
    return torch.where(rank >= 0, 1.0 / (rank.clamp_min(0).double() + 1.0), torch.zeros((), dtype=torch.float64))


def dcg_discounts(k: int) -> torch.Tensor:
    """(k,) 1/log2(i + 2)."""
    return 1.0 / torch.log2(torch.arange(k, dtype=torch.float64) + 2.0)


def ndcg_all_at_k(topk: torch.Tensor, relevant: torch.Tensor, n_relevant: torch.Tensor) -> torch.Tensor:
    """(B,) ndcg of ranked lists ``topk`` (B, K) whose entries are relevant where ``relevant`` (B, K) is true;
    the ideal list puts min(K, n_relevant) relevant items first. Rows with n_relevant = 0 give 0."""
    k = topk.shape[1]
    disc = dcg_discounts(k).to(topk.device)
    dcg = (relevant.double() * disc[None, :]).sum(1)
    ideal_cum = torch.cat([torch.zeros(1, dtype=torch.float64, device=topk.device), disc.cumsum(0)])
    idcg = ideal_cum[n_relevant.clamp(0, k).long()]
    return torch.where(idcg > 0, dcg / idcg.clamp_min(math.ulp(1.0)), torch.zeros_like(dcg))
