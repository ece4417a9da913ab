"""Item heads: a softmax over the catalogue given a state (DESIGN §3).

Every head maps a state (B, d) to log-probabilities of items. Training needs only the log-probability
of the logged action per row, so ``forward(state, actions)`` returns a ``HeadOutput``:

- ``train_logp`` (B,): differentiable; for approximate heads (sampled softmax) this is the surrogate
  whose gradient is used, for the full softmax it is the exact log π(a|s);
- ``logp`` (B,): the exact log-probability of the action, detached, in float32 — what the importance
  weight π/β̂ and the top-K multiplier λ_K are computed from.

``logits(state)`` gives the (B, n_items) scores for evaluation and serving (log-probabilities up to a
per-row constant). Heads are built by ``make_head(kind, in_dim, n_items, **opts)`` from a registry, so
other heads (``sampled``, ``adaptive``) plug in with ``@register_head("kind")``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["HEADS", "HeadOutput", "ItemHead", "make_head", "register_head"]


@dataclass(frozen=True)
class HeadOutput:
    train_logp: torch.Tensor  # (B,) differentiable log-prob (or surrogate) of the logged action
    logp: torch.Tensor  # (B,) float32, detached, exact log π(a|s) of the logged action


class ItemHead(nn.Module):
    """Interface of a head over ``n_items`` items (the pad/OOV index ``n_items`` is never scored)."""

    kind: str = ""
    in_dim: int
    n_items: int

    def forward(self, state: torch.Tensor, actions: torch.Tensor) -> HeadOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def logits(self, state: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """(B, n_items) scores; log_softmax of them is the head's log-probability."""
        raise NotImplementedError

    def log_probs(self, state: torch.Tensor) -> torch.Tensor:
        """(B, n_items) exact log-probabilities (materialises B × n_items; chunk the rows for big B)."""
        return torch.log_softmax(self.logits(state).float(), dim=-1)

    def options(self) -> dict[str, Any]:
        """Constructor options saved in config.json so ``make_head`` can rebuild the head."""
        return {}


HeadFactory = Callable[..., ItemHead]
HEADS: dict[str, HeadFactory] = {}


def register_head(kind: str) -> Callable[[HeadFactory], HeadFactory]:
    """Class decorator adding a head kind to the registry used by ``make_head`` and ``--softmax``."""

    def deco(factory: HeadFactory) -> HeadFactory:
        HEADS[kind] = factory
        return factory

    return deco


def make_head(kind: str, in_dim: int, n_items: int, **opts: Any) -> ItemHead:
    """Build a head of ``kind`` (``full``, or any registered kind)."""
    if kind not in HEADS:
        from topkrec.errors import TopkrecError

        raise TopkrecError(f"unknown softmax head {kind!r}; available: {', '.join(sorted(HEADS))}")
    head = HEADS[kind](in_dim=in_dim, n_items=n_items, **opts)
    head.kind = kind
    return head
