"""Run recommendation policies in the simulator's gymnasium environment: popularity and a trained topkrec model.

    pip install 'topkrec[sim]'          # gymnasium
    python examples/gym_rollout.py [--sessions 300] [--model DIR]

Without ``--model`` the script first trains a small model the way ``topkrec simulate sequential`` does:
the world's biased logging policy β logs sessions, the log goes through ``prepare`` and ``train``
(``--correction topk``). A model passed with ``--model`` must come from logs of the same world (the same
``EnvConfig``, e.g. an earlier run of this script, which prints where it saved its model).

The loop is plain gymnasium: ``obs, info = env.reset(seed=0)``, ``env.step(slate)``. Every policy is run
on the same seed, so all of them meet the same users and the same noise (common random numbers) and
the difference of their mean returns is a paired comparison.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from topkrec.serve import Recommender, Session
from topkrec.simulate.environment import EnvConfig, Environment, LoggingPolicyConfig, logging_policy_probs, rollout
from topkrec.simulate.gym_env import SequentialRecEnv
from topkrec.simulate.sequential import prepare_logs

WORLD = EnvConfig(n_users=200, n_items=120, seed=7)
Policy = Callable[[dict], np.ndarray]  # observation → slate of K item ids


def train_model(work: Path) -> Path:
    """β's logs → prepare → train (topk correction): the model directory."""
    from topkrec.policy.config import AgentConfig, TrainConfig
    from topkrec.train import train_agent

    env = Environment(WORLD)
    logged = rollout(
        env, lambda s: logging_policy_probs(env, LoggingPolicyConfig(), s.last_engaged), 5, (7, 2), record=True
    )
    assert logged.log is not None
    logged.log.write(work / "logs.csv")
    data = prepare_logs(work / "logs.csv", work / "data")
    agent = AgentConfig(n_users=data.n_users, n_items=data.n_items, embed_size=16, hidden=64, trainable_embeddings=True)
    train = TrainConfig(epochs=8, batch_size=256, lr=3e-3, correction="topk", k=WORLD.slate_size, device="cpu")
    train_agent(data, work / "model", agent, train, force=True)
    return work / "model"


def mean_return(env: SequentialRecEnv, policy: Policy, sessions: int, seed: int = 0) -> float:
    """Mean total reward per session over ``sessions`` sessions of one seeded run."""
    totals = []
    obs, _ = env.reset(seed=seed)
    for _ in range(sessions):
        total, done = 0.0, False
        while not done:
            slate = policy(obs)
            obs, reward, terminated, truncated, info = env.step(slate)
            feedback = getattr(policy, "feedback", None)
            if feedback is not None:
                feedback(slate, info)
            total += reward
            done = terminated or truncated
        totals.append(total)
        obs, _ = env.reset()
    return float(np.mean(totals))


class ModelPolicy:
    """The trained π's top K, served through a step-wise session per user (raw ids are env item ids).

    The session starts from the user's history the model was trained on and is told what happened to
    every shown item (the engaged one's behaviour, ``skip`` for the others): its state is built by the
    model's own rules, as in training.
    """

    def __init__(self, rec: Recommender, k: int) -> None:
        self.rec, self.k = rec, k
        self.sessions: dict[int, Session] = {}

    def __call__(self, obs: dict) -> np.ndarray:
        session = self.sessions.setdefault(int(obs["user"]), self.rec.session(user=str(obs["user"])))
        self.current = session
        return np.array([int(i) for i in session.recommend(k=self.k, exclude_seen=False).items])

    def feedback(self, slate: np.ndarray, info: dict) -> None:
        for j, item in enumerate(slate):
            if info["shown"][j]:
                engaged = int(item) == info["engaged_item"]
                self.current.observe(str(int(item)), info["event"] if engaged else "skip")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=300)
    ap.add_argument("--model", type=Path, default=None)
    args = ap.parse_args()
    model = args.model or train_model(Path(tempfile.mkdtemp(prefix="topkrec-gym-")))
    print(f"model: {model}")

    env = SequentialRecEnv(WORLD)
    k = WORLD.slate_size
    head = np.argsort(-Environment(WORLD).item_logpop)[:k]  # the K items of highest popularity prior
    policies: dict[str, Policy] = {
        "random": lambda obs: env.np_random.choice(WORLD.n_items, size=k, replace=False),
        "popularity prior": lambda obs: head,
        "topkrec (topk, greedy)": ModelPolicy(Recommender.load(model, device="cpu"), k),
    }
    for name, policy in policies.items():
        print(f"{name:>24}: {mean_return(env, policy, args.sessions):.3f} reward per session")


if __name__ == "__main__":
    main()
