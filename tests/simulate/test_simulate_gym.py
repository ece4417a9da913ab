"""The sequential world as a gymnasium environment (the ``sim`` extra; skipped without gymnasium)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")

from gymnasium.utils.env_checker import check_env  # noqa: E402

from topkrec.simulate.environment import EVENT_TOKENS, EnvConfig, SessionState, rollout  # noqa: E402
from topkrec.simulate.gym_env import ENV_ID, SequentialRecEnv  # noqa: E402
from topkrec.simulate.streams import NoiseStreams  # noqa: E402

SMALL = EnvConfig(n_users=30, n_items=25, slate_size=4, max_len=6, seed=2)


def test_passes_gymnasium_env_checker() -> None:
    env = gym.make(ENV_ID, config=SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either
        check_env(env.unwrapped)
    check_env(SequentialRecEnv(SMALL, history="engaged", users="cycle"), skip_render_check=True)


def similar_to_last_engaged(env_items: np.ndarray, items: np.ndarray, events: np.ndarray, k: int) -> np.ndarray:
    """A deterministic policy of the observation alone: the k items most similar to the last engaged one
    (or the first k items when nothing was engaged yet)."""
    engaged = np.flatnonzero(events >= 2)
    if engaged.size == 0:
        return np.arange(k)
    sim = env_items @ env_items[items[engaged[-1]]]
    return np.argsort(-sim, kind="stable")[:k]


def test_cycle_order_reproduces_the_vectorised_rollout_exactly() -> None:
    env = SequentialRecEnv(SMALL, hist_len=5, users="cycle")
    vec = env.world.item_vec
    k = SMALL.slate_size
    obs, info = env.reset(seed=17)
    returns: list[float] = []
    for _ in range(2 * SMALL.n_users):  # two sessions per user
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(
                similar_to_last_engaged(vec, obs["items"], obs["events"], k)
            )
            total += reward
            done = terminated or truncated
        returns.append(total)
        obs, info = env.reset()

    def batch_policy(s: SessionState) -> np.ndarray:
        assert s.history_events is not None
        items = np.where(s.history >= 0, s.history, SMALL.n_items)
        return np.stack([similar_to_last_engaged(vec, i, e, k) for i, e in zip(items, s.history_events, strict=True)])

    res = rollout(env.world, batch_policy, 2, NoiseStreams((17,)), form="slate", hist_len=5)
    np.testing.assert_array_equal(np.array(returns), res.session_return)
    assert res.session_return.sum() > 0


def test_reset_semantics_observations_and_errors() -> None:
    env = SequentialRecEnv(SMALL)
    obs, info = env.reset(seed=3)
    assert obs in env.observation_space and info["session"] == 0
    assert np.all(obs["items"] == SMALL.n_items) and np.all(obs["events"] == 0)  # empty history: padding
    slate = np.array([0, 1, 2, 2])
    obs, reward, terminated, truncated, info = env.step(slate)
    assert info["shown"].tolist() == [True, True, True, False]  # the repeated item is shown once
    assert obs["items"][-3:].tolist() == [0, 1, 2]  # shown items enter the history in slate order
    assert set(EVENT_TOKENS[e] for e in obs["events"][-3:]) <= {"skip", "pv", "cart", "fav", "buy"}
    assert reward == {"none": 0.0, "pv": 1.0, "cart": 2.0, "fav": 2.0, "buy": 3.0}[info["event"]]
    user = info["user"]
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(slate)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(slate)
    # an unseeded reset is the next session of the same run: histories persist
    for _ in range(200):
        obs, info = env.reset()
        if info["user"] == user:
            assert np.any(obs["items"] != SMALL.n_items)
            break
    # a seeded reset starts a new run: same first observation, histories cleared
    first, _ = env.reset(seed=3)
    assert np.all(first["items"] == SMALL.n_items)
    with pytest.raises(ValueError, match="item ids"):
        env.step(np.array([0, 1, 2, SMALL.n_items]))
    with pytest.raises(ValueError, match="item ids"):
        env.step(np.array([0, 1]))


def test_same_seed_same_noise_for_every_policy() -> None:
    """Two policies on one seed meet the same users in the same order (common random numbers)."""

    def users_met(policy_item: int) -> list[int]:
        env = SequentialRecEnv(SMALL)
        _, info = env.reset(seed=5)
        met = [info["user"]]
        for _ in range(20):
            done = False
            while not done:
                _, _, term, trunc, _ = env.step(np.arange(SMALL.slate_size) + policy_item)
                done = term or trunc
            _, info = env.reset()
            met.append(info["user"])
        return met

    assert users_met(0) == users_met(10)


@pytest.mark.slow
def test_example_gym_rollout_runs(tmp_path) -> None:
    import subprocess
    import sys

    from support.paths import REPO

    r = subprocess.run(
        [sys.executable, str(REPO / "examples" / "gym_rollout.py"), "--sessions", "30"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = {line.split(":")[0].strip(): line for line in r.stdout.splitlines() if "reward per session" in line}
    assert set(lines) == {"random", "popularity prior", "topkrec (topk, greedy)"}
