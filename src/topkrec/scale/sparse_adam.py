"""Lazy (row-wise) Adam for parameters with row-sparse COO gradients (the sampled-softmax heads).

``RowSparseAdam`` updates only the rows present in a parameter's sparse gradient, with exactly the
arithmetic of ``torch.optim.Adam`` on those rows (``m̂ / (√v̂ + ε)``, ε added after the bias correction).
``torch.optim.SparseAdam`` instead adds ε before the √ bias correction, which at step 1 acts like a
ε about 30 × larger; this class keeps the dense optimizer's maths so that, with fresh state, one step
equals dense Adam exactly on every row (untouched rows have zero moments and do not move under either).

Lazy Adam's documented difference from dense Adam after the first step: a row's moments decay only on
the steps whose gradient contains that row, while the bias correction uses the parameter's global step
count; dense Adam keeps moving an untouched row on its decaying momentum, lazy Adam leaves it as it is.
A step costs O(rows touched · d) plus a sort of the touched indices, instead of O(N · d).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["RowSparseAdam"]


class RowSparseAdam(torch.optim.Optimizer):
    """Adam over the rows of dim 0 touched by each step's sparse COO gradient (no weight decay)."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if lr <= 0 or eps < 0 or not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid RowSparseAdam settings lr={lr} betas={betas} eps={eps}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("RowSparseAdam does not take a closure")
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not grad.is_sparse:
                    raise RuntimeError("RowSparseAdam needs sparse COO gradients; use torch.optim.Adam for dense ones")
                grad = grad.coalesce()
                rows = grad.indices()[0]
                values = grad.values().to(p.dtype)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] = int(state["step"]) + 1
                t = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                m = exp_avg.index_select(0, rows).lerp_(values, 1.0 - beta1)
                v = exp_avg_sq.index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1.0 - beta2)
                exp_avg.index_copy_(0, rows, m)
                exp_avg_sq.index_copy_(0, rows, v)
                bias_correction1 = 1.0 - beta1**t
                bias_correction2_sqrt = math.sqrt(1.0 - beta2**t)
                denom = v.sqrt_().div_(bias_correction2_sqrt).add_(eps)
                update = m.div_(denom).mul_(-lr / bias_correction1)
                p.index_add_(0, rows, update)
