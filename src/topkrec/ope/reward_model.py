"""Reward models r̂(x, a, position) for DM and the DR family, fitted with K-fold cross-fitting.

``cross_fit`` splits the rows into K folds at random; each fold's predictions come from a model fitted
on the other K − 1 folds (Chernozhukov et al. 2018's cross-fitting, as the Open Bandit Pipeline's
``fit_predict`` does), so no row is scored by a model that saw its reward. It returns, per row, r̂ of the
logged action and v̂ = Σ_a π(a|x, position) r̂(x, a, position) under the target's distribution.

Models (``make_reward_model``):

- ``mean``: the mean logged reward of each (action, position) cell; a cell without rows falls back to
  the action's mean, and an action without rows to the overall mean. Ignores the context.
- ``linear``: ridge regression (penalty ``ridge`` on every coefficient but the intercept) on an intercept,
  one-hot action, one-hot position, the standardised context, and action × context interactions when
  n_actions × n_context ≤ ``MAX_INTERACTIONS`` (else without them, logged). NumPy only; the normal
  equations are accumulated over row chunks, so memory is O(p²) for p features, not O(n·p).
- ``gbm``: scikit-learn's ``HistGradientBoostingRegressor`` (squared error, 100 iterations, no early
  stopping, seeded) on action and position as categorical features plus the context. Needs the optional
  extra: ``pip install 'topkrec[ope]'``.

Context features are a (n, d) float matrix (``topkrec.ope.logs.encode_context`` builds it from named
columns: numeric columns as they are, text columns one-hot).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from topkrec.errors import DataError, TopkrecError

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_INTERACTIONS",
    "REWARD_MODELS",
    "GbmRewardModel",
    "LinearRewardModel",
    "MeanRewardModel",
    "RewardData",
    "RewardModel",
    "cross_fit",
    "make_reward_model",
]

REWARD_MODELS = ("mean", "linear", "gbm")
MAX_INTERACTIONS = 2048
"""The linear model includes action × context interactions only up to this many extra features."""
_CHUNK_ELEMENTS = 1 << 21  # values per prediction/feature chunk


@dataclass(frozen=True)
class RewardData:
    """What a reward model sees, one row per logged decision."""

    action: np.ndarray  # (n,) int64 action codes in [0, n_actions)
    n_actions: int
    context: np.ndarray  # (n, d) float64, d may be 0
    position: np.ndarray | None = None  # (n,) int64 position codes in [0, n_positions)
    n_positions: int = 1

    def __post_init__(self) -> None:
        n = self.action.shape[0]
        if self.context.shape[0] != n or (self.position is not None and self.position.shape[0] != n):
            raise ValueError("action, context and position must have one row per decision")
        if n and (self.action.min() < 0 or self.action.max() >= self.n_actions):
            raise ValueError(f"action codes must lie in [0, {self.n_actions})")

    @property
    def n(self) -> int:
        return int(self.action.shape[0])

    def positions(self, rows: np.ndarray) -> np.ndarray:
        return self.position[rows] if self.position is not None else np.zeros(rows.shape[0], dtype=np.int64)


class RewardModel(Protocol):
    def fit(self, data: RewardData, rows: np.ndarray, reward: np.ndarray) -> None:
        """Fit on ``data``'s ``rows`` with their rewards."""

    def predict_all(self, data: RewardData, rows: np.ndarray) -> np.ndarray:
        """(m, n_actions) predictions for every action at each row's context and position."""


class MeanRewardModel:
    """Mean reward per (action, position) cell, falling back to the action's mean, then the overall mean."""

    def fit(self, data: RewardData, rows: np.ndarray, reward: np.ndarray) -> None:
        a, pos = data.action[rows], data.positions(rows)
        n_a, n_p = data.n_actions, data.n_positions
        cell = a * n_p + pos
        sums = np.bincount(cell, weights=reward, minlength=n_a * n_p).reshape(n_a, n_p)
        counts = np.bincount(cell, minlength=n_a * n_p).reshape(n_a, n_p)
        overall = float(reward.mean()) if reward.size else 0.0
        a_sum, a_count = sums.sum(1), counts.sum(1)
        action_mean = np.divide(a_sum, a_count, out=np.full(n_a, overall), where=a_count > 0)
        self.table = np.where(counts > 0, sums / np.maximum(counts, 1), action_mean[:, None])  # (A, P)

    def predict_all(self, data: RewardData, rows: np.ndarray) -> np.ndarray:
        return self.table[:, data.positions(rows)].T.copy()


