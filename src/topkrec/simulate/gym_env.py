"""The sequential world as a ``gymnasium.Env`` (needs the ``sim`` extra: ``pip install 'topkrec[sim]'``).

One episode is one session of one user. The world (items, users, tastes) is fixed by
``EnvConfig.seed``; the noise is keyed by the seed given to ``reset``:

- ``reset(seed=s)`` starts a new run: every user's history is cleared and the noise streams are
  ``NoiseStreams((s,))``, so a run is reproducible and two policies run on the same seed meet the same
  users and the same noise (exact common random numbers, as in ``rollout``);
- ``reset()`` starts the run's next session; users keep their histories across sessions.

Observation (a ``Dict``): ``user`` (the user id), ``items`` (H,) and ``events`` (H,) — the user's last H
feedback tokens, oldest first: the item (``n_items`` = padding) and what the user did with it
(``EVENT_TOKENS``: 0 padding, 1 skip, 2 pv, 3 cart, 4 fav, 5 buy). With ``history="shown"`` every shown
item enters the history (skipped ones as skip); with ``"engaged"`` only the engaged one.

Action: a slate of K item ids (``MultiDiscrete([n_items] * K)``). Slates are meant to hold K distinct
items; a repeated item is shown once (``info["shown"]`` marks the positions shown).

Reward: the engagement's reward (pv 1, cart 2, fav 2, buy 3; 0 for none). ``terminated``: the user ended
the session; ``truncated``: the session reached ``max_len`` steps.

Which user a session belongs to: ``users="random"`` (default) draws it from its own stream;
``users="cycle"`` runs user 0, 1, …, U − 1, then a second session of each, and so on — in that order,
with the same key and the same policy, the sessions are exactly those of ``rollout`` (tested).
"""

from __future__ import annotations

from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from topkrec.simulate.environment import (
    EVENT_TOKENS,
    EnvConfig,
    Environment,
    push_history,
    slate_events,
)
from topkrec.simulate.streams import Component, NoiseStreams

__all__ = ["ENV_ID", "SequentialRecEnv"]

ENV_ID = "topkrec/SequentialRec-v0"


class SequentialRecEnv(gym.Env[dict[str, Any], np.ndarray]):
    """The ground-truth session world of ``topkrec.simulate.environment`` as a gymnasium environment."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        config: EnvConfig | None = None,
        hist_len: int = 10,
        history: Literal["shown", "engaged"] = "shown",
        users: Literal["random", "cycle"] = "random",
    ) -> None:
        if history not in ("shown", "engaged"):
            raise ValueError(f"history must be 'shown' or 'engaged', got {history!r}")
        if users not in ("random", "cycle"):
            raise ValueError(f"users must be 'random' or 'cycle', got {users!r}")
        if hist_len < 1:
            raise ValueError(f"hist_len must be at least 1, got {hist_len}")
        self.config = config or EnvConfig()
        self.world = Environment(self.config)
        self.hist_len = hist_len
        self.history_mode = history
        self.user_order = users
        c = self.config
        self.observation_space = spaces.Dict(
            {
                "user": spaces.Discrete(c.n_users),
                "items": spaces.MultiDiscrete(np.full(hist_len, c.n_items + 1, dtype=np.int64)),
                "events": spaces.MultiDiscrete(np.full(hist_len, len(EVENT_TOKENS), dtype=np.int64)),
            }
        )
        self.action_space = spaces.MultiDiscrete(np.full(c.slate_size, c.n_items, dtype=np.int64))
        self._streams: NoiseStreams | None = None
        self._hist = np.full((c.n_users, hist_len), -1, dtype=np.int64)
        self._hist_ev = np.zeros((c.n_users, hist_len), dtype=np.int64)
        self._episode = -1
        self._user = 0
        self._round = 0
        self._step = 0
        self._taste = np.zeros((1, c.dim))
        self._done = True

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        c = self.config
        if seed is not None or self._streams is None:
            key = (int(seed),) if seed is not None else tuple(self.np_random.integers(0, 2**31, size=2).tolist())
            self._streams = NoiseStreams(key)
            self._hist.fill(-1)
            self._hist_ev.fill(0)
            self._episode = -1
        self._episode += 1
        if self.user_order == "cycle":
            self._round, self._user = divmod(self._episode, c.n_users)
        else:
            self._round = self._episode
            u = self._streams.draw(Component.USER, self._episode, 0, np.zeros(1, dtype=np.int64), 1)[0, 0]
            self._user = min(int(u * c.n_users), c.n_users - 1)
        users = np.array([self._user])
        self._taste = self.world.start_sessions(
            users, self._streams.draw(Component.START, self._round, 0, users, c.dim)
        )
        self._step = 0
        self._done = False
        return self._observation(), {"user": self._user, "session": self._episode}

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self._done or self._streams is None:
            raise RuntimeError("the session is over: call reset() before step()")
        c = self.config
        slate = np.asarray(action, dtype=np.int64).reshape(1, -1)
        if slate.shape[1] != c.slate_size or slate.min() < 0 or slate.max() >= c.n_items:
            raise ValueError(f"an action is {c.slate_size} item ids in 0..{c.n_items - 1}, got {action!r}")
        shown = np.ones_like(slate, dtype=bool)
        for j in range(1, slate.shape[1]):
            shown[:, j] = ~(slate[:, :j] == slate[:, j : j + 1]).any(axis=1)
        users = np.array([self._user])
        out = self.world.step(self._streams, self._round, self._step, users, self._taste, slate, shown)
        events = slate_events(out.choice, out.behavior, slate.shape[1])
        chosen = np.arange(slate.shape[1])[None, :] == out.choice[:, None]
        keep = shown if self.history_mode == "shown" else shown & chosen
        push_history(self._hist, self._hist_ev, users, slate, events, keep)
        self._taste = out.taste
        terminated = bool(out.left[0])
        truncated = bool(out.ends[0]) and not terminated
        self._step += 1
        self._done = terminated or truncated
        info = {
            "user": self._user,
            "session": self._episode,
            "step": self._step - 1,
            "shown": shown[0].copy(),
            "engaged_item": int(out.engaged_item[0]),
            "event": EVENT_TOKENS[int(events[0, out.choice[0]])] if out.choice[0] >= 0 else "none",
        }
        return self._observation(), float(out.reward[0]), terminated, truncated, info

    # ------------------------------------------------------------------ helpers
    def _observation(self) -> dict[str, Any]:
        items = self._hist[self._user]
        return {
            "user": self._user,
            "items": np.where(items >= 0, items, self.config.n_items).astype(np.int64),
            "events": self._hist_ev[self._user].astype(np.int64),
        }

    @property
    def taste(self) -> np.ndarray:
        """The current session's true taste (d,): for reference policies such as an oracle, never for learners."""
        return self._taste[0].copy()


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="topkrec.simulate.gym_env:SequentialRecEnv")
