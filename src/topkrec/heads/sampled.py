"""Sampled softmax for large catalogues (``--softmax sampled``, DESIGN §3).

It follows the head contract of :mod:`topkrec.heads.base`: ``forward(state, actions)`` returns
``HeadOutput(train_logp, logp)`` where ``train_logp`` carries the gradient and ``logp`` is the exact
log-probability of the logged action (detached, fp32) used for the importance weight π/β̂ and the
top-K multiplier λ_K.

Sampled softmax (Jean et al. 2015; Bengio & Senécal 2008). Each batch shares ``negatives`` item ids
drawn with replacement from a proposal Q (log-uniform over the frequency-ordered ids, popularity, or
uniform). With logits l_j = (s·w_j + b_j)/T the training surrogate is the log-Q corrected softmax
over {a} ∪ negatives, with negatives equal to a masked out ("accidental hits"):

    train_logp = log softmax([l_a − log Q(a), l_n − log Q(n) for n in negatives])[0]

Its gradient approximates the full-softmax gradient at a cost O(B·S·d) instead of O(B·N·d).
The importance weight needs log π(a|s) itself, so ``logp`` is, by default (``normaliser="exact"``),

    l_a − logsumexp_j l_j        (the exact normaliser, computed in no-grad catalogue chunks or by
                                  the Triton kernel on CUDA: a full forward pass, no backward)

and with ``normaliser="estimate"`` the normaliser is estimated from the same negatives by importance
sampling (no extra pass):

    Ẑ = exp(l_a) + (1/S) Σ_{n ≠ a} exp(l_n) / Q(n)       E[Ẑ] = Z exactly,  log π̂ = l_a − log Ẑ.

log Ẑ is biased low by Jensen's inequality (so log π̂ is biased high) and its error grows when Q is
far from the model's softmax; benchmarks/bench_scale.py reports the error against the exact value.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from topkrec.errors import TopkrecError
from topkrec.heads.base import HeadOutput, ItemHead, register_head
from topkrec.kernels.chunked import catalogue_logsumexp, resolve_compute_dtype, target_logits

__all__ = [
    "PROPOSALS",
    "SampledSoftmaxHead",
    "gather_rows_sparse_grad",
    "log_uniform_log_q",
    "negatives_logsumexp",
    "sampled_log_prob_estimate",
    "sampled_softmax_log_prob",
    "set_proposal_counts",
]

logger = logging.getLogger(__name__)

Proposal = Literal["log_uniform", "popularity", "uniform"]
PROPOSALS: tuple[str, ...] = ("log_uniform", "popularity", "uniform")
NORMALISERS: tuple[str, ...] = ("exact", "estimate")


def log_uniform_log_q(n_items: int) -> torch.Tensor:
    """(N,) log Q(k) of the log-uniform (Zipfian) proposal Q(k) = log((k+2)/(k+1)) / log(N+1)."""
    k = torch.arange(n_items, dtype=torch.float64)
    return (torch.log1p(1.0 / (k + 1.0)) / math.log(n_items + 1.0)).log().float()


def _per_row(log_q: torch.Tensor) -> torch.Tensor:
    """(S,) shared negatives' log Q → (1, S); (B, S) per-row negatives are kept as they are."""
    return log_q[None, :] if log_q.dim() == 1 else log_q


def sampled_softmax_log_prob(
    target_logit: torch.Tensor,
    negative_logits: torch.Tensor,
    target_log_q: torch.Tensor,
    negative_log_q: torch.Tensor,
    accidental_hit: torch.Tensor,
) -> torch.Tensor:
    """(B,) log-Q corrected sampled-softmax log-probability of the target (the training surrogate).

    target_logit (B,), negative_logits (B, S), target_log_q (B,), negative_log_q (S,), accidental_hit
    (B, S) bool (negative equal to the row's target: excluded). ``negative_log_q`` may also be (B, S).
    """
    pos = (target_logit.float() - target_log_q)[:, None]  # (B, 1)
    neg = negative_logits.float() - _per_row(negative_log_q)  # (B, S)
    neg = neg.masked_fill(accidental_hit, float("-inf"))
    return torch.log_softmax(torch.cat([pos, neg], dim=1), dim=1)[:, 0]


