"""Simulator throughput: the vectorised rollout vs one session at a time, in one run.

    python benchmarks/bench_simulate.py [--users 400 --items 300 --sessions 2 --rounds 3]

- **vectorised**: ``topkrec.simulate.environment.rollout`` — every user's session advances together,
  one NumPy call per step for the logging policy, the slate draws, the choice model and the taste update;
- **per-session**: the same environment methods and logging policy called with one session at a time
  (B = 1), the way a gym-style ``env.step(action)`` loop runs; same number of sessions.

Both record the log rows. The figure is simulated steps (one slate shown to one user) per second; the
ratio vectorised / per-session is what the vectorisation buys. Rounds alternate the two and the best of
each is kept (the two cores are shared). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from topkrec.simulate.environment import (
    EnvConfig,
    Environment,
    LoggingPolicyConfig,
    logging_policy_probs,
    rollout,
    sample_slates,
)


def per_session(env: Environment, lp: LoggingPolicyConfig, sessions: int, rng: np.random.Generator) -> int:
    """One session at a time, one step at a time (B = 1); returns the steps simulated."""
    c = env.config
    steps = 0
    for _ in range(sessions):
        for user in range(c.n_users):
            users = np.array([user])
            taste = env.start_sessions(users, rng)
            last = np.array([-1])
            for step in range(c.max_len):
                probs = logging_policy_probs(env, lp, last)
                slates, shown = sample_slates(probs, c.slate_size, rng)
                choice, _ = env.respond(taste, slates, shown, rng)
                engaged = choice >= 0
                item = np.where(engaged, slates[0, max(int(choice[0]), 0)], -1)
                last = np.where(engaged, item, last)
                taste = env.next_taste(taste, item, engaged, rng)
                steps += 1
                if env.session_ends(engaged, step, rng)[0]:
                    break
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=400)
    ap.add_argument("--items", type=int, default=300)
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    env = Environment(EnvConfig(n_users=args.users, n_items=args.items))
    lp = LoggingPolicyConfig()
    best_vec, best_loop = 0.0, 0.0
    for r in range(args.rounds):
        t = time.perf_counter()
        res = rollout(
            env,
            lambda s: logging_policy_probs(env, lp, s.last_engaged),
            args.sessions,
            np.random.default_rng(r),
            record=True,
        )
        vec_rate = float(res.session_length.sum()) / (time.perf_counter() - t)
        t = time.perf_counter()
        n = per_session(env, lp, args.sessions, np.random.default_rng(r))
        loop_rate = n / (time.perf_counter() - t)
        best_vec, best_loop = max(best_vec, vec_rate), max(best_loop, loop_rate)
        print(f"round {r}: vectorised {vec_rate:,.0f} steps/s, per-session {loop_rate:,.0f} steps/s", flush=True)
    print(
        json.dumps(
            {
                "users": args.users,
                "items": args.items,
                "sessions_per_user": args.sessions,
                "vectorised_steps_per_s": round(best_vec, 1),
                "per_session_steps_per_s": round(best_loop, 1),
                "speedup": round(best_vec / best_loop, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
