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

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "HEADS",
    "FullSoftmaxHead",
    "HeadOutput",
    "ItemHead",
    "linear_log_softmax_gather",
    "make_head",
    "register_head",
]


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
        logits = logits.float()
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
        g = grad_logp.float() * ctx.inv_temperature  # (B,)
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


def linear_log_softmax_gather(
    state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, actions: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """(B,) log softmax((state Wᵀ + b)/T)[b, a_b], with a memory-lean fused backward."""
    return _LinearLogSoftmaxGather.apply(state, weight, bias, actions.long(), 1.0 / temperature)


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
        if self.fused and state.is_cuda and _scale_triton_available():
            # Tiled Triton kernels (topkrec.scale): no (B, N) logits in memory, forward or backward.
            from topkrec.scale.linear_softmax import linear_log_softmax_gather as tiled_gather

            logp = tiled_gather(state, self.weight, self.bias, actions, self.temperature)
        elif self.fused:
            logp = linear_log_softmax_gather(state, self.weight, self.bias, actions, self.temperature)
        else:
            from topkrec.policy.objective import action_log_prob

            logp = action_log_prob(self.logits(state), actions)
        assert logp.shape == actions.shape
        return HeadOutput(train_logp=logp, logp=logp.detach().float())


# Large-catalogue heads (``sampled``, ``adaptive``) live in topkrec.scale and register themselves here.
from topkrec.scale import heads as _scale_heads  # noqa: E402,F401
from topkrec.scale.linear_softmax import triton_available as _scale_triton_available  # noqa: E402
