"""The chunked linear + log-softmax + gather against the plain log_softmax(...).gather reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from topkrec.kernels import chunked_topk, default_chunk_size, linear_log_softmax_gather
from topkrec.kernels.chunked import chunked_logsumexp


@pytest.fixture(autouse=True)
def _one_thread():
    """Small ops: one intra-op thread avoids stalls when the 2 shared cores are busy (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _problem(b: int, n: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float32, bias: bool = True):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, d, generator=gen, dtype=dtype)
    weight = (torch.randn(n, d, generator=gen, dtype=dtype) * 0.5).requires_grad_()
    b_ = (torch.randn(n, generator=gen, dtype=dtype)).requires_grad_() if bias else None
    actions = torch.randint(0, n, (b,), generator=gen)
    grad_out = torch.randn(b, generator=gen, dtype=dtype)
    return hidden.requires_grad_(), weight, b_, actions, grad_out


def _reference(hidden, weight, bias, actions, temperature=1.0):
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    logits = logits / temperature
    return F.log_softmax(logits, dim=-1).gather(1, actions[:, None]).squeeze(1)


def _grads(out, grad_out, tensors):
    return torch.autograd.grad(out, [t for t in tensors if t is not None], grad_out)


def _assert_grads_match(out, ref, grad_out, tensors, tol=1e-5):
    """The gradients of ``out`` and of the reference ``ref`` with respect to ``tensors`` agree (shapes included)."""
    for got, want in zip(_grads(out, grad_out, tensors), _grads(ref, grad_out, tensors), strict=True):
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)


@pytest.mark.parametrize(
    ("b", "n", "d", "chunk", "bias", "temperature"),
    [
        (7, 1000, 16, 97, True, 1.0),  # chunk does not divide n
        (32, 513, 8, 513, True, 1.0),  # one chunk
        (16, 2000, 64, 256, False, 1.0),  # no bias
        (5, 300, 12, 64, True, 0.5),  # temperature
        (1, 50, 3, 7, True, 2.0),
    ],
)
def test_values_and_gradients_match_log_softmax_gather(b, n, d, chunk, bias, temperature):
    hidden, weight, b_, actions, grad_out = _problem(b, n, d, bias=bias)
    ref = _reference(hidden, weight, b_, actions, temperature)
    out = linear_log_softmax_gather(hidden, weight, b_, actions, temperature=temperature, chunk_size=chunk)
    assert out.shape == (b,) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    _assert_grads_match(out, ref, grad_out, (hidden, weight, b_))


def test_gradcheck_float64():
    hidden, weight, bias, actions, _ = _problem(4, 37, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda h, w, b: linear_log_softmax_gather(h, w, b, actions, chunk_size=10), (hidden, weight, bias)
    )


def test_repeated_actions_accumulate_into_the_same_row():
    """Several rows with the same action: the one-hot part of ∂/∂W must add, not overwrite."""
    hidden, weight, bias, _, grad_out = _problem(12, 40, 6)
    actions = torch.tensor([3, 3, 3, 0, 39, 39, 5, 5, 5, 5, 1, 3])
    out = linear_log_softmax_gather(hidden, weight, bias, actions, chunk_size=9)
    ref = _reference(hidden, weight, bias, actions)
    _assert_grads_match(out, ref, grad_out, (hidden, weight, bias))


def test_only_requested_gradients_are_computed():
    hidden, weight, bias, actions, grad_out = _problem(6, 90, 4)
    weight.requires_grad_(False)
    out = linear_log_softmax_gather(hidden.detach(), weight, bias, actions, chunk_size=32)
    (grad_b,) = torch.autograd.grad(out, [bias], grad_out)
    (want,) = torch.autograd.grad(_reference(hidden.detach(), weight, bias, actions), [bias], grad_out)
    torch.testing.assert_close(grad_b, want, atol=1e-5, rtol=1e-5)


def test_bf16_compute_keeps_fp32_log_probs_close():
    hidden, weight, bias, actions, grad_out = _problem(16, 3000, 32)
    out = linear_log_softmax_gather(hidden, weight, bias, actions, chunk_size=500, compute_dtype=torch.bfloat16)
    assert out.dtype == torch.float32
    # Reference on the bf16-rounded inputs, computed in fp64: only the matmul accumulation differs.
    ref = _reference(hidden.bfloat16().double(), weight.bfloat16().double(), bias.double(), actions).float()
    torch.testing.assert_close(out, ref, atol=0.05, rtol=0.0)
    grads = _grads(out, grad_out, (hidden, weight, bias))
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    want = _grads(_reference(hidden, weight, bias, actions), grad_out, (hidden, weight, bias))
    for got, ref_g in zip(grads, want, strict=True):
        assert (got - ref_g).abs().max() <= 0.05 * ref_g.abs().max() + 1e-3


