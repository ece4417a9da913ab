"""Off-policy estimators for slates: pseudo-inverse (PI) and item-position (IIPS) estimators.

**Slate-log layout.** One row per shown (slate, position): the slate's id, the position, the item, the
row's reward (a click, a purchase…; the slate's reward is the sum over its rows), the logging policy's
probability μ_j(a|x) of that item *at that position* (its marginal, the recorded propensity) and the
target's π_j(a|x) of the same. The functions take these as (n,) arrays plus a (n,) slate code in
[0, n_slates) from ``slate_codes``.

- **PI** (Swaminathan et al., NeurIPS 2017): unbiased for any target when the slate reward is additive
  over (position, item) — r(x, s) = Σ_j φ_j(x, s_j) — and the target's (position, item) marginals lie in
  the span of the logging policy's. V̂ = (1/S) Σ_s w_s R_s with w_s = q_πᵀ Γ_μ^† 1_s, where 1_s is the
  slate's (position, item) indicator vector, q_π = E_π[1_s] and Γ_μ = E_μ[1_s 1_sᵀ]. Two closed forms:

  * logging that is a product over positions (each position drawn independently, e.g. K independent
    draws): w_s = Σ_j π_j(s_j)/μ_j(s_j) − (L − 1)  (``pi_weights_product``);
  * logging uniform over slates of L distinct items out of m (no replacement):
    w_s = (m − 1) Σ_j π_j(s_j) + (m − 1)/(m − L) Σ_j π_·(s_j) − (L − 1) m/(m − L), with π_·(a) = Σ_k π_k(a)
    the target's probability of showing a anywhere  (``pi_weights_uniform_without_replacement``).

  ``pi_weights_enumerated`` computes q_πᵀ Γ_μ^† 1_s for any logging distribution over an enumerable slate
  space (the tests check both closed forms against it). ``self_normalized_pi`` divides by Σ w_s instead of S.
- **IIPS**, the item-position estimator (Li et al., WSDM 2018): V̂ = (1/S) Σ_s Σ_j r_sj π_j(s_j)/μ_j(s_j),
  unbiased when each row's reward depends only on its (item, position) — no interaction between the items
  of a slate. It needs per-row rewards; PI needs only the slate's total. With positions left out (marginals
  of "item anywhere in the slate") it is Li et al.'s item model, what ``simulate sequential`` reports.

Values are per slate (the expected sum of a slate's rewards); bootstraps resample slates, so rows of one
slate stay together.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from topkrec.errors import DataError
from topkrec.ope.estimators import (
    BootstrapResult,
    bootstrap_ci,
    capped_ips,
    effective_sample_size,
    ips,
    snips,
)

__all__ = [
    "pi_weights_enumerated",
    "pi_weights_product",
    "pi_weights_uniform_without_replacement",
    "position_breakdown",
    "pseudo_inverse",
    "self_normalized_pi",
    "slate_codes",
    "slate_estimates",
    "slate_sums",
]


def slate_codes(slate_id: np.ndarray, position: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """(n,) codes in [0, S) of each row's slate, and S. With ``position``, a slate showing one position
    twice raises ``DataError`` (the layout has one row per (slate, position))."""
    _, codes = np.unique(np.asarray(slate_id), return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    n_slates = int(codes.max()) + 1 if codes.size else 0
    if position is not None and codes.size:
        _, pos_codes = np.unique(np.asarray(position), return_inverse=True)
        pairs = codes * (int(pos_codes.max()) + 1) + pos_codes.reshape(-1)
        uniq, first, counts = np.unique(pairs, return_index=True, return_counts=True)
        if (counts > 1).any():
            row = int(first[np.flatnonzero(counts > 1)[0]])
            raise DataError(
                f"slate {np.asarray(slate_id)[row]!r} has position {np.asarray(position)[row]!r} more than once "
                f"(row {row}); the slate layout is one row per (slate, position)"
            )
    return codes, n_slates


def slate_sums(slate: np.ndarray, values: np.ndarray, n_slates: int) -> np.ndarray:
    """(S,) per-slate sums of a per-row quantity."""
    return np.bincount(slate, weights=np.asarray(values, dtype=np.float64), minlength=n_slates)


def pi_weights_product(
    slate: np.ndarray, target_prob: np.ndarray, logging_prob: np.ndarray, n_slates: int
) -> np.ndarray:
    """(S,) PI weights Σ_j π_j(s_j)/μ_j(s_j) − (L_s − 1) for logging that is a product over positions.

    L_s is the number of rows of slate s (its length)."""
    w = np.asarray(target_prob, dtype=np.float64) / np.asarray(logging_prob, dtype=np.float64)
    length = np.bincount(slate, minlength=n_slates)
    return slate_sums(slate, w, n_slates) - (length - 1)


def pi_weights_uniform_without_replacement(
    slate: np.ndarray,
    target_prob: np.ndarray,
    target_prob_anywhere: np.ndarray,
    n_items: int,
    n_slates: int,
) -> np.ndarray:
    """(S,) PI weights when the logging policy shows L distinct items out of ``n_items`` uniformly at random.

    ``target_prob``: π_j(s_j), the target's probability of the row's item at the row's position;
    ``target_prob_anywhere``: π_·(s_j) = Σ_k π_k(s_j), its probability of showing that item at any position.
    Every slate must have the same length L < n_items.
    """
    length = np.bincount(slate, minlength=n_slates)
    if length.size and (length != length[0]).any():
        raise DataError("uniform-without-replacement PI needs every slate to have the same number of positions")
    big_l = int(length[0]) if length.size else 0
    m = int(n_items)
    if not big_l < m:
        raise DataError(f"uniform-without-replacement PI needs fewer positions ({big_l}) than items ({m})")
    at = slate_sums(slate, target_prob, n_slates)
    anywhere = slate_sums(slate, target_prob_anywhere, n_slates)
    return (m - 1) * at + (m - 1) / (m - big_l) * anywhere - (big_l - 1) * m / (m - big_l)


def pi_weights_enumerated(slates: np.ndarray, logging_probs: np.ndarray, target_marginals: np.ndarray) -> np.ndarray:
    """(M,) PI weights q_πᵀ Γ_μ^† 1_s of every slate of an enumerated slate space, for one context.

    ``slates`` (M, L) item ids per position; ``logging_probs`` (M,) μ(s) summing to 1;
    ``target_marginals`` (L, A) π_j(a), the target's probability of item a at position j.
    Exact for any logging distribution; its cost is a pseudo-inverse of (L·A)², so it is for small
    problems (and checks the closed forms).
    """
    slates = np.asarray(slates, dtype=np.int64)
    mu = np.asarray(logging_probs, dtype=np.float64)
    q = np.asarray(target_marginals, dtype=np.float64)
    n_pos, n_items = q.shape
    if slates.ndim != 2 or slates.shape[1] != n_pos or mu.shape != (slates.shape[0],):
        raise ValueError(f"shapes do not match: slates {slates.shape}, logging {mu.shape}, target {q.shape}")
    features = np.zeros((slates.shape[0], n_pos * n_items))
    features[np.arange(slates.shape[0])[:, None], np.arange(n_pos)[None, :] * n_items + slates] = 1.0
    gram = (features * mu[:, None]).T @ features
    return features @ (np.linalg.pinv(gram, hermitian=True) @ q.reshape(-1))


def pseudo_inverse(slate_reward: np.ndarray, slate_weight: np.ndarray) -> np.ndarray:
    """PI estimate (1/S) Σ_s w_s R_s over the last axis."""
    return np.mean(np.asarray(slate_weight, dtype=np.float64) * np.asarray(slate_reward, dtype=np.float64), axis=-1)


def self_normalized_pi(slate_reward: np.ndarray, slate_weight: np.ndarray) -> np.ndarray:
    """Self-normalised PI Σ w_s R_s / Σ w_s over the last axis (0 where Σ w_s ≤ 0)."""
    w = np.asarray(slate_weight, dtype=np.float64)
    num = np.sum(w * np.asarray(slate_reward, dtype=np.float64), axis=-1)
    den = np.sum(w, axis=-1)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _mean(values: np.ndarray) -> np.ndarray:
    return np.mean(values, axis=-1)


def slate_estimates(
    slate: np.ndarray,
    n_slates: int,
    reward: np.ndarray,
    target_prob: np.ndarray,
    logging_prob: np.ndarray,
    *,
    pi_weights: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[dict[str, BootstrapResult], float]:
    """``pi``, ``sn_pi`` and ``iips`` per slate, bootstrapped over slates; and the ESS of the PI weights.

    ``pi_weights`` (S,) defaults to the product-logging closed form from the rows' probabilities.
    """
    if n_slates < 1:
        raise DataError("the log has no slates")
    weight = np.asarray(target_prob, dtype=np.float64) / np.asarray(logging_prob, dtype=np.float64)
    if pi_weights is None:
        pi_weights = pi_weights_product(slate, target_prob, logging_prob, n_slates)
    total_reward = slate_sums(slate, reward, n_slates)
    iips_per_slate = slate_sums(slate, weight * np.asarray(reward, dtype=np.float64), n_slates)
    boot: dict[str, Any] = {"n_boot": n_boot, "seed": seed, "level": level}
    results = {
        "pi": bootstrap_ci(pseudo_inverse, total_reward, pi_weights, **boot),
        "sn_pi": bootstrap_ci(self_normalized_pi, total_reward, pi_weights, **boot),
        "iips": bootstrap_ci(_mean, iips_per_slate, **boot),
    }
    return results, float(effective_sample_size(pi_weights))


def position_breakdown(
    position: np.ndarray,
    reward: np.ndarray,
    target_prob: np.ndarray,
    logging_prob: np.ndarray,
    *,
    cap: float,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, object]]:
    """Per position value: {position: {n, ess, estimators: {ips, capped_ips, snips}}}, positions in sorted order.

    Each is the row-level estimate among the rows at that position (the item-position model's per-position
    term; their sum over positions times the rows per slate is IIPS)."""
    position = np.asarray(position)
    out: dict[str, dict[str, object]] = {}
    r, t, p = (np.asarray(x, dtype=np.float64) for x in (reward, target_prob, logging_prob))

    def _capped(r_: np.ndarray, t_: np.ndarray, p_: np.ndarray) -> np.ndarray:
        return capped_ips(r_, t_, p_, cap=cap)

    boot: dict[str, Any] = {"n_boot": n_boot, "seed": seed, "level": level}
    for value in np.unique(position):
        rows = position == value
        cols = (r[rows], t[rows], p[rows])
        out[str(value.item() if hasattr(value, "item") else value)] = {
            "n": int(rows.sum()),
            "ess": float(effective_sample_size(cols[1] / cols[2])),
            "estimators": {
                "ips": bootstrap_ci(ips, *cols, **boot).as_dict(),
                "capped_ips": bootstrap_ci(_capped, *cols, **boot).as_dict(),
                "snips": bootstrap_ci(snips, *cols, **boot).as_dict(),
            },
        }
    return out
