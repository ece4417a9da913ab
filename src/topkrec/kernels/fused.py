"""log softmax(h Wᵀ + b)[a] with one (B, N) buffer: the fast path on CPU (DESIGN §3, §8).

Forward keeps exp(logits − row max); backward turns it in place into −g·softmax, adds g at the logged
action, and runs the two matmuls. The unfused autograd graph allocates about four (B, N) tensors and makes
twice as many passes over them; on CPU those passes cost about as much as the matmuls themselves.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["fused_linear_log_softmax_gather"]


class _LinearLogSoftmaxGather(torch.autograd.Function):
    """log softmax(state Wᵀ + b)[b, a_b] with one (B, N) buffer and no autograd graph over it.

    Forward keeps exp(logits − row max); backward turns it in place into −g·softmax, adds g at the
    logged action, and runs the two matmuls. The backward may run once (no ``retain_graph``). The
    unfused autograd graph allocates about four (B, N) tensors and makes twice as many passes over
    them; on CPU those passes cost about as much as the matmuls themselves.
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
        logits = torch.addmm(bias, state, weight.t())
        if inv_temperature != 1.0:
            logits.mul_(inv_temperature)
        if logits.dtype in (torch.bfloat16, torch.float16):
            logits = logits.float()  # fp32 softmax under autocast; fp64 stays fp64
        row_max = logits.amax(dim=1, keepdim=True)  # (B, 1)
        target = logits.gather(1, actions[:, None]).squeeze(1)
        # Keep exp(logits − max) (the unnormalised softmax) instead of the logits: the backward then
        # needs one pass (scale by −g/Σ) instead of three (− lse, exp, × −g).
        unnormalised = logits.sub_(row_max).exp_()
        sum_exp = unnormalised.sum(dim=1)  # (B,)
        logp = target - row_max.squeeze(1) - torch.log(sum_exp)
        ctx.save_for_backward(state, weight, unnormalised, sum_exp, actions)
        ctx.inv_temperature = inv_temperature
        return logp

    @staticmethod
    def backward(ctx: Any, grad_logp: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        if getattr(ctx, "backward_done", False):
            raise RuntimeError("the fused full-softmax head supports one backward pass (no retain_graph)")
        ctx.backward_done = True
        state, weight, unnormalised, sum_exp, actions = ctx.saved_tensors
        g = grad_logp.to(unnormalised.dtype) * ctx.inv_temperature  # (B,)
        # d logp / d logits = onehot(a) − softmax; scaled by g per row. In place: the buffer is ours.
        grad = unnormalised.mul_((-g / sum_exp)[:, None])
        grad.scatter_add_(1, actions[:, None], g[:, None])
        grad = grad.to(weight.dtype)
        grad_state = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_state = (grad @ weight).to(state.dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = grad.t() @ state.to(grad.dtype)
        if ctx.needs_input_grad[2]:
            # A GEMV reads the (B, N) buffer once; a dim-0 sum over it is a slow strided reduction.
            grad_bias = torch.mv(grad.t(), grad.new_ones(grad.shape[0]))
        return grad_state, grad_weight, grad_bias, None, None


def fused_linear_log_softmax_gather(
    state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, actions: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """(B,) log softmax((state Wᵀ + b)/T)[b, a_b], with a memory-lean fused backward."""
    return _LinearLogSoftmaxGather.apply(state, weight, bias, actions.long(), 1.0 / temperature)