def sampled_log_prob_estimate(
    target_logit: torch.Tensor,
    negative_logits: torch.Tensor,
    negative_log_q: torch.Tensor,
    accidental_hit: torch.Tensor,
) -> torch.Tensor:
    """(B,) l_a − log Ẑ with Ẑ = exp(l_a) + (1/S) Σ_{n≠a} exp(l_n)/Q(n), an unbiased estimate of Z."""
    n_neg = negative_logits.shape[1]
    pos = target_logit.float()[:, None]
    neg = negative_logits.float() - _per_row(negative_log_q) - math.log(n_neg)
    neg = neg.masked_fill(accidental_hit, float("-inf"))
    log_z = torch.logsumexp(torch.cat([pos, neg], dim=1), dim=1)
    return target_logit.float() - log_z


@register_head("sampled")
class SampledSoftmaxHead(ItemHead):
    """Full-softmax parameters (W, b) trained by sampled softmax; see the module docstring.

    ``logits(state)`` is the full (B, N) score matrix, so evaluation and serving treat this head
    exactly like the full softmax.
    """

    proposal_log_q: torch.Tensor  # (N,) log Q(j), saved with the weights
    proposal_cdf: torch.Tensor  # (N,) cumulative Q for inverse-CDF sampling (not saved; rebuilt lazily)
    proposal_from_counts: torch.Tensor  # () bool: Q came from item counts (popularity)

    def __init__(
        self,
        in_dim: int,
        n_items: int,
        negatives: int = 1024,
        proposal: str = "log_uniform",
        normaliser: str = "exact",
        temperature: float = 1.0,
        item_counts: torch.Tensor | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if negatives < 1:
            raise TopkrecError(f"--negatives must be >= 1, got {negatives}")
        if proposal not in PROPOSALS:
            raise TopkrecError(f"unknown proposal {proposal!r}; use one of {', '.join(PROPOSALS)}")
        if normaliser not in NORMALISERS:
            raise TopkrecError(f"unknown normaliser {normaliser!r}; use one of {', '.join(NORMALISERS)}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.in_dim = int(in_dim)
        self.n_items = int(n_items)
        self.negatives = int(negatives)
        self.proposal = proposal
        self.normaliser = normaliser
        self.temperature = float(temperature)
        # Same parameterisation and initialisation as the full softmax head.
        self.weight = nn.Parameter(torch.empty(self.n_items, self.in_dim))
        self.bias = nn.Parameter(torch.zeros(self.n_items))
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(self.in_dim))
        # log Q is saved with the weights, so a loaded head samples from the proposal it was trained with.
        self.register_buffer("proposal_log_q", self._initial_log_q())
        self.register_buffer("proposal_cdf", torch.empty(0), persistent=False)
        self.register_buffer("proposal_from_counts", torch.tensor(False))
        self._warned = False
        # Runtime switch (not an option, not saved): when on, forward gives W and b row-sparse COO
        # gradients (only the rows it gathered), for a lazy sparse Adam (topkrec.train.build_optimizer).
        self.sparse_grad = False
        if item_counts is not None:
            self.set_item_counts(item_counts)

    def _initial_log_q(self) -> torch.Tensor:
        if self.proposal == "uniform":
            return torch.full((self.n_items,), -math.log(self.n_items))
        # popularity before set_item_counts: log-uniform, the popularity of frequency-ordered ids under Zipf.
        return log_uniform_log_q(self.n_items)

    def options(self) -> dict[str, Any]:
        return {
            "negatives": self.negatives,
            "proposal": self.proposal,
            "normaliser": self.normaliser,
            "temperature": self.temperature,
        }

    def set_item_counts(self, counts: torch.Tensor | Sequence[float], smoothing: float = 1.0) -> None:
        """Use Q(j) ∝ count_j + smoothing (the popularity proposal) from train item counts (N,)."""
        c = torch.as_tensor(counts, dtype=torch.float64).flatten()
        if c.shape[0] != self.n_items or bool((c < 0).any()):
            raise TopkrecError(f"item counts must be {self.n_items} non-negative numbers, got shape {tuple(c.shape)}")
        c = c + smoothing
        log_q = (c / c.sum()).log().float()
        with torch.no_grad():
            self.proposal_log_q.copy_(log_q.to(self.proposal_log_q.device))
            self.proposal_from_counts.fill_(True)
        self.proposal_cdf = torch.empty(0, device=self.proposal_log_q.device)

    def _sample(self, device: torch.device) -> torch.Tensor:
        """(S,) int64 negatives drawn with replacement from Q (global torch RNG of ``device``)."""
        s = self.negatives
        if self.proposal == "log_uniform":
            # Inverse CDF: k = ⌊(N+1)^u⌋ − 1 has P(k) = log((k+2)/(k+1)) / log(N+1).
            u = torch.rand(s, device=device, dtype=torch.float64)
            k = torch.floor(torch.exp(u * math.log(self.n_items + 1.0))).long() - 1
            return k.clamp_(0, self.n_items - 1)
        if self.proposal_cdf.numel() != self.n_items or self.proposal_cdf.device != device:
            self.proposal_cdf = torch.cumsum(self.proposal_log_q.double().exp(), 0).to(device)
        u = torch.rand(s, device=device, dtype=torch.float64) * self.proposal_cdf[-1]
        return torch.searchsorted(self.proposal_cdf, u, right=True).clamp_(max=self.n_items - 1)

    def logits(self, state: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, state, self.weight.t()) / self.temperature

    def exact_log_prob(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """(B,) fp32 exact log π(a|s), no gradient: target logit − the chunked catalogue normaliser."""
        with torch.no_grad():
            dtype = resolve_compute_dtype(state, None)
            target = target_logits(state.detach(), self.weight, self.bias, actions, dtype) / self.temperature
            lse = catalogue_logsumexp(state, self.weight, self.bias, self.temperature, compute_dtype=dtype)
            return (target - lse).clamp_max(0.0)

    def forward(self, state: torch.Tensor, actions: torch.Tensor) -> HeadOutput:
        if state.dim() != 2 or actions.shape != state.shape[:1]:
            raise ValueError(f"state (B, d) and actions (B,) expected, got {tuple(state.shape)} {tuple(actions.shape)}")
        actions = actions.long()
        if self.proposal == "popularity" and self.training and not self._warned and not bool(self.proposal_from_counts):
            self._warned = True
            logger.warning("sampled softmax: popularity proposal without item counts; sampling log-uniform ids")
        negatives = self._sample(state.device)  # (S,) shared by the batch
        inv_t = 1.0 / self.temperature
        log_q = self.proposal_log_q
        # Few passes over the (B, S) matrix (they dominate on CPU): 1/T and −log Q(n) ride in the addmm,
        # accidental hits are masked in place on the rows that have one, and the surrogate, its
        # gradient and the normaliser estimate all come from one logsumexp over the negatives.
        # One gather of the rows used (actions, then negatives): its backward builds one dense (N, d)
        # gradient instead of one per gather — at 1M items those zero-fills cost more than the maths.
        used = torch.cat([actions, negatives])
        if self.sparse_grad and torch.is_grad_enabled():
            w_used, b_used = gather_rows_sparse_grad(used, self.weight, self.bias)
        else:
            w_used, b_used = self.weight[used], self.bias[used]
        n_rows = actions.shape[0]
        neg_bias = b_used[n_rows:] * inv_t - log_q[negatives]  # (S,)
        hit_rows, hit_cols = _accidental_hits(actions, negatives)
        # logsumexp_n (l_n − log Q(n)) over the negatives, hits excluded — (B,), fp32
        lse_neg = negatives_logsumexp(state * inv_t, w_used[n_rows:], neg_bias, hit_rows, hit_cols)
        target = ((state * w_used[:n_rows]).sum(dim=1) + b_used[:n_rows]).float() * inv_t  # (B,) l_a
        pos = target - log_q[actions]
        train_logp = pos - torch.logaddexp(pos, lse_neg)  # = sampled_softmax_log_prob(...)
        if self.normaliser == "exact":
            logp = self.exact_log_prob(state, actions)
        else:
            with torch.no_grad():  # = sampled_log_prob_estimate(...): log Ẑ = logaddexp(l_a, lse − log S)
                log_z = torch.logaddexp(target, lse_neg - math.log(self.negatives))
                logp = (target - log_z).clamp_max(0.0)
        assert train_logp.shape == actions.shape and logp.shape == actions.shape
        return HeadOutput(train_logp=train_logp, logp=logp.detach().float())


class _GatherRowsSparseGrad(torch.autograd.Function):
    """(weight[idx], bias[idx]) whose gradients are row-sparse COO tensors with the shapes of weight and bias.

    Like ``nn.Embedding(sparse=True)``: the backward costs O(len(idx)·d) instead of zero-filling a
    dense (N, d) gradient. Repeated indices give uncoalesced entries, which sum when coalesced.
    """

    @staticmethod
    def forward(
        ctx: Any, idx: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        ctx.save_for_backward(idx)
        ctx.shapes = (weight.shape, bias.shape)
        return weight[idx], bias[idx]

    @staticmethod
    def backward(ctx: Any, grad_w: torch.Tensor | None, grad_b: torch.Tensor | None) -> tuple[Any, ...]:  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        w_shape, b_shape = ctx.shapes
        rows = idx[None, :]
        gw = gb = None
        if ctx.needs_input_grad[1] and grad_w is not None:
            gw = torch.sparse_coo_tensor(rows, grad_w.contiguous(), w_shape, check_invariants=False)
        if ctx.needs_input_grad[2] and grad_b is not None:
            gb = torch.sparse_coo_tensor(rows, grad_b.contiguous(), b_shape, check_invariants=False)
        return None, gw, gb


def gather_rows_sparse_grad(
    idx: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight[idx], bias[idx]) with row-sparse COO gradients for weight (N, d) and bias (N,)."""
    w, b = _GatherRowsSparseGrad.apply(idx, weight, bias)
    return w, b


def _accidental_hits(actions: torch.Tensor, negatives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) where negatives[col] == actions[row]; only rows whose action was sampled are compared."""
    rows = torch.isin(actions, negatives).nonzero().squeeze(1)  # (R,)
    r, c = (negatives[None, :] == actions[rows, None]).nonzero(as_tuple=True)
    return rows[r], c


class _NegativesLogSumExp(torch.autograd.Function):
    """lse_b = logsumexp_n (s_b · w_n + c_n) over shared negatives, with (b, n) in ``hits`` excluded.

    One (B, S) buffer: the forward turns the logits into the softmax in place and keeps it; the
    backward scales it in place by the incoming gradient and does the two matmuls. Autograd's own
    graph (addmm → masked logsumexp) makes about twice as many passes over (B, S), which dominate
    a sampled-softmax step on CPU.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        state: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        hit_rows: torch.Tensor,
        hit_cols: torch.Tensor,
    ) -> torch.Tensor:
        dtype = resolve_compute_dtype(state, None)
        with torch.autocast(state.device.type, enabled=False):
            s_c, w_c = state.to(dtype), weight.to(dtype)
            if dtype == torch.float32:
                probs = torch.addmm(bias.float(), s_c, w_c.t())  # (B, S)
            else:
                probs = (s_c @ w_c.t()).float().add_(bias.float())
            probs.index_put_((hit_rows, hit_cols), torch.tensor(float("-inf"), device=probs.device))
            row_max = probs.amax(dim=1, keepdim=True)
            row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
            total = probs.sub_(row_max).exp_().sum(dim=1, keepdim=True)
            lse = (row_max + total.log()).squeeze(1)
            probs.div_(total.clamp_min(torch.finfo(torch.float32).tiny))  # softmax over the negatives
        ctx.save_for_backward(s_c, w_c, probs)
        ctx.dtypes = (state.dtype, weight.dtype, bias.dtype)
        return lse

    @staticmethod
    def backward(ctx: Any, grad_lse: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        s_c, w_c, probs = ctx.saved_tensors
        with torch.autocast(s_c.device.type, enabled=False):
            coef = probs.mul_(grad_lse.float()[:, None]).to(s_c.dtype)  # ∂lse/∂logit = softmax (single use)
            grad_state = (coef @ w_c).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
            grad_weight = (coef.t() @ s_c).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
            grad_bias = probs.sum(dim=0).to(ctx.dtypes[2]) if ctx.needs_input_grad[2] else None
        return grad_state, grad_weight, grad_bias, None, None


def negatives_logsumexp(
    state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    hit_rows: torch.Tensor,
    hit_cols: torch.Tensor,
) -> torch.Tensor:
    """(B,) fp32 logsumexp_n (state_b · weight_n + bias_n), excluding the (hit_rows, hit_cols) pairs.

    state (B, d), weight (S, d) the negatives' rows, bias (S,); differentiable in all three.
    """
    lse: torch.Tensor = _NegativesLogSumExp.apply(state, weight, bias, hit_rows, hit_cols)
    return lse


def set_proposal_counts(heads: Sequence[nn.Module], item_counts: torch.Tensor | Sequence[float]) -> int:
    """Give every sampled head with the popularity proposal the train item counts; returns how many got them."""
    n = 0
    for head in heads:
        if isinstance(head, SampledSoftmaxHead) and head.proposal == "popularity":
            head.set_item_counts(item_counts)
            n += 1
    return n
