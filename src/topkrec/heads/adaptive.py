"""Adaptive softmax (Grave et al. 2017) over frequency-ordered ids (``--softmax adaptive``).

``nn.AdaptiveLogSoftmaxWithLoss`` with cutoffs n/20, n/10, n/3 and div 4 by default (the reference
settings). It is a proper distribution, so its ``train_logp`` is also the exact ``logp``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from topkrec.errors import TopkrecError
from topkrec.heads.base import HeadOutput, ItemHead, register_head

logger = logging.getLogger(__name__)

__all__ = ["AdaptiveSoftmaxHead", "default_cutoffs"]


def default_cutoffs(n_items: int) -> list[int]:
    """The reference cutoffs n/20, n/10, n/3, deduplicated and kept inside (0, n)."""
    raw = [n_items // 20, n_items // 10, n_items // 3]
    cutoffs = sorted({c for c in raw if 0 < c < n_items})
    if not cutoffs:
        if n_items < 2:
            raise TopkrecError(f"adaptive softmax needs at least 2 items, got {n_items}")
        cutoffs = [max(1, n_items // 2)]
    return cutoffs


@register_head("adaptive")
class AdaptiveSoftmaxHead(ItemHead):
    """``nn.AdaptiveLogSoftmaxWithLoss`` over frequency-ordered item ids (DESIGN §3, reference settings).

    The temperature divides the state: with no biases in the adaptive layers (``head_bias=False``),
    every logit is linear in the state, so this is exactly a temperature on the logits.
    """

    def __init__(
        self,
        in_dim: int,
        n_items: int,
        cutoffs: Sequence[int] | None = None,
        div_value: float = 4.0,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.in_dim = int(in_dim)
        self.n_items = int(n_items)
        self.cutoffs = [int(c) for c in cutoffs] if cutoffs is not None else default_cutoffs(self.n_items)
        if self.cutoffs != sorted(set(self.cutoffs)) or self.cutoffs[0] <= 0 or self.cutoffs[-1] >= self.n_items:
            raise TopkrecError(f"adaptive cutoffs must be increasing, unique, in (0, {self.n_items}): {self.cutoffs}")
        self.div_value = float(div_value)
        self.temperature = float(temperature)
        smallest = self.in_dim // int(self.div_value ** len(self.cutoffs))
        if smallest < 1:
            logger.warning(
                "adaptive softmax: hidden %d / div %g^%d rounds to 0, the last cluster gets no projection",
                self.in_dim,
                self.div_value,
                len(self.cutoffs),
            )
        self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(
            self.in_dim, self.n_items, self.cutoffs, div_value=self.div_value, head_bias=False
        )

    def options(self) -> dict[str, Any]:
        return {"cutoffs": list(self.cutoffs), "div_value": self.div_value, "temperature": self.temperature}

    def _scaled(self, state: torch.Tensor) -> torch.Tensor:
        return state / self.temperature if self.temperature != 1.0 else state

    def logits(self, state: torch.Tensor) -> torch.Tensor:
        """(B, N) log-probabilities (a valid set of logits: log_softmax leaves them unchanged)."""
        with torch.autocast(state.device.type, enabled=False):
            return self.adaptive.log_prob(self._scaled(state.float()))

    def forward(self, state: torch.Tensor, actions: torch.Tensor) -> HeadOutput:
        if state.dim() != 2 or actions.shape != state.shape[:1]:
            raise ValueError(f"state (B, d) and actions (B,) expected, got {tuple(state.shape)} {tuple(actions.shape)}")
        # fp32 with autocast off: the module mixes its input dtype with log_softmax's fp32 output.
        with torch.autocast(state.device.type, enabled=False):
            out = self.adaptive(self._scaled(state.float()), actions.long()).output  # (B,) exact log-probs
        return HeadOutput(train_logp=out, logp=out.detach())
