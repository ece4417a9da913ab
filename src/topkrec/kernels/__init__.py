"""log softmax(h Wᵀ + b)[b, a_b] for training a softmax over the catalogue: one function, three kernels.

Training needs, per row, only the log-probability of the logged action and its gradient (DESIGN §3).
``linear_log_softmax_gather`` picks the kernel:

- ``fused`` (:mod:`topkrec.kernels.fused`): one (B, N) buffer, a one-pass backward — the fast path on CPU;
- ``chunked`` (:mod:`topkrec.kernels.chunked`): catalogue chunks, O(B × chunk) memory — for catalogues whose
  (B, N) logits do not fit;
- ``triton`` (:mod:`topkrec.kernels.triton_softmax`): tiled CUDA kernels that never write the logits.

``auto`` takes Triton on CUDA when it can be imported, the chunked path when a ``chunk_size`` is given, and
the fused path otherwise.
"""

from __future__ import annotations

from typing import Literal

import torch

from topkrec.kernels.chunked import (
    DEFAULT_CHUNK_ELEMENTS,
    catalogue_logsumexp,
    chunked_linear_log_softmax_gather,
    chunked_topk,
    default_chunk_size,
    resolve_compute_dtype,
    target_logits,
    triton_available,
)
from topkrec.kernels.fused import fused_linear_log_softmax_gather

__all__ = [
    "DEFAULT_CHUNK_ELEMENTS",
    "Kernel",
    "catalogue_logsumexp",
    "chunked_topk",
    "default_chunk_size",
    "linear_log_softmax_gather",
    "resolve_compute_dtype",
    "target_logits",
    "triton_available",
]

Kernel = Literal["auto", "fused", "chunked", "triton"]


def linear_log_softmax_gather(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    actions: torch.Tensor,
    temperature: float = 1.0,
    *,
    impl: Kernel = "auto",
    chunk_size: int | None = None,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """(B,) fp32 log softmax((h Wᵀ + b) / T)[b, a_b], differentiable in h, W and b (see the module docstring).

    ``chunk_size`` and ``compute_dtype`` apply to the chunked and Triton kernels (``compute_dtype``
    defaults to the autocast dtype when autocast is on, else the dtype of ``hidden``).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden (B, d) and weight (N, d) expected, got {tuple(hidden.shape)}, {tuple(weight.shape)}")
    if actions.shape != hidden.shape[:1]:
        raise ValueError(f"actions (B,) expected for hidden {tuple(hidden.shape)}, got {tuple(actions.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias (N,) expected for weight {tuple(weight.shape)}, got {tuple(bias.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if impl == "auto":
        if hidden.is_cuda and triton_available():
            impl = "triton"
        else:
            impl = "chunked" if chunk_size is not None or compute_dtype is not None or bias is None else "fused"
    if impl == "fused":
        if bias is None:
            raise ValueError("the fused kernel needs a bias; use impl='chunked'")
        return fused_linear_log_softmax_gather(hidden, weight, bias, actions, temperature)
    if impl in ("chunked", "triton"):
        return chunked_linear_log_softmax_gather(
            hidden,
            weight,
            bias,
            actions,
            temperature,
            chunk_size=chunk_size,
            compute_dtype=compute_dtype,
            impl="torch" if impl == "chunked" else "triton",
        )
    raise ValueError(f"impl must be auto, fused, chunked or triton, got {impl!r}")
