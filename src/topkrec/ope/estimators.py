"""Off-policy estimators of a target policy's value from logged bandit feedback (DESIGN §4, §9).

Every estimator takes, per logged event i, the observed reward r_i, the probability π_i that the
*target* policy gives the logged action, and the probability β_i that the *logging* policy gave it
(the recorded propensity). With w_i = π_i / β_i:

- ``ips``          (1/n) Σ w_i r_i                     unbiased when β_i > 0 wherever π_i > 0;
- ``capped_ips``   (1/n) Σ min(w_i, c) r_i             lower variance, biased toward the logging policy
                                                        (downward for non-negative rewards);
- ``snips``        Σ w_i r_i / Σ w_i                   self-normalised, consistent, small bias;
- ``doubly_robust`` (1/n) Σ [v̂_i + w_i (r_i − r̂_i)]  with a reward model: r̂_i its prediction for the
                                                        logged action, v̂_i = Σ_a π(a|x_i) r̂(x_i, a);
- ``direct_method`` (1/n) Σ v̂_i                       the reward model alone (biased if it is wrong);
- ``self_normalized_dr`` (1/n) Σ v̂_i + Σ w_i (r_i − r̂_i) / Σ w_i   (Kallus & Uehara 2019; the
                                                        correction term self-normalised like SNIPS);
- ``switch_dr``    (1/n) Σ [v̂_i + w_i (r_i − r̂_i) 1{w_i ≤ τ}]   (Wang et al. ICML 2017): the DR
                                                        correction only where the weight is at most τ;
                                                        τ = ∞ is DR, τ = 0 is DM;
- ``dr_shrinkage`` (1/n) Σ [v̂_i + ŵ_i (r_i − r̂_i)], ŵ = λw/(w² + λ)  (DRos, Su et al. ICML 2020):
                                                        optimistic shrinkage of the weights; λ = ∞ is
                                                        DR, λ = 0 is DM.

The Switch-DR and DRos forms are those of the Open Bandit Pipeline (Saito et al. 2021), the field's
reference library, so their values can be compared one to one.

The estimators reduce over the last axis, so the bootstrap evaluates many resamples in one call on
(n_boot, n) arrays: a ratio estimator (SNIPS, SNDR) is recomputed per resample. Plain NumPy: no torch
needed to use them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from topkrec.errors import DataError

__all__ = [
    "DEFAULT_CAP",
    "LOW_ESS_MIN",
    "LOW_ESS_SHARE",
    "MAX_BOOT",
    "BootstrapResult",
    "OpeReport",
    "bootstrap_ci",
    "capped_ips",
    "check_inputs",
    "default_dros_lambda",
    "direct_method",
    "doubly_robust",
    "dr_shrinkage",
    "effective_sample_size",
    "importance_weights",
    "ips",
    "low_ess_warning",
    "off_policy_report",
    "self_normalized_dr",
    "shrunk_weights",
    "snips",
    "switch_dr",
]

DEFAULT_CAP = math.exp(3.0)  # the paper's production weight cap (§4.5), as in topkrec.policy.objective
LOW_ESS_SHARE = 0.01
"""A report warns when the effective sample size is below this share of the rows (or below ``LOW_ESS_MIN``):
the estimates then rest on a handful of rows with large weights, whatever their intervals say."""
LOW_ESS_MIN = 10.0
MAX_BOOT = 100_000
"""Upper bound on bootstrap resamples: a percentile interval does not improve past a few thousand."""

Estimator = Callable[..., np.ndarray | float]


def _f64(x: np.ndarray | float) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def importance_weights(target_prob: np.ndarray, logging_prob: np.ndarray) -> np.ndarray:
    """w = π / β per event."""
    return _f64(target_prob) / _f64(logging_prob)


def ips(reward: np.ndarray, target_prob: np.ndarray, logging_prob: np.ndarray) -> np.ndarray:
    """Inverse propensity scoring: mean of w·r over the last axis."""
    return np.mean(importance_weights(target_prob, logging_prob) * _f64(reward), axis=-1)


def capped_ips(
    reward: np.ndarray, target_prob: np.ndarray, logging_prob: np.ndarray, cap: float = DEFAULT_CAP
) -> np.ndarray:
    """IPS with weights min(w, cap) (Bottou et al. 2013; the paper's §4.5 capping)."""
    if not cap > 0:
        raise ValueError(f"cap must be positive, got {cap}")
    w = np.minimum(importance_weights(target_prob, logging_prob), cap)
    return np.mean(w * _f64(reward), axis=-1)


def snips(reward: np.ndarray, target_prob: np.ndarray, logging_prob: np.ndarray) -> np.ndarray:
    """Self-normalised IPS: Σ w·r / Σ w (0 where every weight is 0)."""
    w = importance_weights(target_prob, logging_prob)
    num = np.sum(w * _f64(reward), axis=-1)
    den = np.sum(w, axis=-1)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def doubly_robust(
    reward: np.ndarray,
    target_prob: np.ndarray,
    logging_prob: np.ndarray,
    reward_hat_logged: np.ndarray,
    value_hat_target: np.ndarray,
) -> np.ndarray:
    """Doubly robust (Dudík et al. 2011): mean of v̂ + w·(r − r̂); unbiased if β is right or r̂ is."""
    w = importance_weights(target_prob, logging_prob)
    return np.mean(_f64(value_hat_target) + w * (_f64(reward) - _f64(reward_hat_logged)), axis=-1)


def direct_method(value_hat_target: np.ndarray) -> np.ndarray:
    """Direct method: the reward model's expected reward under the target, v̂_i = Σ_a π(a|x_i) r̂(x_i, a), averaged."""
    return np.mean(_f64(value_hat_target), axis=-1)


def self_normalized_dr(
    reward: np.ndarray,
    target_prob: np.ndarray,
    logging_prob: np.ndarray,
    reward_hat_logged: np.ndarray,
    value_hat_target: np.ndarray,
) -> np.ndarray:
    """Self-normalised DR: mean of v̂ + Σ w·(r − r̂) / Σ w (DM where every weight is 0)."""
    w = importance_weights(target_prob, logging_prob)
    correction = np.sum(w * (_f64(reward) - _f64(reward_hat_logged)), axis=-1)
    total = np.sum(w, axis=-1)
    ratio = np.divide(correction, total, out=np.zeros_like(correction), where=total > 0)
    return np.mean(_f64(value_hat_target), axis=-1) + ratio


def switch_dr(
    reward: np.ndarray,
    target_prob: np.ndarray,
    logging_prob: np.ndarray,
    reward_hat_logged: np.ndarray,
    value_hat_target: np.ndarray,
    tau: float,
) -> np.ndarray:
    """Switch-DR (Wang et al. 2017): mean of v̂ + w·(r − r̂)·1{w ≤ τ}; τ = ∞ gives DR, τ = 0 gives DM."""
    if not tau >= 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    w = importance_weights(target_prob, logging_prob)
    kept = np.where(w <= tau, w, 0.0)
    return np.mean(_f64(value_hat_target) + kept * (_f64(reward) - _f64(reward_hat_logged)), axis=-1)


def shrunk_weights(weights: np.ndarray, lam: float) -> np.ndarray:
    """DRos weights λw/(w² + λ): w itself for λ = ∞, 0 for λ = 0; never above √λ/2."""
    if not lam >= 0:
        raise ValueError(f"lambda must be >= 0, got {lam}")
    w = _f64(weights)
    if math.isinf(lam):
        return w
    den = w * w + lam
    return np.divide(lam * w, den, out=np.zeros_like(w), where=den > 0)


def dr_shrinkage(
    reward: np.ndarray,
    target_prob: np.ndarray,
    logging_prob: np.ndarray,
    reward_hat_logged: np.ndarray,
    value_hat_target: np.ndarray,
    lam: float,
) -> np.ndarray:
    """DR with optimistic shrinkage (DRos, Su et al. 2020): DR with w replaced by λw/(w² + λ)."""
    w = shrunk_weights(importance_weights(target_prob, logging_prob), lam)
    return np.mean(_f64(value_hat_target) + w * (_f64(reward) - _f64(reward_hat_logged)), axis=-1)


def effective_sample_size(weights: np.ndarray) -> np.ndarray:
    """(Σw)² / Σw² over the last axis: n for equal weights, 1 when one weight dominates.

    Computed on w / max(w), so it stays finite (and exact) for weights near the float64 limit.
    """
    w = _f64(weights)
    scale = np.max(np.abs(w), axis=-1, keepdims=True) if w.size else np.ones(w.shape[:-1] + (1,))
    w = np.divide(w, scale, out=np.zeros_like(w), where=scale > 0)
    sq = np.sum(w * w, axis=-1)
    total = np.sum(w, axis=-1)
    return np.divide(total * total, sq, out=np.zeros_like(sq), where=sq > 0)


def low_ess_warning(ess: float, n: int, share: float = LOW_ESS_SHARE, minimum: float = LOW_ESS_MIN) -> str | None:
    """A warning when the ESS is below ``share`` of n or below ``minimum``, else None."""
    if n <= 0 or (ess >= share * n and ess >= minimum):
        return None
    return (
        f"effective sample size {ess:.1f} is {100 * ess / n:.2g} % of the {n} rows "
        f"(warned below {100 * share:g} % or {minimum:g}): a few rows with large weights carry the "
        "importance-weighted estimates, so their intervals are unreliable; prefer capped IPS, SNIPS or the "
        "DR family, or a target closer to the logging policy"
    )


@dataclass(frozen=True)
class BootstrapResult:
    """A point estimate on the full sample and a percentile bootstrap interval."""

    value: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high}