class LinearRewardModel:
    """Ridge regression on [1, one-hot action, one-hot position, context, action × context]."""

    def __init__(self, ridge: float = 1.0) -> None:
        if not ridge > 0:
            raise ValueError(f"ridge must be positive, got {ridge}")
        self.ridge = ridge

    def _layout(self, data: RewardData) -> None:
        d = data.context.shape[1]
        self.interactions = d > 0 and data.n_actions * d <= MAX_INTERACTIONS
        if d > 0 and not self.interactions:
            logger.warning(
                "linear reward model: %d actions × %d context features is over %d; fitted without action × "
                "context interactions",
                data.n_actions,
                d,
                MAX_INTERACTIONS,
            )
        self.n_pos = data.n_positions if data.position is not None else 0
        self.p = 1 + data.n_actions + self.n_pos + d + (data.n_actions * d if self.interactions else 0)

    def _features(self, data: RewardData, rows: np.ndarray, action: np.ndarray) -> np.ndarray:
        m, n_a, d = rows.shape[0], data.n_actions, data.context.shape[1]
        x = np.zeros((m, self.p))
        x[:, 0] = 1.0
        x[np.arange(m), 1 + action] = 1.0
        off = 1 + n_a
        if self.n_pos:
            x[np.arange(m), off + data.positions(rows)] = 1.0
            off += self.n_pos
        if d:
            z = (data.context[rows] - self.mean) / self.scale
            x[:, off : off + d] = z
            off += d
            if self.interactions:
                block = x[:, off : off + n_a * d].reshape(m, n_a, d)
                block[np.arange(m), action] = z
        return x

    def fit(self, data: RewardData, rows: np.ndarray, reward: np.ndarray) -> None:
        self._layout(data)
        ctx = data.context[rows]
        self.mean = ctx.mean(0) if ctx.shape[1] and rows.size else np.zeros(ctx.shape[1])
        std = ctx.std(0) if ctx.shape[1] and rows.size else np.ones(ctx.shape[1])
        self.scale = np.where(std > 0, std, 1.0)
        gram = np.zeros((self.p, self.p))
        moment = np.zeros(self.p)
        chunk = max(1, _CHUNK_ELEMENTS // self.p)
        for s in range(0, rows.shape[0], chunk):
            r = rows[s : s + chunk]
            x = self._features(data, r, data.action[r])
            gram += x.T @ x
            moment += x.T @ reward[s : s + chunk]
        penalty = np.full(self.p, self.ridge)
        penalty[0] = 0.0  # the intercept is not shrunk
        self.coef = np.linalg.solve(gram + np.diag(penalty) + 1e-12 * np.eye(self.p), moment)

    def predict_all(self, data: RewardData, rows: np.ndarray) -> np.ndarray:
        n_a, d = data.n_actions, data.context.shape[1]
        c = self.coef
        out = np.full((rows.shape[0], n_a), c[0]) + c[1 : 1 + n_a][None, :]
        off = 1 + n_a
        if self.n_pos:
            out += c[off + data.positions(rows)][:, None]
            off += self.n_pos
        if d:
            z = (data.context[rows] - self.mean) / self.scale
            out += (z @ c[off : off + d])[:, None]
            off += d
            if self.interactions:
                out += z @ c[off : off + n_a * d].reshape(n_a, d).T
        return out


class GbmRewardModel:
    """scikit-learn's HistGradientBoostingRegressor on (action, position, context)."""

    def __init__(self, seed: int = 0, max_iter: int = 100) -> None:
        try:
            from sklearn.ensemble import HistGradientBoostingRegressor
        except ImportError as e:
            raise TopkrecError(
                "--reward-model gbm needs scikit-learn: pip install 'topkrec[ope]' (or use linear or mean)"
            ) from e
        self._cls = HistGradientBoostingRegressor
        self.seed = seed
        self.max_iter = max_iter

    @staticmethod
    def _x(data: RewardData, rows: np.ndarray, action: np.ndarray) -> np.ndarray:
        return np.column_stack([action.astype(np.float64), data.positions(rows).astype(np.float64), data.context[rows]])

    def fit(self, data: RewardData, rows: np.ndarray, reward: np.ndarray) -> None:
        # HistGradientBoosting takes at most 255 categories per categorical feature (its max_bins)
        categorical = [data.n_actions <= 255, data.n_positions <= 255] + [False] * data.context.shape[1]
        self.model = self._cls(
            max_iter=self.max_iter, early_stopping=False, random_state=self.seed, categorical_features=categorical
        )
        self.model.fit(self._x(data, rows, data.action[rows]), reward)

    def predict_all(self, data: RewardData, rows: np.ndarray) -> np.ndarray:
        n_a = data.n_actions
        rep = np.repeat(rows, n_a)
        actions = np.tile(np.arange(n_a), rows.shape[0])
        return self.model.predict(self._x(data, rep, actions)).reshape(rows.shape[0], n_a)


def make_reward_model(kind: str, seed: int = 0) -> RewardModel:
    if kind == "mean":
        return MeanRewardModel()
    if kind == "linear":
        return LinearRewardModel()
    if kind == "gbm":
        return GbmRewardModel(seed=seed)
    raise TopkrecError(f"unknown reward model {kind!r}; use one of {', '.join(REWARD_MODELS)}")


def cross_fit(
    kind: str | Callable[[], RewardModel],
    data: RewardData,
    reward: np.ndarray,
    target_dist: Callable[[np.ndarray], np.ndarray],
    folds: int = 5,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(r̂ of each row's logged action, v̂ = Σ_a π(a|row) r̂(row, a)) with K-fold cross-fitting.

    ``target_dist(rows)`` gives the target's (m, n_actions) distribution at those rows (at each row's
    position). ``folds`` = 1 fits and predicts on all rows (no cross-fitting).
    """
    n = data.n
    reward = np.asarray(reward, dtype=np.float64)
    if reward.shape != (n,):
        raise ValueError("one reward per row")
    if not 1 <= folds <= n:
        raise DataError(f"--folds must be between 1 and the number of rows ({n}), got {folds}")
    rng = np.random.default_rng([seed, 7])
    fold_of = rng.permutation(n) % folds
    reward_hat = np.empty(n)
    value_hat = np.empty(n)
    chunk = max(1, _CHUNK_ELEMENTS // max(data.n_actions, 1))
    for k in range(folds):
        test = np.flatnonzero(fold_of == k)
        train = np.flatnonzero(fold_of != k) if folds > 1 else test
        model = make_reward_model(kind, seed=seed + k) if isinstance(kind, str) else kind()
        model.fit(data, train, reward[train])
        for s in range(0, test.shape[0], chunk):
            rows = test[s : s + chunk]
            q = model.predict_all(data, rows)
            reward_hat[rows] = q[np.arange(rows.shape[0]), data.action[rows]]
            value_hat[rows] = np.einsum("ma,ma->m", target_dist(rows), q)
    return reward_hat, value_hat
