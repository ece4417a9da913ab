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
polynomials, no unstable deconvolution), and the integral by Gauss–Legendre in ``x = log t`` (the
integrand is analytic, so the rule converges geometrically) over the union of each candidate's own
window in log-time, inside [t_low, t_high] chosen from tail bounds so that everything outside is
exact to e^−40. All of it works on log-weights, so weights thousands of nats apart (tiny
temperatures) are handled exactly. Accuracy ~1e-9 against brute-force enumeration (tests); cost
about 2 CPU-ms per user for M = 200, K = 10, K′ = 5, vectorised over a batch.

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
_MAX_NODES = 4096
LOG_WEIGHT_CLAMP = -1e12
"""Lowest log-weight relative to the row's largest (keeps log w + log t exact in float64)."""
MAX_EXPLORE_WORK = 50_000
"""Largest (M − K′)·(K − K′) accepted: the propensities cost O((M − K′)·(K − K′)·nodes) per user."""
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

    def validate(self, n_candidates: int | None = None) -> None:
        """Raise ``TopkrecError`` on bad settings; ``n_candidates`` (the catalogue or pool size, when
        known) lets the cost bound use the pool that will really be sampled from."""
        if self.k < 1:
            raise TopkrecError(f"k must be at least 1, got {self.k}")
        if self.m < self.k:
            raise TopkrecError(f"m (candidate pool, {self.m}) must be at least k ({self.k})")
        kp = self.resolved_k_prime()
        if not 0 <= kp <= self.k:
            raise TopkrecError(f"k_prime must be between 0 and k ({self.k}), got {kp}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise TopkrecError(f"temperature must be a positive number, got {self.temperature}")
        work = self.work(n_candidates)
        if work > MAX_EXPLORE_WORK:
            raise TopkrecError(
                f"exploration with m={self.m}, k={self.k}, k_prime={kp} needs (m − k′)·(k − k′) = {work} "
                f"steps per user for its exact propensities, more than {MAX_EXPLORE_WORK}; lower m or k − k′"
            )

    def work(self, n_candidates: int | None = None) -> int:
        """(M − K′)·(K − K′) over the pool really sampled from: the size of the exact propensity
        computation per user."""
        m = self.m if n_candidates is None else min(self.m, n_candidates)
        kp = min(self.resolved_k_prime(), m)
        return (m - kp) * min(self.k - kp, m - kp)


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
    """Rows where 0 < n < #drawable. (R, N) log-weights, (R,) draws → (R, N) probabilities.

    Everything is computed from log-weights (u = log w + log t), so weights e^−1000 apart are no
    problem: the quadrature covers the union of each candidate's own window in log-time (its arrival
    density e^{u − e^u} is < e^−30 outside u ∈ [−30, 4.5]), clipped to [t_low, t_high].
    """
    rows, width = log_weights.shape
    finite = np.isfinite(log_weights)
    shifted = np.where(finite, log_weights - np.max(np.where(finite, log_weights, -np.inf), axis=1, keepdims=True), 0)
    # Normalise (Σ w = 1, needed by the lower bound below) in log space.
    log_total = np.log(np.sum(np.where(finite, np.exp(shifted), 0.0), axis=1, keepdims=True))
    log_w = np.where(finite, shifted - log_total, -np.inf)  # (R, N)

    # Upper end: once the top (n+1) candidates have all arrived, every leave-one-out count is ≥ n;
    # P(not all arrived) ≤ (n+1)·exp(−w_(n+1) t) = e^−40 at t_high.
    ordered = -np.sort(-log_w, axis=1)
    log_w_next = ordered[np.arange(rows), draws]  # (R,) log of the (n+1)-th largest weight
    x_high = np.log(np.log(draws + 1.0) + _TAIL_NATS) - log_w_next
    # Lower end: Σ_j p_j(t) ≤ t (weights sum to 1), so by the Chernoff bound for sums of independent
    # Bernoullis P(count ≥ n) ≤ (e t / n)^n < e^−40 below t_low = (n/e)·e^{−40/n}; there F ≡ 1 and the
    # integral is exactly 1 − e^{−w t_low}.
    x_low = np.log(draws / math.e) - _TAIL_NATS / draws
    x_high = np.maximum(x_high, x_low + 1.0)
    # Candidates that have not arrived by t_high except with probability < e^−40 neither move the counts
    # nor get drawn: leave them out of the quadrature; their probability is at most e^{log w + x_high}.
    negligible = log_w + x_high[:, None] < -_TAIL_NATS
    keep = ~np.all(negligible | ~finite, axis=0)
    if not keep.all():
        prob = np.where(finite, np.exp(np.minimum(log_w + x_high[:, None], 0.0)), 0.0)
        prob[:, keep] = _inclusion_on_grid(log_w[:, keep], draws, x_low, x_high)
        return prob
    return _inclusion_on_grid(log_w, draws, x_low, x_high)


def _inclusion_on_grid(log_w: np.ndarray, draws: np.ndarray, x_low: np.ndarray, x_high: np.ndarray) -> np.ndarray:
    """The leave-one-out counts and the integral, for normalised log-weights (R, N) and the bounds."""
    rows, width = log_w.shape
    finite = np.isfinite(log_w)
    n_max = int(draws.max())
    # The n-th arrival time concentrates as n grows (relative width ~ 1/√n): shrink the step with it.
    step = _LOG_T_STEP / math.sqrt(max(1.0, n_max / 4.0))
    x, node_w = _quadrature_grid(log_w, x_low, x_high, step)  # (R, Q) nodes and weights (0 for padding)
    # The quadrature nodes are independent: take them a slice at a time so the (N, R, Q, n) prefix
    # array stays within _ROW_CHUNK_FLOATS however large N, Q and n get.
    node_chunk = max(1, _ROW_CHUNK_FLOATS // max(1, width * rows * (n_max + 4)))
    body = np.zeros((width, rows))
    for q0 in range(0, x.shape[1], node_chunk):
        body += _integrate_nodes(log_w, draws, x[:, q0 : q0 + node_chunk], node_w[:, q0 : q0 + node_chunk])
    with np.errstate(over="ignore"):
        head = -np.expm1(-np.exp(log_w.T + x_low[None, :]))
    prob = (body + head).T
    prob[~finite] = 0.0
    return np.clip(prob, 0.0, 1.0)


def _integrate_nodes(log_w: np.ndarray, draws: np.ndarray, x: np.ndarray, node_w: np.ndarray) -> np.ndarray:
    """Σ_q node_w · e^{u − e^u} · P(count_{−i} < n) at the nodes ``x`` (R, Q): (N, R)."""
    rows, width = log_w.shape
    n_nodes = x.shape[1]
    n_max = int(draws.max())
    # u = log(w_j t); p_j(t) = P(T_j < t) = 1 − e^{−e^u}: (N, R, Q)
    with np.errstate(over="ignore"):
        u = log_w.T[:, :, None] + x[None, :, :]
        arrived = -np.expm1(-np.exp(u))

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

    # ∫ w e^{−w t} F(t) dt = ∫ e^{u − e^u} F dx: Gauss–Legendre on the windows inside [x_low, x_high] (the
    # integrand is analytic) plus, in the caller, the head where F ≡ 1.
    with np.errstate(over="ignore"):
        density = np.exp(u - np.exp(u)) * fewer_than_n  # (N, R, Q)
    return (density * node_w[None, :, :]).sum(axis=-1)


def _quadrature_grid(
    log_w: np.ndarray, x_low: np.ndarray, x_high: np.ndarray, step: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes (R, Q) and weights (R, Q) over the union of the candidates' windows
    [−log w − 30, −log w + 4.5] ∩ [x_low, x_high], with about one node per ``step``; rows are padded
    with zero-weight nodes to a common Q."""
    rows = log_w.shape[0]
    per_row: list[tuple[np.ndarray, np.ndarray]] = []
    for r in range(rows):
        centres = -log_w[r][np.isfinite(log_w[r])]
        lo = np.maximum(centres - 30.0, x_low[r])
        hi = np.minimum(centres + 4.5, x_high[r])
        keep = hi > lo
        intervals = _merge(np.sort(lo[keep]), hi[keep][np.argsort(lo[keep])])
        if not intervals:
            intervals = [(float(x_low[r]), float(x_high[r]))]
        total = sum(b - a for a, b in intervals)
        scale = max(1.0, total / step / _MAX_NODES)  # too wide: coarser steps rather than unbounded cost
        xs, ws = [], []
        for a, b in intervals:
            n_nodes = max(8, math.ceil((b - a) / (step * scale)))
            nodes, weights = _gauss_legendre(n_nodes)
            half = (b - a) / 2.0
            xs.append(a + half + half * nodes)
            ws.append(half * weights)
        per_row.append((np.concatenate(xs), np.concatenate(ws)))
    width = max(x.shape[0] for x, _ in per_row)
    x = np.empty((rows, width))
    w = np.zeros((rows, width))
    for r, (xr, wr) in enumerate(per_row):
        x[r, : xr.shape[0]] = xr
        x[r, xr.shape[0] :] = x_low[r]
        w[r, : wr.shape[0]] = wr
    return x, w


def _merge(lo: np.ndarray, hi: np.ndarray) -> list[tuple[float, float]]:
    """Union of intervals [lo_i, hi_i] sorted by lo."""
    out: list[tuple[float, float]] = []
    for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


@functools.lru_cache(maxsize=64)
def _gauss_legendre(n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = np.polynomial.legendre.leggauss(n_nodes)
    return nodes, weights


def sampling_log_weights(logits: np.ndarray, temperature: float) -> np.ndarray:
    """(B, N) logits → log-weights (z − max z) / T, ``-inf`` kept for blocked entries.

    Values are clamped at ``LOG_WEIGHT_CLAMP`` (only reached when T is below ~1e-12 of the logit gaps),
    in sampling and in the propensities alike, so what is reported is exactly what is run.
    """
    finite = np.isfinite(logits)
    row_max = np.max(np.where(finite, logits, -np.inf), axis=1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = (np.where(finite, logits, 0.0) - row_max) / temperature
    scaled = np.nan_to_num(scaled, nan=0.0, neginf=LOG_WEIGHT_CLAMP)
    return np.where(finite, np.maximum(scaled, LOG_WEIGHT_CLAMP), -np.inf)


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
    config.validate(n_candidates=np.shape(cand_logits)[1])
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
        log_w = sampling_log_weights(rest_logits, config.temperature)
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