def test_cpu_autocast_uses_bf16_matmuls_but_returns_fp32():
    hidden, weight, bias, actions, _ = _problem(8, 400, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_log_softmax_gather(hidden, weight, bias, actions, chunk_size=100)
    assert out.dtype == torch.float32
    exact = _reference(hidden, weight, bias, actions)
    assert not torch.equal(out, exact)  # the bf16 rounding is visible …
    torch.testing.assert_close(out, exact, atol=0.05, rtol=0.0)  # … but small


def test_log_probs_are_normalised():
    """Σ_a exp(log π(a|s)) = 1 for every row, computed with one call per action."""
    hidden, weight, bias, _, _ = _problem(3, 25, 4)
    with torch.no_grad():
        rows = hidden.repeat_interleave(25, dim=0)
        actions = torch.arange(25).repeat(3)
        logp = linear_log_softmax_gather(rows, weight, bias, actions, chunk_size=6).view(3, 25)
    torch.testing.assert_close(logp.exp().sum(dim=1), torch.ones(3), atol=1e-6, rtol=0)


def test_chunked_logsumexp_matches_torch():
    hidden, weight, bias, _, _ = _problem(9, 777, 10)
    with torch.no_grad():
        want = torch.logsumexp(hidden @ weight.t() + bias, dim=1)
        torch.testing.assert_close(chunked_logsumexp(hidden, weight, bias, chunk_size=100), want, atol=1e-5, rtol=0)
        torch.testing.assert_close(chunked_logsumexp(hidden, weight, None), torch.logsumexp(hidden @ weight.t(), 1))


def test_chunked_topk_matches_topk_and_excludes():
    hidden, weight, bias, _, _ = _problem(6, 1000, 8, seed=3)
    with torch.no_grad():
        logits = hidden @ weight.t() + bias
        scores, items = chunked_topk(hidden, weight, bias, k=10, chunk_size=64)
        want_scores, want_items = torch.topk(logits, 10, dim=1)
        torch.testing.assert_close(scores, want_scores)
        assert torch.equal(items, want_items)
        exclude = torch.cat([want_items[:, :3], torch.full((6, 2), -1)], dim=1)  # (B, 5), −1 = padding
        scores2, items2 = chunked_topk(hidden, weight, bias, k=10, chunk_size=64, exclude=exclude)
        masked = logits.clone()
        masked.scatter_(1, want_items[:, :3], float("-inf"))
        want2 = torch.topk(masked, 10, dim=1).indices
        assert torch.equal(items2, want2)
        assert not (items2[:, :, None] == want_items[:, None, :3]).any()


def test_chunked_topk_rejects_bad_k():
    hidden, weight, bias, _, _ = _problem(2, 10, 3)
    with pytest.raises(ValueError):
        chunked_topk(hidden, weight, bias, k=11)


def test_shape_errors_are_clear():
    hidden, weight, bias, actions, _ = _problem(4, 10, 3)
    with pytest.raises(ValueError, match="actions"):
        linear_log_softmax_gather(hidden, weight, bias, actions[:2])
    with pytest.raises(ValueError, match="weight"):
        linear_log_softmax_gather(hidden, weight[:, :2], bias, actions)
    with pytest.raises(RuntimeError, match="triton"):
        linear_log_softmax_gather(hidden, weight, bias, actions, impl="triton")


def test_default_chunk_size_bounds():
    assert default_chunk_size(128, 1_000_000) == (1 << 22) // 128
    assert default_chunk_size(128, 1000) == 1000
    assert default_chunk_size(1 << 30, 1_000_000) == 256


# --- the fused one-buffer kernel (the CPU default of the full head) ---------------------------------------------


@pytest.mark.parametrize(
    ("b", "n", "d", "temperature"),
    [(7, 1000, 16, 1.0), (32, 513, 8, 1.0), (5, 300, 12, 0.5), (1, 50, 3, 2.0), (128, 2049, 64, 1.0)],
)
def test_fused_kernel_matches_log_softmax_gather(b, n, d, temperature):
    hidden, weight, bias, actions, grad_out = _problem(b, n, d)
    ref = _reference(hidden, weight, bias, actions, temperature)
    out = linear_log_softmax_gather(hidden, weight, bias, actions, temperature=temperature, impl="fused")
    assert out.shape == (b,) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    _assert_grads_match(out, ref, grad_out, (hidden, weight, bias))


def test_fused_kernel_float64_and_repeated_actions():
    """fp64 stays fp64 (no downcast) and matches autograd to fp64 precision; rows sharing an action add their
    one-hot parts. (gradcheck cannot run here: it reuses one graph for many backward passes.)"""
    hidden, weight, bias, _, grad_out = _problem(6, 23, 5, dtype=torch.float64)
    actions = torch.tensor([3, 3, 0, 22, 3, 22])
    out = linear_log_softmax_gather(hidden, weight, bias, actions, temperature=0.7, impl="fused")
    ref = _reference(hidden, weight, bias, actions, 0.7)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    _assert_grads_match(out, ref, grad_out, (hidden, weight, bias), tol=1e-12)


def test_fused_kernel_only_requested_gradients_and_one_backward():
    hidden, weight, bias, actions, grad_out = _problem(6, 90, 4)
    weight.requires_grad_(False)
    out = linear_log_softmax_gather(hidden.detach(), weight, bias, actions, impl="fused")
    (grad_b,) = torch.autograd.grad(out, [bias], grad_out, retain_graph=True)
    (want,) = torch.autograd.grad(_reference(hidden.detach(), weight, bias, actions), [bias], grad_out)
    torch.testing.assert_close(grad_b, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="one backward pass"):
        torch.autograd.grad(out, [bias], grad_out)
