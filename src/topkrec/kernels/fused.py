"""log softmax(h Wᵀ + b)[a] with one (N, B) buffer: the fast path on CPU (DESIGN §3, §8).

Forward keeps exp(logits − column max); backward turns it in place into −g·softmax, adds g at the logged
action, and runs the two matmuls. The unfused autograd graph allocates about four (B, N) tensors and makes
twice as many passes over them; on CPU those passes cost about as much as the matmuls themselves.

The buffer holds the logits transposed, item-major (N, B): with a catalogue-sized N and a small d, MKL runs
W·hᵀ → (N, B) about twice as fast as h·Wᵀ → (B, N), and the ∂W product (N, B)·(B, d) about twice as fast
as its transposed-operand form (``benchmarks/bench_train.py --kernels`` measures the two layouts).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["fused_linear_log_softmax_gather"]


class _LinearLogSoftmaxGather(torch.autograd.Function):
    """log softmax(state Wᵀ + b)[b, a_b] with one (N, B) buffer and no autograd graph over it.

    Forward keeps exp(logits − column max) in the item-major buffer; backward turns it in place into
    −g·softmax, adds g at the logged action, and runs the two matmuls. The backward may run once (no
    ``retain_graph``).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        state: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        actions: torch.Tensor,
        inv_temperature: float,
    ) -> torch.Tensor:
        logits = torch.mm(weight, state.t())  # (N, B): column b holds row b's logits
        logits += bias[:, None]
        if inv_temperature != 1.0:
            logits.mul_(inv_temperature)
        if logits.dtype in (torch.bfloat16, torch.float16):
            logits = logits.float()
        rows = torch.arange(state.shape[0], device=state.device)
        col_max = logits.amax(dim=0)  # (B,)
        target = logits[actions, rows]
        # Keep exp(logits − max) (the unnormalised softmax) instead of the logits: the backward then
        # needs one pass (scale by −g/Σ) instead of three (− lse, exp, × −g).
        unnormalised = logits.sub_(col_max).exp_()
        sum_exp = unnormalised.sum(dim=0)  # (B,)
        logp = target - col_max - torch.log(sum_exp)
        ctx.save_for_backward(state, weight, unnormalised, sum_exp, actions, rows)
        ctx.inv_temperature = inv_temperature
        return logp

    @staticmethod
    def backward(ctx: Any, grad_logp: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        if getattr(ctx, "backward_done", False):
            raise RuntimeError("the fused full-softmax head supports one backward pass (no retain_graph)")
        ctx.backward_done = True
        state, weight, unnormalised, sum_exp, actions, rows = ctx.saved_tensors
        g = grad_logp.to(unnormalised.dtype) * ctx.inv_temperature  # (B,)
        # d logp / d logits = onehot(a) − softmax; scaled by g per row. In place: the buffer is ours.
        grad = unnormalised.mul_(-g / sum_exp)  # (N, B)
        grad.index_put_((actions, rows), g, accumulate=True)
        grad = grad.to(weight.dtype)
        grad_state = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_state = torch.mm(weight.t(), grad).t().to(state.dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.mm(grad, state.to(grad.dtype))
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=1)
        return grad_state, grad_weight, grad_bias, None, None


def fused_linear_log_softmax_gather(
    state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, actions: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """(B,) log softmax((state Wᵀ + b)/T)[b, a_b], with a memory-lean fused backward."""
    return _LinearLogSoftmaxGather.apply(state, weight, bias, actions.long(), 1.0 / temperature)
