"""Off-policy estimators of a target policy's value from logged bandit feedback (DESIGN §4, §9).

Every estimator takes, per logged event i, the observed reward r_i, the probability π_i that the
*target* policy gives the logged action, and the probability β_i that the *logging* policy gave it
(the recorded propensity). With w_i = π_i / β_i:

- ``ips``          (1/n) Σ w_i r_i                     unbiased when β_i > 0 wherever π_i > 0;
- ``capped_ips``   (1/n) Σ min(w_i, c) r_i             lower variance, biased toward the logging policy
                                                        (downward for non-negative rewards);
- ``snips``        Σ w_i r_i / Σ w_i                   self-normalised, consistent, small bias;
- ``doubly_robust`` (1/n) Σ [v̂_i + w_i (r_i − r̂_i)]  with a reward model: r̂_i its prediction for the
                                                        logged action, v̂_i = Σ_a π(a|x_i) r̂(x_i, a).

The estimators reduce over the last axis, so the bootstrap evaluates many resamples in one call on
(n_boot, n) arrays. Plain NumPy: no torch needed to use them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from topkrec.errors import DataError

__all__ = [
    "DEFAULT_CAP",
    "BootstrapResult",
    "OpeReport",
    "bootstrap_ci",
    "capped_ips",
    "check_inputs",
    "doubly_robust",
    "effective_sample_size",
    "importance_weights",
    "ips",
    "off_policy_report",
    "snips",
]

DEFAULT_CAP = math.exp(3.0)  # the paper's production weight cap (§4.5), as in topkrec.policy.objective

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


def effective_sample_size(weights: np.ndarray) -> np.ndarray:
    """(Σw)² / Σw² over the last axis: n for equal weights, 1 when one weight dominates."""
    w = _f64(weights)
    sq = np.sum(w * w, axis=-1)
    total = np.sum(w, axis=-1)
    return np.divide(total * total, sq, out=np.zeros_like(sq), where=sq > 0)


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
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
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


@dataclass(frozen=True)
class OpeReport:
    """Every estimator with its bootstrap CI, plus ESS and n: the DESIGN §9 ``ope --json`` keys."""

    estimators: dict[str, BootstrapResult]  # ips, capped_ips, snips, and dr when a reward model is given
    ess: float
    n: int
    cap: float

    def as_dict(self) -> dict[str, object]:
        return {
            "estimators": {name: r.as_dict() for name, r in self.estimators.items()},
            "ess": self.ess,
            "n": self.n,
            "cap": self.cap,
        }


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
) -> OpeReport:
    """Check the inputs, then IPS, capped IPS, SNIPS (and DR given a reward model) with 95 % bootstrap CIs.

    Each estimator is bootstrapped with the same seed, so the resamples are the same events.
    """
    check_inputs(reward, target_prob, logging_prob)
    arrays = (_f64(reward), _f64(target_prob), _f64(logging_prob))

    def _capped(r: np.ndarray, t: np.ndarray, p: np.ndarray) -> np.ndarray:
        return capped_ips(r, t, p, cap=cap)

    results = {
        "ips": bootstrap_ci(ips, *arrays, n_boot=n_boot, seed=seed),
        "capped_ips": bootstrap_ci(_capped, *arrays, n_boot=n_boot, seed=seed),
        "snips": bootstrap_ci(snips, *arrays, n_boot=n_boot, seed=seed),
    }
    if (reward_hat_logged is None) != (value_hat_target is None):
        raise ValueError("doubly robust needs both reward_hat_logged and value_hat_target")
    if reward_hat_logged is not None and value_hat_target is not None:
        rh, vh = _f64(reward_hat_logged), _f64(value_hat_target)
        if rh.shape != arrays[0].shape or vh.shape != arrays[0].shape:
            raise DataError("reward-model predictions must have one value per logged row")
        if not (np.isfinite(rh).all() and np.isfinite(vh).all()):
            raise DataError("reward-model predictions contain missing or non-finite values")
        results["dr"] = bootstrap_ci(doubly_robust, *arrays, rh, vh, n_boot=n_boot, seed=seed)
    weights = importance_weights(arrays[1], arrays[2])
    return OpeReport(estimators=results, ess=float(effective_sample_size(weights)), n=int(weights.shape[0]), cap=cap)
