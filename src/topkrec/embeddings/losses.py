"""The three pretraining losses as pure functions of scores (DESIGN §2).

Scores are cosines of L2-normalised tower outputs, in [-1, 1].
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def cosine_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """``nn.CosineEmbeddingLoss`` (margin 0) with label +1 on (B,) positives and −1 on (B, k) negatives.

    Per pair: 1 − cos for a positive, max(0, cos) for a negative; mean over all B·(1 + k) pairs, exactly as
    CosineEmbeddingLoss averages over the stacked pairs.
    """
    assert pos_scores.ndim == 1 and neg_scores.ndim == 2 and neg_scores.shape[0] == pos_scores.shape[0]
    total = (1.0 - pos_scores).sum() + neg_scores.clamp(min=0.0).sum()
    return total / (pos_scores.numel() + neg_scores.numel())


def bce_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Binary cross-entropy with labels 1 / 0 on logits cos / temperature, mean over B·(1 + k) pairs."""
    assert pos_scores.ndim == 1 and neg_scores.ndim == 2 and neg_scores.shape[0] == pos_scores.shape[0]
    pos = F.binary_cross_entropy_with_logits(pos_scores / temperature, torch.ones_like(pos_scores), reduction="sum")
    neg = F.binary_cross_entropy_with_logits(neg_scores / temperature, torch.zeros_like(neg_scores), reduction="sum")
    return (pos + neg) / (pos_scores.numel() + neg_scores.numel())


def in_batch_softmax_loss(
    user_vecs: torch.Tensor,
    item_vecs: torch.Tensor,
    items: torch.Tensor,
    item_log_q: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Sampled softmax with in-batch negatives and log-Q correction (Yi et al., RecSys 2019, eq. 3).

    Row b's positive is column b; the other items of the batch are its negatives. An item appears in a batch
    with probability ∝ its train frequency q, so each logit is corrected by − log q (logits s/T − log q),
    which makes the sampled softmax an unbiased-in-the-limit estimate of the full one instead of
    a popularity penalty. Columns holding the row's own item again (duplicates in the batch) are masked out.

    user_vecs (B, d), item_vecs (B, d), items (B,) ids, item_log_q (B,) log q of each column's item.
    """
    assert user_vecs.shape == item_vecs.shape and items.shape == item_log_q.shape == user_vecs.shape[:1]
    logits = user_vecs @ item_vecs.T / temperature - item_log_q[None, :]  # (B, B)
    same_item = items[:, None] == items[None, :]
    diagonal = torch.eye(items.shape[0], dtype=torch.bool, device=items.device)
    logits = logits.masked_fill(same_item & ~diagonal, float("-inf"))
    target = torch.arange(items.shape[0], device=items.device)
    return F.cross_entropy(logits, target)
