"""The REINFORCE objective with off-policy and top-K corrections, as pure functions of tensors.

Chen et al., "Top-K Off-Policy Correction for a REINFORCE Recommender System" (WSDM 2019):
- §4.2 off-policy correction: weight each logged transition by π(a|s)/β(a|s);
- §4.3 the behaviour policy β is unknown and estimated by a second softmax head β̂;
- §4.4 top-K correction: the gradient of J_K(π) = Σ_a r(a)[1 − (1 − π(a))^K] carries the multiplier
  λ_K(s, a) = K(1 − π(a|s))^(K−1);
- §4.5 variance reduction: weight capping (min(w, c)) and self-normalised importance sampling.

Both w and λ_K multiply the score-function term as constants: they are detached here, so the gradient
of ``reinforce_loss`` w.r.t. the logits is −w·λ·R·(onehot(a) − softmax) / B for each row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from topkrec.data.dataset import discounted_returns
from topkrec.policy.config import CORRECTIONS

DEFAULT_CAP = math.exp(3.0)  # the paper's production cap, e^3 ≈ 20.09

__all__ = [
    "CORRECTIONS",
    "DEFAULT_CAP",
    "STAT_FIELDS",
    "PolicyLossStats",
    "action_log_prob",
    "corrected_policy_loss",
    "corrected_policy_loss_tensors",
    "discounted_returns",
    "effective_sample_size",
    "importance_weight",
    "log1mexp",
    "reinforce_loss",
    "per_draw_log_propensity",
    "policy_coefficients",
    "topk_multiplier",
]


def _as_float(t: torch.Tensor) -> torch.Tensor:
    """Half/bfloat16 (autocast) → float32 for the loss maths; float32 and float64 kept as they are."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def action_log_prob(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[b, actions[b]] — one log-probability per row, shape (B,).

    ``gather`` picks one entry per row; indexing ``logp[:, actions]`` would give a (B, B) matrix,
    the bug of the public reference implementation.
    """
    if logits.dim() != 2 or actions.dim() != 1 or logits.shape[0] != actions.shape[0]:
        raise ValueError(f"logits (B, N) and actions (B,) expected, got {tuple(logits.shape)}, {tuple(actions.shape)}")
    logp = F.log_softmax(_as_float(logits), dim=-1).gather(1, actions.long()[:, None]).squeeze(1)
    assert logp.shape == actions.shape
    return logp


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x ≤ 0, accurate near both ends (Mächler 2012)."""
    x = x.clamp(max=0.0)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def per_draw_log_propensity(logged: torch.Tensor, k: int, kind: str) -> torch.Tensor:
    """log β of each logged action from a logged propensity column (NaN stays NaN: nothing logged).

    ``kind="draw"``: the column is the per-draw β itself. ``kind="inclusion"``: it is the probability α that
    the item was among the K shown; under K independent draws α = 1 − (1 − β)^K (the top-K correction's
    model, §4.4), so β = 1 − (1 − α)^(1/K), computed as log1mexp(log1p(−α)/K). For slates sampled without
    replacement (Plackett–Luce) this inversion is an approximation: the per-draw β of the paper is not
    defined there.
    """
    logged = logged.double()
    if kind == "draw":
        return torch.log(logged).float()
    if kind != "inclusion":
        raise ValueError(f"kind must be draw or inclusion, got {kind!r}")
    return log1mexp(torch.log1p(-logged) / k).float()