def bootstrap_ci(
    estimator: Estimator,
    *arrays: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    max_elements: int = 4_000_000,
) -> BootstrapResult:
    """Percentile bootstrap interval of ``estimator(*arrays)``, resampling events with replacement.

    ``estimator`` must reduce over the last axis (all estimators here do): resamples are evaluated
    as (chunk, n) arrays, with chunks sized to keep at most ``max_elements`` values per array.
    """
    if not 1 <= n_boot <= MAX_BOOT:
        raise ValueError(f"n_boot must be in [1, {MAX_BOOT}], got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    cols = [_f64(a) for a in arrays]
    n = cols[0].shape[-1]
    if n == 0:
        raise DataError("cannot estimate a value from an empty log")
    if any(c.shape != (n,) for c in cols):
        raise ValueError(f"all arrays must be 1-D of the same length, got {[c.shape for c in cols]}")
    value = float(estimator(*cols))
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, max_elements // n))
    stats = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(m, n))
        stats[start : start + m] = estimator(*(c[idx] for c in cols))
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return BootstrapResult(value=value, ci_low=float(low), ci_high=float(high))


def check_inputs(
    reward: np.ndarray,
    target_prob: np.ndarray,
    logging_prob: np.ndarray,
    names: tuple[str, str, str] = ("reward", "target probability", "propensity"),
) -> None:
    """Raise ``DataError`` on NaN/inf, propensities outside (0, 1] or target probabilities outside [0, 1]."""
    r, t, p = (_f64(x) for x in (reward, target_prob, logging_prob))
    if not (r.shape == t.shape == p.shape) or r.ndim != 1:
        raise DataError(f"reward, target and propensity must be 1-D of one length, got {r.shape}, {t.shape}, {p.shape}")
    if r.size == 0:
        raise DataError("the log has no rows")
    for arr, name in zip((r, t, p), names, strict=True):
        bad = ~np.isfinite(arr)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{name} has {int(bad.sum())} missing or non-finite values (first at row {row})")
    bad = (p <= 0) | (p > 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{names[2]} must lie in (0, 1]; {int(bad.sum())} rows do not (first at row {row}: {p[row]!r})")
    bad = (t < 0) | (t > 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{names[1]} must lie in [0, 1]; {int(bad.sum())} rows do not (first at row {row}: {t[row]!r})")
    with np.errstate(over="ignore"):
        bad = ~np.isfinite(t / p)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"the importance weight {names[1]}/{names[2]} overflows float64 at {int(bad.sum())} rows "
            f"(first at row {row}: {t[row]!r}/{p[row]!r}); {names[2]} this small cannot be right"
        )


@dataclass(frozen=True)
class OpeReport:
    """Every estimator with its bootstrap CI, plus ESS and n: the DESIGN §9 ``ope --json`` keys."""

    estimators: dict[str, BootstrapResult]  # ips, capped_ips, snips; dm, dr, sndr, switch_dr, dros with a reward model
    ess: float
    n: int
    cap: float
    level: float = 0.95
    switch_tau: float | None = None
    dros_lambda: float | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "estimators": {name: r.as_dict() for name, r in self.estimators.items()},
            "ess": self.ess,
            "n": self.n,
            "cap": self.cap,
            "level": self.level,
        }
        if self.switch_tau is not None:
            out["switch_tau"] = self.switch_tau
        if self.dros_lambda is not None:
            out["dros_lambda"] = self.dros_lambda
        out["warnings"] = list(self.warnings)
        return out


