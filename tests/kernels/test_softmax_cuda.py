"""CUDA-only checks of the fused softmax: the Triton kernels against the PyTorch reference.

Skipped without CUDA (tests/conftest.py); run on the GPU machine by benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from topkrec.kernels import chunked_topk, linear_log_softmax_gather, triton_available

pytestmark = pytest.mark.cuda


def _problem(b: int, n: int, d: int, seed: int = 0, bias: bool = True):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    hidden = torch.randn(b, d, generator=gen, device="cuda").requires_grad_()
    weight = (torch.randn(n, d, generator=gen, device="cuda") * 0.3).requires_grad_()
    b_ = torch.randn(n, generator=gen, device="cuda").requires_grad_() if bias else None
    actions = torch.randint(0, n, (b,), generator=gen, device="cuda")
    grad_out = torch.randn(b, generator=gen, device="cuda")
    return hidden, weight, b_, actions, grad_out


def _reference(hidden, weight, bias, actions, dtype=torch.float64):
    logits = hidden.to(dtype) @ weight.to(dtype).t()
    if bias is not None:
        logits = logits + bias.to(dtype)
    return F.log_softmax(logits, dim=-1).gather(1, actions[:, None]).squeeze(1)


def _grads(out, grad_out, tensors):
    return torch.autograd.grad(out, [t for t in tensors if t is not None], grad_out.to(out.dtype))


def _needs_triton() -> None:
    if not triton_available():
        pytest.skip("triton not installed")


@pytest.mark.parametrize(
    ("b", "n", "d", "bias"), [(64, 5000, 64, True), (100, 1237, 40, False), (4096, 20000, 64, True)]
)
@pytest.mark.parametrize("impl", ["chunked", "triton"])
def test_fp32_matches_reference(b, n, d, bias, impl):
    if impl == "triton":
        _needs_triton()
    hidden, weight, b_, actions, grad_out = _problem(b, n, d, bias=bias)
    out = linear_log_softmax_gather(hidden, weight, b_, actions, impl=impl, chunk_size=1000)
    ref = _reference(hidden, weight, b_, actions)
    # fp32 reductions in another order than fp64: 1e-5 relative to the log-sum-exp magnitude.
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-5)
    tensors = (hidden, weight, b_)
    for got, want in zip(_grads(out, grad_out, tensors), _grads(ref, grad_out, tensors), strict=True):
        torch.testing.assert_close(got.double(), want.double(), atol=1e-5, rtol=1e-4)


def test_triton_bf16_matches_reference_on_rounded_inputs():
    _needs_triton()
    hidden, weight, bias, actions, grad_out = _problem(512, 30000, 64)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = linear_log_softmax_gather(hidden, weight, bias, actions)
    assert out.dtype == torch.float32
    ref = _reference(hidden.bfloat16(), weight.bfloat16(), bias, actions)
    # Inputs rounded alike; products accumulated in fp32 by the kernel: only tiny differences.
    torch.testing.assert_close(out.double(), ref, atol=2e-3, rtol=0)
    got = _grads(out, grad_out, (hidden, weight, bias))
    want = _grads(_reference(hidden, weight, bias, actions), grad_out, (hidden, weight, bias))
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32
        assert float((g.double() - w).abs().max()) <= 0.02 * float(w.abs().max()) + 1e-4


def test_auto_picks_triton_and_agrees_with_torch_path():
    _needs_triton()
    hidden, weight, bias, actions, grad_out = _problem(256, 160_000, 64, seed=1)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fused = linear_log_softmax_gather(hidden, weight, bias, actions)  # auto → triton
        chunked = linear_log_softmax_gather(hidden, weight, bias, actions, impl="chunked")
    # The torch path rounds bf16 logits to bf16; the kernel keeps fp32: agree to bf16 precision.
    torch.testing.assert_close(fused, chunked, atol=0.1, rtol=0)
    g1 = _grads(fused, grad_out, (hidden, weight, bias))
    g2 = _grads(chunked, grad_out, (hidden, weight, bias))
    for a, b in zip(g1, g2, strict=True):
        assert float((a - b).abs().max()) <= 0.05 * float(b.abs().max()) + 1e-4


def test_triton_does_not_allocate_the_logits():
    _needs_triton()
    b, n, d = 4096, 200_000, 64
    hidden, weight, bias, actions, grad_out = _problem(b, n, d, seed=2)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        linear_log_softmax_gather(hidden, weight, bias, actions).backward(grad_out)  # warm-up / autotune
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = linear_log_softmax_gather(hidden, weight, bias, actions)
        out.backward(grad_out)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    logits_bytes = b * n * 2  # even one bf16 (B × N) matrix
    assert extra < logits_bytes / 4, f"extra {extra / 2**20:.0f} MiB vs logits {logits_bytes / 2**20:.0f} MiB"


def test_chunked_topk_on_cuda_matches_topk():
    hidden, weight, bias, _, _ = _problem(300, 50_000, 64, seed=4)
    with torch.no_grad():
        scores, items = chunked_topk(hidden, weight, bias, k=20, chunk_size=4096)
        want = torch.topk(hidden @ weight.t() + bias, 20, dim=1)
    torch.testing.assert_close(scores, want.values, atol=1e-4, rtol=1e-5)
    assert float((items == want.indices).float().mean()) > 0.99  # ties/rounding aside
