"""Boltzmann exploration for serving (Chen et al. 2019, §5) with exact serving propensities.

The procedure, per user: take the top ``M`` items by policy logit; show the ``K′`` most probable ones
deterministically; draw the other ``K − K′`` *without replacement* from the remaining ``M − K′`` by a
softmax of their logits at temperature ``T``. The propensity reported for each shown item is the
probability that this procedure shows it (its inclusion probability): 1 for the ``K′`` deterministic
items, and for a sampled item ``i`` with softmax weight ``w_i`` (weights summing to 1), drawing
``n = K − K′`` items,

    P(i among the first n draws) = ∫₀^∞ w_i e^{−w_i t} · P(#{j ≠ i : T_j < t} < n) dt,

from the exponential-race representation of successive sampling: give each candidate an arrival
time T_j ~ Exp(w_j); the order of arrival is exactly the order of drawing without replacement by
weight. The count of other arrivals before t is Poisson-binomial with p_j(t) = 1 − e^{−w_j t}; its
leave-one-out CDF below ``n`` is computed exactly (prefix and suffix products of truncated count
polynomials, no unstable deconvolution), and the integral by the trapezoid rule in ``x = log t``,
over [t_low, t_high] by Gauss–Legendre in ``x = log t`` (the integrand is analytic there, so the
rule converges geometrically), with t_low and t_high chosen from tail bounds so that everything
outside is exact to e^−40. Accuracy ~1e-9 or better against brute-force enumeration (tests).

Sampling itself uses the Gumbel-top-n trick (the same distribution as successive sampling), seeded
through a ``numpy.random.Generator`` so a seed gives identical slates.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from topkrec.errors import TopkrecError

# Trapezoid step in log-time and bounds of the integration grid (see module docstring).
_LOG_T_STEP = 0.3
_MAX_NODES = 1024
_TAIL_NATS = 40.0  # integrate until P(n-th arrival not yet happened) < e^-40
_ROW_CHUNK_FLOATS = 8_000_000  # bound the (N, rows, Q, n) work arrays (~64 MB)


@dataclass(frozen=True)
class ExplorationConfig:
    """Settings of Boltzmann exploration (paper §5)."""

    k: int
    """Number of items shown (K)."""
    m: int = 200
    """Size of the candidate pool: the top M items by logit."""
    k_prime: int | None = None
    """Items shown deterministically (K′); None means K // 2."""
    temperature: float = 1.0
    """Softmax temperature of the sampling among the remaining M − K′ candidates."""

    def resolved_k_prime(self) -> int:
        return self.k // 2 if self.k_prime is None else self.k_prime

    def validate(self) -> None:
        if self.k < 1:
            raise TopkrecError(f"k must be at least 1, got {self.k}")
        if self.m < self.k:
            raise TopkrecError(f"m (candidate pool, {self.m}) must be at least k ({self.k})")
        kp = self.resolved_k_prime()
        if not 0 <= kp <= self.k:
            raise TopkrecError(f"k_prime must be between 0 and k ({self.k}), got {kp}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise TopkrecError(f"temperature must be a positive number, got {self.temperature}")


@dataclass(frozen=True)
class Slates:
    """Recommended slates for a batch of users. Rows may hold fewer than K items (``valid`` false
    at the end) when fewer than K candidates were available."""

    items: np.ndarray  # (B, K) int64 item indices; -1 where not valid
    scores: np.ndarray  # (B, K) float64 logits of the shown items
    propensities: np.ndarray  # (B, K) float64 probability that the procedure shows each item
    valid: np.ndarray  # (B, K) bool


def inclusion_probabilities(log_weights: np.ndarray, n: np.ndarray | int) -> np.ndarray:
    """Probability that each candidate is among the first ``n`` draws of successive sampling
    without replacement with probabilities ∝ ``exp(log_weights)``.

    ``log_weights``: (B, N); ``-inf`` marks a candidate that cannot be drawn. ``n``: draws per row,
    scalar or (B,). Returns (B, N) in [0, 1]; each row sums to ``min(n, #drawable)``.
    """
    log_weights = np.asarray(log_weights, dtype=np.float64)
    if log_weights.ndim != 2:
        raise ValueError(f"log_weights must be (B, N), got shape {log_weights.shape}")
    rows, width = log_weights.shape
    draws = np.broadcast_to(np.asarray(n, dtype=np.int64), (rows,)).copy()
    out = np.zeros((rows, width))
    if rows == 0 or width == 0:
        return out
    drawable = np.isfinite(log_weights)
    n_drawable = drawable.sum(axis=1)
    draws = np.minimum(draws, n_drawable)
    everything = draws >= n_drawable  # every drawable candidate is drawn: probability 1
    out[everything] = drawable[everything].astype(np.float64)
    todo = np.flatnonzero(~everything & (draws > 0))
    if todo.size == 0:
        return out
    n_max = int(draws[todo].max())
    per_row = (width + 1) * (n_max + 4) * 96  # floats per row in the (N, ·, Q, n) prefix and (N, ·, Q) arrays
    chunk = max(1, _ROW_CHUNK_FLOATS // per_row)
    for start in range(0, todo.size, chunk):
        sel = todo[start : start + chunk]
        out[sel] = _inclusion_exact(log_weights[sel], draws[sel])
    return out


def _inclusion_exact(log_weights: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Rows where 0 < n < #drawable. (R, N) log-weights, (R,) draws → (R, N) probabilities."""
    rows, width = log_weights.shape
    # Normalised weights (sum 1). Floor so the grid end stays finite; floored weights contribute ~0.
    shifted = log_weights - log_weights.max(axis=1, keepdims=True)
    weights = np.exp(np.maximum(shifted, -700.0))
    weights[~np.isfinite(log_weights)] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    n_max = int(draws.max())

    # Upper end of the grid: once the top (n+1) candidates have all arrived, every leave-one-out count
    # is ≥ n; P(not all arrived) ≤ (n+1)·exp(−w_(n+1) t).
    ordered = -np.sort(-weights, axis=1)
    w_next = ordered[np.arange(rows), draws]  # (R,) the (n+1)-th largest weight
    w_next = np.maximum(w_next, 1e-300)
    t_high = (np.log(draws + 1.0) + _TAIL_NATS) / w_next
    # Lower end: Σ_j p_j(t) ≤ t (weights sum to 1), so by the Chernoff bound for sums of independent
    # Bernoullis P(count ≥ n) ≤ (e t / n)^n < e^−40 below t_low = (n/e)·e^{−40/n}; there F ≡ 1 and the
    # integral is exactly 1 − e^{−w t_low}.
    t_low = (draws / math.e) * np.exp(-_TAIL_NATS / draws)
    x_low = np.log(t_low)
    x_high = np.maximum(np.log(t_high), x_low + 1.0)
    # The n-th arrival time concentrates as n grows (relative width ~ 1/√n): shrink the step with it.
    step_target = _LOG_T_STEP / math.sqrt(max(1.0, n_max / 4.0))
    n_nodes = int(min(_MAX_NODES, max(16, math.ceil(float((x_high - x_low).max()) / step_target))))
    nodes, node_weights = _gauss_legendre(n_nodes)
    half = (x_high - x_low) / 2.0  # (R,)
    x = (x_low + half)[:, None] + half[:, None] * nodes[None, :]  # (R, Q)
    t = np.exp(x)  # (R, Q)

    # p_j(t) = P(T_j < t) = 1 − e^{−w_j t}: (N, R, Q)
    wt = weights.T[:, :, None] * t[None, :, :]
    arrived = -np.expm1(-wt)

    # Truncated count distributions (counts 0..n_max−1) of the candidates before j (prefix, stored) and
    # after j (suffix, rolling). Counts only grow, so dropping counts ≥ n_max keeps the low ones exact.
    prefix = np.empty((width, rows, n_nodes, n_max))
    current = np.zeros((rows, n_nodes, n_max))
    current[:, :, 0] = 1.0
    for j in range(width):
        prefix[j] = current
        p = arrived[j][:, :, None]
        nxt = current * (1.0 - p)
        nxt[:, :, 1:] += current[:, :, :-1] * p
        current = nxt

    # Leave-one-out P(count_{−i} < n) = Σ_{a<n} prefix_i(a) · P(suffix_i ≤ n−1−a), computed while the
    # suffix distribution rolls backwards, so no (N, R, Q, n) suffix array is ever stored.
    same_n = bool(np.all(draws == n_max))
    need = draws[:, None] - 1 - np.arange(n_max)[None, :]  # (R, n_max): suffix bound for each a
    usable = (need >= 0)[:, None, :]
    pick = np.broadcast_to(np.clip(need, 0, n_max - 1)[:, None, :], (rows, n_nodes, n_max))
    fewer_than_n = np.empty((width, rows, n_nodes))
    suffix = np.zeros((rows, n_nodes, n_max))
    suffix[:, :, 0] = 1.0
    for j in range(width - 1, -1, -1):
        suffix_cdf = np.cumsum(suffix, axis=-1)
        if same_n:
            fewer_than_n[j] = np.einsum("rqa,rqa->rq", prefix[j], suffix_cdf[:, :, ::-1])
        else:
            fewer_than_n[j] = (prefix[j] * np.take_along_axis(suffix_cdf, pick, axis=-1) * usable).sum(axis=-1)
        p = arrived[j][:, :, None]
        nxt = suffix * (1.0 - p)
        nxt[:, :, 1:] += suffix[:, :, :-1] * p
        suffix = nxt

    # ∫ w e^{−w t} F(t) dt = ∫ t w e^{−w t} F(t) dx: Gauss–Legendre on [x_low, x_high] (the integrand is
    # analytic there) plus the head ∫₀^{t_low} w e^{−w t} dt = 1 − e^{−w t_low}, where F ≡ 1.
    density = wt * np.exp(-wt) * fewer_than_n  # (N, R, Q)
    body = (density * node_weights).sum(axis=-1) * half[None, :]  # (N, R)
    head = -np.expm1(-weights.T * t_low[None, :])
    prob = (body + head).T
    prob[weights == 0.0] = 0.0
    return np.clip(prob, 0.0, 1.0)


@functools.lru_cache(maxsize=64)
def _gauss_legendre(n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = np.polynomial.legendre.leggauss(n_nodes)
    return nodes, weights


def sample_without_replacement(log_weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Successive sampling of ``n`` distinct columns per row with probability ∝ exp(log_weights),
    by the Gumbel-top-n trick. (B, N) → (B, n) column indices in draw order; ``-inf`` never drawn
    while a finite entry remains."""
    keys = log_weights + rng.gumbel(size=log_weights.shape)
    if n >= log_weights.shape[1]:
        return np.argsort(-keys, axis=1, kind="stable")
    part = np.argpartition(-keys, n - 1, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(keys, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def explore_candidates(
    cand_items: np.ndarray,
    cand_logits: np.ndarray,
    config: ExplorationConfig,
    rng: np.random.Generator,
) -> Slates:
    """Boltzmann exploration over precomputed candidate pools.

    ``cand_items``/``cand_logits``: (B, M') the top items by logit, sorted by logit descending, with
    ``-inf`` logits for padding (fewer than M' candidates available). Returns K-item slates.
    """
    config.validate()
    cand_logits = np.asarray(cand_logits, dtype=np.float64)
    cand_items = np.asarray(cand_items, dtype=np.int64)
    rows, width = cand_logits.shape
    k = config.k
    k_prime = min(config.resolved_k_prime(), width)
    n_avail = np.isfinite(cand_logits).sum(axis=1)  # (B,)

    items = np.full((rows, k), -1, dtype=np.int64)
    scores = np.full((rows, k), -np.inf)
    props = np.zeros((rows, k))
    valid = np.zeros((rows, k), dtype=bool)

    # K′ deterministic: the first K′ candidates (sorted by logit), shown with probability 1.
    det_valid = np.arange(k_prime)[None, :] < n_avail[:, None]
    items[:, :k_prime] = np.where(det_valid, cand_items[:, :k_prime], -1)
    scores[:, :k_prime] = np.where(det_valid, cand_logits[:, :k_prime], -np.inf)
    props[:, :k_prime] = det_valid.astype(np.float64)
    valid[:, :k_prime] = det_valid

    n_draw = k - k_prime
    rest_logits = cand_logits[:, k_prime:]
    if n_draw > 0 and rest_logits.shape[1] > 0:
        rest_items = cand_items[:, k_prime:]
        log_w = rest_logits / config.temperature
        take = min(n_draw, rest_logits.shape[1])
        drawn = sample_without_replacement(log_w, take, rng)  # (B, take)
        draws_per_row = np.minimum(n_draw, np.maximum(n_avail - k_prime, 0))
        incl = inclusion_probabilities(log_w, draws_per_row)  # (B, M' − K′)
        drawn_valid = np.arange(take)[None, :] < draws_per_row[:, None]
        sl = slice(k_prime, k_prime + take)
        items[:, sl] = np.where(drawn_valid, np.take_along_axis(rest_items, drawn, axis=1), -1)
        scores[:, sl] = np.where(drawn_valid, np.take_along_axis(rest_logits, drawn, axis=1), -np.inf)
        props[:, sl] = np.where(drawn_valid, np.take_along_axis(incl, drawn, axis=1), 0.0)
        valid[:, sl] = drawn_valid
    return Slates(items=items, scores=scores, propensities=props, valid=valid)


def top_candidates(logits: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``m`` columns of each row of ``logits`` (B, n), sorted by logit descending."""
    logits = np.asarray(logits, dtype=np.float64)
    m = min(m, logits.shape[1])
    if m < logits.shape[1]:
        part = np.argpartition(-logits, m - 1, axis=1)[:, :m]
    else:
        part = np.broadcast_to(np.arange(logits.shape[1]), logits.shape).copy()
    vals = np.take_along_axis(logits, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)


def boltzmann_explore(
    logits: np.ndarray, config: ExplorationConfig, rng: np.random.Generator | int | None = None
) -> Slates:
    """The whole procedure on logits (n_items,) or (B, n_items); ``-inf`` marks items not allowed."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 1:
        logits = logits[None, :]
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    cand_items, cand_logits = top_candidates(logits, config.m)
    return explore_candidates(cand_items, cand_logits, config, generator)
