"""log softmax(h Wᵀ + b)[a] chunk by chunk (or in Triton tiles) without materialising the (B × N) logits.

Training a softmax policy over N items needs, per row b, only the log-probability of the logged
action a_b (DESIGN §3):

    log π(a_b | s_b) = h_b · w_{a_b} + b_{a_b} − logsumexp_j (h_b · w_j + b_j)

and its gradient. With g_b = ∂L/∂ log π(a_b|s_b) and p = softmax(h_b Wᵀ + b):

    ∂L/∂h_b = g_b · (w_{a_b} − Σ_j p_bj w_j)
    ∂L/∂w_j = Σ_b g_b · (1[j = a_b] − p_bj) · h_b
    ∂L/∂b_j = Σ_b g_b · (1[j = a_b] − p_bj)

``LinearLogSoftmaxGather`` computes all of this catalogue chunk by chunk: the forward pass keeps only
a running log-sum-exp per row, the backward pass recomputes each chunk's logits and turns them into
−g·p on the fly. Peak memory is O(B × chunk) instead of O(B × N), and the logits are never written
as a whole. On CUDA with Triton installed, the same Function runs tiled Triton kernels
(:mod:`topkrec.kernels.triton_softmax`) that never write any logits to memory at all.

Precision: matmuls run in ``compute_dtype`` (bf16 under CUDA autocast, fp32 otherwise); the
log-sum-exp, the softmax and every accumulation are fp32, and the returned log-probabilities are fp32.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

import torch

__all__ = [
    "DEFAULT_CHUNK_ELEMENTS",
    "Impl",
    "catalogue_logsumexp",
    "chunked_logsumexp",
    "chunked_topk",
    "default_chunk_size",
    "chunked_linear_log_softmax_gather",
    "resolve_compute_dtype",
    "target_logits",
    "triton_available",
]

logger = logging.getLogger(__name__)

Impl = Literal["auto", "torch", "triton"]

DEFAULT_CHUNK_ELEMENTS = 1 << 22
"""Logits per chunk (B × chunk) in the PyTorch path: 4 Mi fp32 values = 16 MiB per buffer."""

_TRITON_OK: bool | None = None


def triton_available() -> bool:
    """True when Triton can be imported and CUDA is available (checked once).

    ``TOPKREC_NO_TRITON=1`` turns the kernels off (benchmarks compare against the PyTorch path with it).
    """
    global _TRITON_OK
    if _TRITON_OK is None:
        ok = torch.cuda.is_available() and os.environ.get("TOPKREC_NO_TRITON", "") not in ("1", "true")
        if ok:
            try:
                import triton  # noqa: F401
            except Exception:  # pragma: no cover - depends on the machine
                ok = False
        _TRITON_OK = ok
    return _TRITON_OK


def _disable_triton(err: Exception) -> None:
    """A kernel failed to build or run (``impl="auto"``): warn once and use the PyTorch path from now on."""
    global _TRITON_OK
    if _TRITON_OK:
        logger.warning("Triton softmax kernels failed (%r); using the chunked PyTorch path", err)
    _TRITON_OK = False


def default_chunk_size(batch_size: int, n_items: int, max_elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Catalogue chunk so that a (B × chunk) fp32 buffer holds about ``max_elements`` values."""
    chunk = max(256, max_elements // max(1, batch_size))
    return int(min(n_items, chunk))


def resolve_compute_dtype(hidden: torch.Tensor, compute_dtype: torch.dtype | None) -> torch.dtype:
    """bf16/fp16 when autocast is on for the tensor's device, else the tensor's own dtype."""
    if compute_dtype is not None:
        return compute_dtype
    dev = hidden.device.type
    if dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return hidden.dtype


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 accumulation for fp32/bf16/fp16 inputs; fp64 inputs stay fp64 (used by gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_logits(
    hidden_c: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, start: int, end: int, dtype: torch.dtype
) -> torch.Tensor:
    """fp32 logits of catalogue columns [start, end) — (B, end − start)."""
    acc = _acc_dtype(dtype)
    w_c = weight[start:end].to(dtype)
    if bias is not None and dtype == acc:
        return torch.addmm(bias[start:end].to(acc), hidden_c, w_c.t())  # bias fused into the matmul
    logits = (hidden_c @ w_c.t()).to(acc)
    if bias is not None:
        logits += bias[start:end].to(acc)
    return logits


def chunked_logsumexp(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk_size: int | None = None,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """(B,) fp32 logsumexp_j(h Wᵀ + b)_j, one catalogue chunk at a time. Not differentiable."""
    dtype = resolve_compute_dtype(hidden, compute_dtype)
    n_items = weight.shape[0]
    chunk = chunk_size or default_chunk_size(hidden.shape[0], n_items)
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        hidden_c = hidden.detach().to(dtype)
        lse = torch.full((hidden.shape[0],), float("-inf"), device=hidden.device, dtype=_acc_dtype(dtype))
        for start in range(0, n_items, chunk):
            end = min(start + chunk, n_items)
            lse = torch.logaddexp(lse, torch.logsumexp(_chunk_logits(hidden_c, weight, bias, start, end, dtype), dim=1))
    return lse


def catalogue_logsumexp(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    compute_dtype: torch.dtype | None = None,
    impl: Impl = "auto",
) -> torch.Tensor:
    """(B,) fp32 logsumexp_j ((h Wᵀ + b)/T)_j with no gradient: the exact normaliser of a softmax head.

    Uses the Triton kernel on CUDA when available (``impl="auto"``), else :func:`chunked_logsumexp`.
    """
    dtype = resolve_compute_dtype(hidden, compute_dtype)
    with torch.no_grad():
        hidden = hidden.detach() / temperature if temperature != 1.0 else hidden.detach()
        bias = None if bias is None else (bias.detach() / temperature if temperature != 1.0 else bias.detach())
        use_triton = impl == "triton" or (impl == "auto" and hidden.is_cuda and triton_available())
        if use_triton:
            from topkrec.kernels import triton_softmax

            try:
                with torch.autocast(hidden.device.type, enabled=False):
                    return triton_softmax.logsumexp_forward(hidden, weight.detach(), bias, dtype)
            except Exception as err:
                if impl == "triton":
                    raise
                _disable_triton(err)
        return chunked_logsumexp(hidden, weight.detach(), bias, chunk_size, dtype)


def target_logits(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, actions: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """(B,) fp32 h_b · w_{a_b} + b_{a_b}, with the same input rounding as the chunk matmuls."""
    acc = _acc_dtype(dtype)
    w_a = weight[actions].to(dtype).to(acc)
    out = (hidden.to(dtype).to(acc) * w_a).sum(dim=1)
    if bias is not None:
        out = out + bias[actions].to(acc)
    return out


def _torch_forward(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, chunk: int, dtype: torch.dtype
) -> torch.Tensor:
    return chunked_logsumexp(hidden, weight, bias, chunk, dtype)


def _torch_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lse: torch.Tensor,
    g: torch.Tensor,
    chunk: int,
    dtype: torch.dtype,
    need: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The −g·p parts of the three gradients (the one-hot parts are added by the caller)."""
    n_items = weight.shape[0]
    hidden_c = hidden.to(dtype)
    acc = _acc_dtype(dtype)
    grad_h = torch.zeros(hidden.shape, device=hidden.device, dtype=acc) if need[0] else None
    grad_w = torch.empty(weight.shape, device=weight.device, dtype=acc) if need[1] else None
    grad_b = torch.empty((n_items,), device=weight.device, dtype=acc) if need[2] else None
    for start in range(0, n_items, chunk):
        end = min(start + chunk, n_items)
        logits = _chunk_logits(hidden_c, weight, bias, start, end, dtype)  # (B, C)
        # g·p in place: logits → logits − lse → p → g·p; then cast once for the matmuls.
        coef = logits.sub_(lse[:, None]).exp_().mul_(g[:, None])
        if grad_b is not None:
            torch.sum(coef, dim=0, out=grad_b[start:end])
            grad_b[start:end].neg_()
        coef_c = coef.to(dtype)
        if grad_h is not None:
            grad_h.sub_((coef_c @ weight[start:end].to(dtype)).to(acc))
        if grad_w is not None:
            grad_w[start:end] = (coef_c.t() @ hidden_c).to(acc).neg_()
    return grad_h, grad_w, grad_b


class LinearLogSoftmaxGather(torch.autograd.Function):
    """(B,) log softmax(h Wᵀ + b)[b, a_b], computed tile by tile; see the module docstring."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        actions: torch.Tensor,
        chunk_size: int,
        compute_dtype: torch.dtype,
        use_triton: bool,
        strict: bool,
    ) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            lse = None
            if use_triton:
                from topkrec.kernels import triton_softmax

                try:
                    lse = triton_softmax.logsumexp_forward(hidden, weight, bias, compute_dtype)
                except Exception as err:
                    if strict:
                        raise
                    _disable_triton(err)
                    use_triton = False
            if lse is None:
                lse = _torch_forward(hidden, weight, bias, chunk_size, compute_dtype)
            logp = target_logits(hidden, weight, bias, actions, compute_dtype) - lse
        ctx.save_for_backward(hidden, weight, bias, actions, lse)
        ctx.chunk_size = chunk_size
        ctx.compute_dtype = compute_dtype
        ctx.use_triton = use_triton
        ctx.strict = strict
        return logp

    @staticmethod
    def backward(ctx: Any, grad_logp: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        hidden, weight, bias, actions, lse = ctx.saved_tensors
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        dtype = ctx.compute_dtype
        acc = _acc_dtype(dtype)
        g = grad_logp.to(acc).contiguous()
        with torch.autocast(hidden.device.type, enabled=False):
            grads = None
            if ctx.use_triton:
                from topkrec.kernels import triton_softmax

                try:
                    grads = triton_softmax.logsumexp_backward(hidden, weight, bias, lse, g, dtype, need)
                except Exception as err:
                    if ctx.strict:
                        raise
                    _disable_triton(err)
            if grads is None:
                grads = _torch_backward(hidden, weight, bias, lse, g, ctx.chunk_size, dtype, need)
            grad_h, grad_w, grad_b = grads
            # The one-hot parts: +g_b at (b, a_b).
            if grad_h is not None:
                grad_h += g[:, None] * weight[actions].to(dtype).to(acc)
                grad_h = grad_h.to(hidden.dtype)
            if grad_w is not None:
                grad_w.index_add_(0, actions, g[:, None] * hidden.to(dtype).to(acc))
                grad_w = grad_w.to(weight.dtype)
            if grad_b is not None and bias is not None:
                grad_b.index_add_(0, actions, g)
                grad_b = grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None


def chunked_linear_log_softmax_gather(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    actions: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    compute_dtype: torch.dtype | None = None,
    impl: Impl = "auto",
) -> torch.Tensor:
    """(B,) fp32 log softmax((h Wᵀ + b) / T)[b, a_b], differentiable in h, W and b.

    ``impl``: ``auto`` picks the Triton kernels on CUDA when Triton is installed, else the chunked
    PyTorch path; ``torch``/``triton`` force one. ``compute_dtype`` defaults to the autocast dtype
    when autocast is on (bf16 on CUDA), else the dtype of ``hidden``.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden (B, d) and weight (N, d) expected, got {tuple(hidden.shape)}, {tuple(weight.shape)}")
    if actions.shape != hidden.shape[:1]:
        raise ValueError(f"actions (B,) expected for hidden {tuple(hidden.shape)}, got {tuple(actions.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias (N,) expected for weight {tuple(weight.shape)}, got {tuple(bias.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    dtype = resolve_compute_dtype(hidden, compute_dtype)
    if impl == "auto":
        use_triton = hidden.is_cuda and triton_available()
    elif impl == "triton":
        if not (hidden.is_cuda and triton_available()):
            raise RuntimeError("impl='triton' needs a CUDA tensor and an importable triton")
        use_triton = True
    elif impl == "torch":
        use_triton = False
    else:
        raise ValueError(f"impl must be auto, torch or triton, got {impl!r}")
    if temperature != 1.0:
        # (h·w + b)/T = (h/T)·w + b/T: scale the small operands, not the (B × N) logits.
        hidden = hidden / temperature
        bias = bias / temperature if bias is not None else None
    chunk = chunk_size or default_chunk_size(hidden.shape[0], weight.shape[0])
    logp: torch.Tensor = LinearLogSoftmaxGather.apply(
        hidden, weight, bias, actions.long(), int(chunk), dtype, bool(use_triton), impl == "triton"
    )
    return logp


def chunked_topk(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    k: int,
    chunk_size: int | None = None,
    exclude: torch.Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` (scores (B, k) fp32, items (B, k) int64) of h Wᵀ + b, one catalogue chunk at a time.

    ``exclude`` (B, E) int64 item ids (e.g. already-consumed items, padded with −1) are never returned.
    Memory is O(B × (chunk + k)); the result equals ``torch.topk`` on the full logits (ties aside).
    """
    n_items = weight.shape[0]
    if not 1 <= k <= n_items:
        raise ValueError(f"k must be in [1, {n_items}], got {k}")
    dtype = resolve_compute_dtype(hidden, compute_dtype)
    chunk = chunk_size or default_chunk_size(hidden.shape[0], n_items)
    rows = hidden.shape[0]
    best_scores = torch.full((rows, k), float("-inf"), device=hidden.device, dtype=torch.float32)
    best_items = torch.full((rows, k), -1, device=hidden.device, dtype=torch.int64)
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        hidden_c = hidden.detach().to(dtype)
        for start in range(0, n_items, chunk):
            end = min(start + chunk, n_items)
            logits = _chunk_logits(
                hidden_c, weight.detach(), None if bias is None else bias.detach(), start, end, dtype
            )
            if exclude is not None:
                local = exclude - start
                ok = (local >= 0) & (local < end - start)
                rows_idx = torch.arange(rows, device=hidden.device)[:, None].expand_as(local)
                logits[rows_idx[ok], local[ok]] = float("-inf")
            kk = min(k, end - start)
            scores, idx = torch.topk(logits, kk, dim=1)
            merged_scores = torch.cat([best_scores, scores], dim=1)
            merged_items = torch.cat([best_items, idx + start], dim=1)
            top_scores, pos = torch.topk(merged_scores, k, dim=1)
            best_scores = top_scores
            best_items = merged_items.gather(1, pos)
    return best_scores, best_items
