"""Triton kernels for the fused linear + log-softmax + gather (imported only on CUDA with Triton).

Three kernels, none of which writes a logit to memory (cf. Wijmans et al., "Cut Your Losses in
Large-Vocabulary Language Models", 2024, which does the same for language-model heads):

- ``_lse_fwd``: grid (row blocks × catalogue splits). Each program loads its (BLOCK_B × d) rows of h
  once and streams its split of W in (BLOCK_N × d) tiles, keeping an online max / sum-of-exp per row
  (fp32). The per-split (max, sum) pairs are merged by a tiny logsumexp in PyTorch.
- ``_grad_h``: same grid; recomputes each logit tile, p = exp(logit − lse), and accumulates
  Σ_j g·p_bj w_j into a (BLOCK_B × d) fp32 accumulator; per-split partials are summed in PyTorch.
- ``_grad_w``: grid over catalogue tiles; each program streams all rows and accumulates
  Σ_b g_b p_bj h_b (BLOCK_N × d) and Σ_b g_b p_bj (BLOCK_N,) in registers. No atomics, so the
  result is deterministic and autotuning (which re-runs kernels) is safe.

The one-hot terms of the gradients and the target logit are added by the caller
(:mod:`topkrec.kernels.chunked`), which owns the autograd Function and the PyTorch fallback.
Matmuls take bf16 (or fp32, then exact IEEE products) inputs with fp32 accumulation.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
import triton
import triton.language as tl

__all__ = ["logsumexp_backward", "logsumexp_forward"]

# Under TRITON_INTERPRET=1 (kernels run on CPU tensors, used to check the maths without a GPU) the
# autotuner cannot time anything: launch one fixed config instead.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_INTERPRET_CONFIG = {"BLOCK_B": 32, "BLOCK_N": 64}

# Catalogue splits are multiples of this, so every autotuned BLOCK_N divides a split exactly.
_SPLIT_ALIGN = 256


def _configs() -> list[triton.Config]:
    # Few configs: each one is compiled per kernel and dtype on first use (about a second each).
    return [
        triton.Config({"BLOCK_B": 64, "BLOCK_N": 128}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_B": 128, "BLOCK_N": 128}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_B": 128, "BLOCK_N": 64}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_B": 256, "BLOCK_N": 64}, num_warps=8, num_stages=3),
    ]


@triton.autotune(configs=_configs(), key=["rows_bucket", "n_cols", "BLOCK_D", "PRECISION"])
@triton.jit
def _lse_fwd(
    H,
    W,
    Bias,
    PartMax,
    PartSum,
    n_rows,
    rows_bucket,  # only in the autotune key (see _rows_bucket)
    n_cols,
    d,
    cols_per_split,
    stride_h,
    stride_w,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    h = tl.load(H + rows[:, None] * stride_h + dims[None, :], mask=row_ok[:, None] & (dims[None, :] < d), other=0.0)
    col_start = pid_s * cols_per_split
    col_end = tl.minimum(col_start + cols_per_split, n_cols)
    run_max = tl.full((BLOCK_B,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for c0 in range(col_start, col_end, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_ok = cols < col_end
        w = tl.load(W + cols[:, None] * stride_w + dims[None, :], mask=col_ok[:, None] & (dims[None, :] < d), other=0.0)
        logits = tl.dot(h, tl.trans(w), input_precision=PRECISION)  # (BLOCK_B, BLOCK_N) fp32
        logits += tl.load(Bias + cols, mask=col_ok, other=0.0)[None, :]
        logits = tl.where(col_ok[None, :], logits, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(logits, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        run_max = new_max
    tl.store(PartMax + pid_s * n_rows + rows, run_max, mask=row_ok)
    tl.store(PartSum + pid_s * n_rows + rows, run_sum, mask=row_ok)


@triton.autotune(configs=_configs(), key=["rows_bucket", "n_cols", "BLOCK_D", "PRECISION"])
@triton.jit
def _grad_h(
    H,
    W,
    Bias,
    Lse,
    G,
    PartGradH,
    n_rows,
    rows_bucket,  # only in the autotune key (see _rows_bucket)
    n_cols,
    d,
    cols_per_split,
    stride_h,
    stride_w,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    dim_ok = dims < d
    h = tl.load(H + rows[:, None] * stride_h + dims[None, :], mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    lse = tl.load(Lse + rows, mask=row_ok, other=0.0)
    g = tl.load(G + rows, mask=row_ok, other=0.0)
    col_start = pid_s * cols_per_split
    col_end = tl.minimum(col_start + cols_per_split, n_cols)
    acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    for c0 in range(col_start, col_end, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_ok = cols < col_end
        w = tl.load(W + cols[:, None] * stride_w + dims[None, :], mask=col_ok[:, None] & dim_ok[None, :], other=0.0)
        logits = tl.dot(h, tl.trans(w), input_precision=PRECISION)
        logits += tl.load(Bias + cols, mask=col_ok, other=0.0)[None, :]
        coef = tl.exp(logits - lse[:, None]) * g[:, None]
        coef = tl.where(row_ok[:, None] & col_ok[None, :], coef, 0.0)
        acc += tl.dot(coef.to(w.dtype), w, input_precision=PRECISION)
    out = PartGradH + pid_s * n_rows * BLOCK_D + rows[:, None] * BLOCK_D + dims[None, :]
    tl.store(out, acc, mask=row_ok[:, None])


@triton.autotune(configs=_configs(), key=["rows_bucket", "n_cols", "BLOCK_D", "PRECISION"])
@triton.jit
def _grad_w(
    H,
    W,
    Bias,
    Lse,
    G,
    GradW,
    GradB,
    n_rows,
    rows_bucket,  # only in the autotune key (see _rows_bucket)
    n_cols,
    d,
    stride_h,
    stride_w,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    col_ok = cols < n_cols
    dim_ok = dims < d
    w = tl.load(W + cols[:, None] * stride_w + dims[None, :], mask=col_ok[:, None] & dim_ok[None, :], other=0.0)
    bias = tl.load(Bias + cols, mask=col_ok, other=0.0)
    acc_w = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for r0 in range(0, n_rows, BLOCK_B):
        rows = r0 + tl.arange(0, BLOCK_B)
        row_ok = rows < n_rows
        h = tl.load(H + rows[:, None] * stride_h + dims[None, :], mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
        lse = tl.load(Lse + rows, mask=row_ok, other=0.0)
        g = tl.load(G + rows, mask=row_ok, other=0.0)
        logits = tl.dot(h, tl.trans(w), input_precision=PRECISION)  # (BLOCK_B, BLOCK_N)
        logits += bias[None, :]
        coef = tl.exp(logits - lse[:, None]) * g[:, None]
        coef = tl.where(row_ok[:, None] & col_ok[None, :], coef, 0.0)
        acc_w += tl.dot(tl.trans(coef.to(h.dtype)), h, input_precision=PRECISION)
        acc_b += tl.sum(coef, axis=0)
    tl.store(GradW + cols[:, None] * d + dims[None, :], -acc_w, mask=col_ok[:, None] & dim_ok[None, :])
    tl.store(GradB + cols, -acc_b, mask=col_ok)


def _launch(kernel: Any, grid: Any, *args: Any, **kwargs: Any) -> None:
    if _INTERPRET:
        kernel.fn[grid](*args, **kwargs, **_INTERPRET_CONFIG)
    else:
        kernel[grid](*args, **kwargs)


def _rows_bucket(n_rows: int) -> int:
    """The row count rounded up to a power of two: the autotuner's key. Keyed on the exact count, every new
    batch size (the policy rows of a batch vary when some rewards are zero) would re-run the tuning."""
    return int(triton.next_power_of_2(max(1, n_rows)))


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":  # TRITON_INTERPRET=1 runs the kernels on CPU tensors
        return 4
    return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _cuda_sms(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


def _splits(n_rows: int, n_cols: int, device: torch.device) -> tuple[int, int]:
    """(number of catalogue splits, columns per split) so that ~4 programs per SM are in flight."""
    row_blocks = triton.cdiv(n_rows, 64)
    want = max(1, (4 * _num_sms(device)) // max(1, row_blocks))
    max_splits = triton.cdiv(n_cols, _SPLIT_ALIGN)
    splits = max(1, min(want, max_splits))
    cols_per_split = triton.cdiv(triton.cdiv(n_cols, splits), _SPLIT_ALIGN) * _SPLIT_ALIGN
    splits = triton.cdiv(n_cols, cols_per_split)  # every split non-empty
    return splits, cols_per_split


def _prepare(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, str]:
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"unsupported compute dtype {dtype}")
    h = hidden.detach().to(dtype).contiguous()
    w = weight.detach().to(dtype).contiguous()
    # A zero bias when there is none keeps one kernel variant (N floats: negligible next to W).
    b = bias.detach().float().contiguous() if bias is not None else h.new_zeros(w.shape[0], dtype=torch.float32)
    block_d = max(16, triton.next_power_of_2(h.shape[1]))
    precision = "ieee" if dtype == torch.float32 else "tf32"  # ignored for 16-bit inputs
    return h, w, b, block_d, precision


def logsumexp_forward(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """(B,) fp32 logsumexp_j (h Wᵀ + b)_j without writing the logits."""
    h, w, b, block_d, precision = _prepare(hidden, weight, bias, dtype)
    n_rows, n_cols = h.shape[0], w.shape[0]
    splits, cols_per_split = _splits(n_rows, n_cols, h.device)
    part_max = torch.empty((splits, n_rows), device=h.device, dtype=torch.float32)
    part_sum = torch.empty((splits, n_rows), device=h.device, dtype=torch.float32)

    def grid(meta: dict[str, int]) -> tuple[int, int]:
        return (triton.cdiv(n_rows, meta["BLOCK_B"]), splits)

    _launch(
        _lse_fwd,
        grid,
        h,
        w,
        b,
        part_max,
        part_sum,
        n_rows,
        _rows_bucket(n_rows),
        n_cols,
        h.shape[1],
        cols_per_split,
        h.stride(0),
        w.stride(0),
        BLOCK_D=block_d,
        PRECISION=precision,
    )
    return torch.logsumexp(part_max + torch.log(part_sum), dim=0)


def logsumexp_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lse: torch.Tensor,
    g: torch.Tensor,
    dtype: torch.dtype,
    need: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The −g·p parts of ∂/∂h (B, d), ∂/∂W (N, d), ∂/∂b (N,) in fp32 (one-hot parts not included)."""
    h, w, b, block_d, precision = _prepare(hidden, weight, bias, dtype)
    n_rows, n_cols, d = h.shape[0], w.shape[0], h.shape[1]
    lse = lse.float().contiguous()
    g = g.float().contiguous()
    grad_h = grad_w = grad_b = None
    if need[0]:
        splits, cols_per_split = _splits(n_rows, n_cols, h.device)
        part = torch.empty((splits, n_rows, block_d), device=h.device, dtype=torch.float32)

        def grid_h(meta: dict[str, int]) -> tuple[int, int]:
            return (triton.cdiv(n_rows, meta["BLOCK_B"]), splits)

        _launch(
            _grad_h,
            grid_h,
            h,
            w,
            b,
            lse,
            g,
            part,
            n_rows,
            _rows_bucket(n_rows),
            n_cols,
            d,
            cols_per_split,
            h.stride(0),
            w.stride(0),
            BLOCK_D=block_d,
            PRECISION=precision,
        )
        grad_h = (-part.sum(dim=0)[:, :d]).contiguous()
    if need[1] or need[2]:
        gw = torch.empty((n_cols, d), device=h.device, dtype=torch.float32)
        gb = torch.empty((n_cols,), device=h.device, dtype=torch.float32)

        def grid_w(meta: dict[str, int]) -> tuple[int]:
            return (triton.cdiv(n_cols, meta["BLOCK_N"]),)

        _launch(
            _grad_w,
            grid_w,
            h,
            w,
            b,
            lse,
            g,
            gw,
            gb,
            n_rows,
            _rows_bucket(n_rows),
            n_cols,
            d,
            h.stride(0),
            w.stride(0),
            BLOCK_D=block_d,
            PRECISION=precision,
        )
        grad_w = gw if need[1] else None
        grad_b = gb if need[2] else None
    return grad_h, grad_w, grad_b
