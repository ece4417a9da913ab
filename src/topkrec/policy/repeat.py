"""Re-engagement: a learned bias on the logits of the items in the state's history (``--repeat-bias``).

Users come back to items: they re-view, cart what they viewed, buy what they carted. A softmax over item
embeddings has no direct way to say "the item seen two steps ago, now as a cart", so each head can add

    logit'(i) = logit(i) + Σ_{positions j of the history with item i} t[event type_j, j],

a bias per (event type, recency position) learned with the head (``t`` is ``REPEAT_SCALE`` × a parameter,
so Adam's per-step move of ~lr reaches offsets of several logits within an epoch). On data where users never
come back (each movie rated once) the learned biases go negative and push seen items down — the model, not
a fixed ``exclude_seen`` rule, decides.

Training needs the exact log-probability of the logged action under the biased softmax without the (B, N)
logits. With p_i the head's own probabilities and R_i the total bias of history item i,

    Z'/Z = 1 + Σ_{distinct history items i} p_i (e^{R_i} − 1),     log π'(a) = log π(a) + R_a − log(Z'/Z),

which needs only the logits of the ≤ H history items and the normaliser the head already computed.
"""

from __future__ import annotations

import torch

__all__ = ["REPEAT_SCALE", "repeat_biases", "repeat_log_prob", "add_repeat_to_logits"]

REPEAT_SCALE = 30.0
"""t = REPEAT_SCALE × the stored parameter."""


def repeat_biases(
    table: torch.Tensor, history: torch.Tensor, history_event: torch.Tensor | None, pad_index: int, event_pad: int
) -> torch.Tensor:
    """(B, H) the bias t[type_j, j] of each history position (0 at padding)."""
    h = history.shape[1]
    events = history_event if history_event is not None else torch.full_like(history, event_pad)
    values = REPEAT_SCALE * table[events.clamp(0, event_pad), torch.arange(h, device=history.device)[None, :]]
    return values * (history != pad_index).to(values.dtype)


def repeat_log_prob(
    base_logp: torch.Tensor,
    action_logit: torch.Tensor,
    history_logits: torch.Tensor,
    history: torch.Tensor,
    actions: torch.Tensor,
    biases: torch.Tensor,
    pad_index: int,
) -> torch.Tensor:
    """(B,) log π'(a) from the head's log π(a) (B,), its logit of a (B,) and of the history items (B, H)."""
    real = history != pad_index
    same = (history[:, :, None] == history[:, None, :]) & real[:, :, None] & real[:, None, :]  # (B, H, H)
    total = (same.to(biases.dtype) * biases[:, None, :]).sum(-1)  # R of each position's item
    earlier = torch.tril(torch.ones_like(same[0]), diagonal=-1)[None]  # key before query
    first = real & ~(same & earlier).any(-1)  # one term per distinct item
    log_z = action_logit - base_logp  # the head's log normaliser
    p = torch.exp(history_logits - log_z[:, None])
    ratio = (first.to(p.dtype) * p * torch.expm1(total)).sum(-1)  # Z'/Z − 1 > −1
    bias_a = ((history == actions[:, None]) & real).to(biases.dtype).mul(biases).sum(-1)
    return base_logp + bias_a - torch.log1p(ratio)


def add_repeat_to_logits(
    logits: torch.Tensor, history: torch.Tensor, biases: torch.Tensor, pad_index: int
) -> torch.Tensor:
    """(B, N) logits + each history item's bias (out of place)."""
    real = history != pad_index
    return logits.scatter_add(1, torch.where(real, history, 0), biases.to(logits.dtype) * real)