def topk_multiplier(policy_logp: torch.Tensor, k: int) -> torch.Tensor:
    """λ_K = K·(1 − π)^(K−1), computed as K·exp((K−1)·log(1 − π)) from log π (§4.4, eq. 8).

    λ_K → K as π → 0 and λ_K(1) = 0 for K > 1; K = 1 gives ones (the plain importance-weighted update).
    Returned detached: it is a constant multiplier of the gradient, not something to differentiate.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    logp = _as_float(policy_logp.detach())
    if k == 1:
        return torch.ones_like(logp)
    return k * torch.exp((k - 1) * log1mexp(logp))


def importance_weight(
    policy_logp: torch.Tensor,
    behavior_logp: torch.Tensor,
    cap: float | None = DEFAULT_CAP,
    snis: bool = False,
) -> torch.Tensor:
    """w = min(π/β̂, cap), optionally divided by its batch mean (self-normalised IS, §4.5). Detached.

    Computed in log space (exp(log π − log β̂)) so tiny β̂ does not overflow before the cap.
    """
    log_ratio = _as_float(policy_logp.detach()) - _as_float(behavior_logp.detach())
    if cap is not None:
        if cap <= 0:
            raise ValueError(f"cap must be positive, got {cap}")
        log_ratio = log_ratio.clamp(max=math.log(cap))
    weight = torch.exp(log_ratio)
    if snis:
        weight = weight / weight.mean().clamp_min(torch.finfo(weight.dtype).tiny)
    return weight


def effective_sample_size(weight: torch.Tensor) -> torch.Tensor:
    """(Σw)² / Σw² — equals n for equal weights, 1 when one weight dominates."""
    w = _as_float(weight.detach())
    return w.sum() ** 2 / (w * w).sum().clamp_min(torch.finfo(w.dtype).tiny)


def reinforce_loss(
    policy_logp: torch.Tensor,
    returns: torch.Tensor,
    weight: torch.Tensor | None = None,
    multiplier: torch.Tensor | None = None,
    normalize: bool = False,
    coef_mean: torch.Tensor | None = None,
) -> torch.Tensor:
    """−mean(c · log π(a|s)) with c = w · λ_K · R treated as a constant.

    ``normalize`` divides c by its batch mean of |c|: the same direction, a step whose size no longer depends
    on the scale of the returns (session sums of ratings reach the hundreds) nor on the correction, so the
    policy's loss weighs like a cross-entropy next to β̂'s and the supervised head's. ``coef_mean`` replaces
    that batch mean (data-parallel training passes the mean over every rank's rows).
    """
    if policy_logp.dim() != 1 or returns.shape != policy_logp.shape:
        raise ValueError(f"(B,) log-probs and returns expected, got {tuple(policy_logp.shape)}, {tuple(returns.shape)}")
    coef = _as_float(returns.detach())
    if weight is not None:
        coef = coef * weight.detach()
    if multiplier is not None:
        coef = coef * multiplier.detach()
    if normalize:
        mean = coef.abs().mean() if coef_mean is None else coef_mean.to(coef.dtype)
        coef = coef / mean.clamp_min(1e-12)
    return -(coef * policy_logp).mean()


def policy_coefficients(
    policy_logp: torch.Tensor,
    behavior_logp: torch.Tensor,
    returns: torch.Tensor,
    correction: str = "topk",
    k: int = 10,
    cap: float | None = DEFAULT_CAP,
    snis: bool = False,
) -> torch.Tensor:
    """(B,) c = w · λ_K · R of each row (w ≡ 1 for none, λ ≡ 1 for none and is), detached."""
    coef = _as_float(returns.detach())
    if correction in ("is", "topk"):
        coef = coef * importance_weight(policy_logp, behavior_logp, cap=cap, snis=snis)
    if correction == "topk":
        coef = coef * topk_multiplier(policy_logp, k).detach()
    return coef


STAT_FIELDS = ("mean_weight", "max_weight", "capped_frac", "ess", "mean_multiplier")


@dataclass(frozen=True)
class PolicyLossStats:
    """Diagnostics logged with every policy update (DESIGN §3)."""

    mean_weight: float
    max_weight: float
    capped_frac: float
    ess: float
    mean_multiplier: float

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> PolicyLossStats:
        """From the (5,) vector of ``corrected_policy_loss_tensors`` (one host sync)."""
        return cls(*(float(v) for v in values.detach().cpu().tolist()))

    def as_metrics(self, prefix: str = "train/") -> dict[str, float]:
        return {
            f"{prefix}iw_mean": self.mean_weight,
            f"{prefix}iw_max": self.max_weight,
            f"{prefix}iw_capped_frac": self.capped_frac,
            f"{prefix}iw_ess": self.ess,
            f"{prefix}topk_multiplier_mean": self.mean_multiplier,
        }


def corrected_policy_loss_tensors(
    policy_logp: torch.Tensor,
    behavior_logp: torch.Tensor,
    returns: torch.Tensor,
    correction: str = "topk",
    k: int = 10,
    cap: float | None = DEFAULT_CAP,
    snis: bool = False,
    normalize: bool = False,
    coef_mean: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``corrected_policy_loss`` with its diagnostics as a (5,) tensor in ``STAT_FIELDS`` order.

    Nothing here synchronises with the host, so a training step on a GPU can run ahead of the CPU;
    ``PolicyLossStats.from_tensor`` turns the vector into floats when they are logged.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; use one of {CORRECTIONS}")
    raw = torch.exp(_as_float(policy_logp.detach()) - _as_float(behavior_logp.detach()))
    weight = importance_weight(policy_logp, behavior_logp, cap=cap, snis=snis)
    multiplier = topk_multiplier(policy_logp, k)
    capped = (raw > cap).to(raw.dtype).mean() if cap is not None else raw.new_zeros(())
    parts = [weight.mean(), weight.max(), capped, effective_sample_size(weight), multiplier.mean()]
    stats = torch.stack([p.to(raw.dtype) for p in parts])
    loss = reinforce_loss(
        policy_logp,
        returns,
        weight=None if correction == "none" else weight,
        multiplier=multiplier if correction == "topk" else None,
        normalize=normalize,
        coef_mean=coef_mean,
    )
    return loss, stats


def corrected_policy_loss(
    policy_logp: torch.Tensor,
    behavior_logp: torch.Tensor,
    returns: torch.Tensor,
    correction: str = "topk",
    k: int = 10,
    cap: float | None = DEFAULT_CAP,
    snis: bool = False,
    normalize: bool = False,
) -> tuple[torch.Tensor, PolicyLossStats]:
    """The policy loss for ``--correction none|is|topk`` and its diagnostics.

    none: w ≡ 1, λ ≡ 1 (on-policy REINFORCE on logged data); is: w = min(π/β̂, cap), λ ≡ 1;
    topk: w and λ_K. Diagnostics of w are computed in every mode so runs are comparable.
    """
    loss, stats = corrected_policy_loss_tensors(
        policy_logp, behavior_logp, returns, correction, k, cap, snis, normalize
    )
    return loss, PolicyLossStats.from_tensor(stats)
