"""The full softmax head: π(a|s) = softmax((sᵀ v_a + b_a) / T) over the whole catalogue (``--softmax full``)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from topkrec.heads.base import HeadOutput, ItemHead, register_head
from topkrec.kernels import linear_log_softmax_gather

__all__ = ["FullSoftmaxHead"]


@register_head("full")
class FullSoftmaxHead(ItemHead):
    """π(a|s) = softmax((sᵀ v_a + b_a) / T) over the whole catalogue (DESIGN §3, ``--softmax full``)."""

    def __init__(self, in_dim: int, n_items: int, temperature: float = 1.0, fused: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.in_dim = int(in_dim)
        self.n_items = int(n_items)
        self.temperature = float(temperature)
        self.fused = bool(fused)
        self.weight = nn.Parameter(torch.empty(self.n_items, self.in_dim))
        self.bias = nn.Parameter(torch.zeros(self.n_items))
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(self.in_dim))

    def options(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

    def logits(self, state: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, state, self.weight.t()) / self.temperature

    def forward(self, state: torch.Tensor, actions: torch.Tensor) -> HeadOutput:
        if state.dim() != 2 or actions.shape != state.shape[:1]:
            raise ValueError(
                f"state (B, d) and actions (B,) expected, got {tuple(state.shape)}, {tuple(actions.shape)}"
            )
        if self.fused:
            # Triton tiles on CUDA (no (B, N) logits in memory), one fused (B, N) buffer elsewhere.
            logp = linear_log_softmax_gather(state, self.weight, self.bias, actions, self.temperature)
        else:
            from topkrec.policy.objective import action_log_prob

            logp = action_log_prob(self.logits(state), actions)
        assert logp.shape == actions.shape
        return HeadOutput(train_logp=logp, logp=logp.detach().float())
