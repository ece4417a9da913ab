"""Re-engagement: a learned score for the items in the state's history (``--repeat-bias``, ``--repeat-mode``).

Users come back to items: they re-view, cart what they viewed, buy what they carted. A softmax over item
embeddings has no direct way to say "the item seen two steps ago, now as a cart", so each head learns

    R(i) = Σ_{positions j of the history with item i} t[event type_j, j],

a bias per (event type, recency position) learned with the head (``t`` is ``REPEAT_SCALE`` × a parameter,
so Adam's per-step move of ~lr reaches offsets of several logits within an epoch), and uses it in one of
two ways (``--repeat-mode``):

- ``add``: logit'(i) = logit(i) + R(i). The item's own logit still counts, so a popular history item can
  outrank a recent one the biases prefer.
- ``replace``: logit'(i) = R(i) for history items: the biases alone order the history, and the head's
  logits only the items not yet seen (a repeat-or-explore split in one softmax).

On data where users never come back (each movie rated once) the learned biases go negative and push seen
items down — the model, not a fixed ``exclude_seen`` rule, decides.

Training needs the exact log-probability of the logged action under the new softmax without the (B, N)
logits. With Z the head's normaliser, l_i its logits and p_i = e^{l_i}/Z, over the distinct history items i,

    add:      Z'/Z = 1 + Σ_i p_i (e^{R_i} − 1),            log π'(a) = log π(a) + R_a − log(Z'/Z)
    replace:  Z'/Z = 1 + Σ_i (e^{R_i − log Z} − p_i),      log π'(a) = l'_a − log Z − log(Z'/Z)

(l'_a = R_a when a is a history item, else l_a), which needs only the logits of the ≤ H history items and
the normaliser the head already computed.
"""

from __future__ import annotations

import torch

from topkrec.policy.config import RepeatMode

__all__ = ["REPEAT_SCALE", "add_repeat_to_logits", "repeat_biases", "repeat_log_prob"]

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
    mode: RepeatMode = "add",
) -> torch.Tensor:
    """(B,) log π'(a) from the head's log π(a) (B,), its logit of a (B,) and of the history items (B, H)."""
    real = history != pad_index
    same = (history[:, :, None] == history[:, None, :]) & real[:, :, None] & real[:, None, :]  # (B, H, H)
    total = (same.to(biases.dtype) * biases[:, None, :]).sum(-1)  # R of each position's item
    earlier = torch.tril(torch.ones_like(same[0]), diagonal=-1)[None]  # key before query
    first = (real & ~(same & earlier).any(-1)).to(torch.float64)  # one term per distinct item
    log_z = (action_logit - base_logp).double()  # the head's log normaliser
    p = torch.exp(history_logits.double() - log_z[:, None])
    in_history = (history == actions[:, None]) & real
    bias_a = (in_history.to(biases.dtype) * biases).sum(-1)  # R_a (0 when a is not in the history)
    if mode == "add":
        ratio = (first * p * torch.expm1(total.double())).sum(-1)
        return base_logp + bias_a - torch.log1p(ratio).to(base_logp.dtype)
    # replace; in float64: when the history holds nearly all of Z, 1 + ratio is a small difference
    ratio = (first * (torch.exp(total.double() - log_z[:, None]) - p)).sum(-1)
    log_z_ratio = torch.log1p(ratio.clamp_min(-1.0 + 1e-12))
    logit_a = torch.where(in_history.any(-1), bias_a, action_logit)
    return logit_a - (log_z + log_z_ratio).to(base_logp.dtype)


def add_repeat_to_logits(
    logits: torch.Tensor, history: torch.Tensor, biases: torch.Tensor, pad_index: int, mode: RepeatMode = "add"
) -> torch.Tensor:
    """(B, N) logits with each history item's R added (``add``) or in place of its logit (``replace``);
    out of place."""
    real = history != pad_index
    index = torch.where(real, history, 0)
    values = biases.to(logits.dtype) * real
    if mode == "add":
        return logits.scatter_add(1, index, values)
    seen = torch.zeros_like(logits).scatter_add(1, index, real.to(logits.dtype)) > 0  # padding adds 0 at item 0
    return torch.where(seen, torch.zeros_like(logits).scatter_add(1, index, values), logits)