def default_dros_lambda(cap: float) -> float:
    """λ = cap²: DRos then weights no row by more than cap/2 and leaves weights well below cap nearly unchanged."""
    return cap * cap


def off_policy_report(
    reward: np.ndarray,
    target_prob: np.ndarray,
    logging_prob: np.ndarray,
    *,
    cap: float = DEFAULT_CAP,
    reward_hat_logged: np.ndarray | None = None,
    value_hat_target: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    switch_tau: float | None = None,
    dros_lambda: float | None = None,
) -> OpeReport:
    """Check the inputs, then IPS, capped IPS, SNIPS (and, given a reward model, DM, DR, SNDR, Switch-DR,
    DRos) with percentile bootstrap intervals at ``level``.

    Every estimator is bootstrapped with the same seed, so the resamples are the same events. Switch-DR's
    τ defaults to ``cap`` and DRos's λ to ``cap²`` (``default_dros_lambda``). A low effective sample size
    (``low_ess_warning``) is reported in ``warnings``.
    """
    check_inputs(reward, target_prob, logging_prob)
    if not cap > 0:
        raise ValueError(f"cap must be positive, got {cap}")
    arrays = (_f64(reward), _f64(target_prob), _f64(logging_prob))
    boot: dict[str, Any] = {"n_boot": n_boot, "seed": seed, "level": level}

    def _capped(r: np.ndarray, t: np.ndarray, p: np.ndarray) -> np.ndarray:
        return capped_ips(r, t, p, cap=cap)

    results = {
        "ips": bootstrap_ci(ips, *arrays, **boot),
        "capped_ips": bootstrap_ci(_capped, *arrays, **boot),
        "snips": bootstrap_ci(snips, *arrays, **boot),
    }
    if (reward_hat_logged is None) != (value_hat_target is None):
        raise ValueError("doubly robust needs both reward_hat_logged and value_hat_target")
    tau = lam = None
    if reward_hat_logged is not None and value_hat_target is not None:
        rh, vh = _f64(reward_hat_logged), _f64(value_hat_target)
        if rh.shape != arrays[0].shape or vh.shape != arrays[0].shape:
            raise DataError("reward-model predictions must have one value per logged row")
        if not (np.isfinite(rh).all() and np.isfinite(vh).all()):
            raise DataError("reward-model predictions contain missing or non-finite values")
        tau = cap if switch_tau is None else float(switch_tau)
        lam = default_dros_lambda(cap) if dros_lambda is None else float(dros_lambda)
        if not tau >= 0 or not lam >= 0:
            raise ValueError(f"switch_tau and dros_lambda must be >= 0, got {tau} and {lam}")

        def _dm(r: np.ndarray, t: np.ndarray, p: np.ndarray, rh_: np.ndarray, vh_: np.ndarray) -> np.ndarray:
            return direct_method(vh_)

        def _switch(r: np.ndarray, t: np.ndarray, p: np.ndarray, rh_: np.ndarray, vh_: np.ndarray) -> np.ndarray:
            return switch_dr(r, t, p, rh_, vh_, tau=tau)

        def _dros(r: np.ndarray, t: np.ndarray, p: np.ndarray, rh_: np.ndarray, vh_: np.ndarray) -> np.ndarray:
            return dr_shrinkage(r, t, p, rh_, vh_, lam=lam)

        with_model = (*arrays, rh, vh)
        results["dm"] = bootstrap_ci(_dm, *with_model, **boot)
        results["dr"] = bootstrap_ci(doubly_robust, *with_model, **boot)
        results["sndr"] = bootstrap_ci(self_normalized_dr, *with_model, **boot)
        results["switch_dr"] = bootstrap_ci(_switch, *with_model, **boot)
        results["dros"] = bootstrap_ci(_dros, *with_model, **boot)
    weights = importance_weights(arrays[1], arrays[2])
    ess = float(effective_sample_size(weights))
    n = int(weights.shape[0])
    warning = low_ess_warning(ess, n)
    return OpeReport(
        estimators=results,
        ess=ess,
        n=n,
        cap=cap,
        level=level,
        switch_tau=tau,
        dros_lambda=lam,
        warnings=[warning] if warning else [],
    )
