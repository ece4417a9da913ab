"""The sequential simulator: throughput of the vectorised rollout, and the table of the three worlds.

    python benchmarks/bench_simulate.py [--users 400 --items 300 --sessions 2 --rounds 3]
    python benchmarks/bench_simulate.py --table [--worlds default,costly-bias,many-good] [--seeds 5] [--out DIR]

Throughput (default mode):

- **vectorised**: ``topkrec.simulate.environment.rollout`` — every user's session advances together,
  one NumPy call per step for the logging policy, the slate draws, the choice model and the taste update;
- **per-session**: the same environment (``Environment.step`` on the same noise streams) called with one
  session at a time (B = 1), the way a gym-style ``env.step(action)`` loop runs; same sessions.

Both give identical sessions (same streams, tested in tests/simulate/test_simulate_gym.py). The figure is
simulated steps (one slate shown to one user) per second; the ratio vectorised / per-session is what the
vectorisation buys. Rounds alternate the two and the best of each is kept (the two cores are shared).

``--table`` runs ``topkrec simulate sequential`` (``run_sequential``) on each world in this one process,
writes each result JSON into ``--out``, and prints the marginal and paired tables of docs/simulate.md
as Markdown. The last line is one JSON object in both modes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from topkrec.simulate.environment import (
    EnvConfig,
    Environment,
    LoggingPolicyConfig,
    logging_policy_probs,
    rollout,
    sample_slates,
)
from topkrec.simulate.streams import Component, NoiseStreams


def per_session(env: Environment, lp: LoggingPolicyConfig, sessions: int, streams: NoiseStreams) -> int:
    """One session at a time, one step at a time (B = 1); returns the steps simulated."""
    c = env.config
    steps = 0
    last_engaged = np.full(c.n_users, -1)  # β looks at the user's last engaged item, across sessions
    for s in range(sessions):
        for user in range(c.n_users):
            users = np.array([user])
            taste = env.start_sessions(users, streams.draw(Component.START, s, 0, users, c.dim))
            last = last_engaged[users]
            for step in range(c.max_len):
                probs = logging_policy_probs(env, lp, last)
                slates, shown = sample_slates(
                    probs, c.slate_size, streams.draw(Component.DRAWS, s, step, users, c.slate_size)
                )
                out = env.step(streams, s, step, users, taste, slates, shown)
                last = np.where(out.engaged, out.engaged_item, last)
                taste = out.taste
                steps += 1
                if out.ends[0]:
                    break
            last_engaged[user] = last[0]
    return steps


def throughput(args: argparse.Namespace) -> None:
    env = Environment(EnvConfig(n_users=args.users, n_items=args.items))
    lp = LoggingPolicyConfig()
    best_vec, best_loop = 0.0, 0.0
    for r in range(args.rounds):
        t = time.perf_counter()
        res = rollout(
            env, lambda s: logging_policy_probs(env, lp, s.last_engaged), args.sessions, NoiseStreams((r,)), record=True
        )
        vec_rate = float(res.session_length.sum()) / (time.perf_counter() - t)
        t = time.perf_counter()
        n = per_session(env, lp, args.sessions, NoiseStreams((r,)))
        assert n == int(res.session_length.sum())  # the same sessions
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


MAIN_ROWS = (
    ("none", "none, K draws"),
    ("is", "is, K draws"),
    ("topk", "topk, K draws"),
    ("none_pl", "none, PL"),
    ("is_pl", "is, PL"),
    ("topk_pl", "topk, PL"),
    ("none_greedy", "none, greedy"),
    ("is_greedy", "is, greedy"),
    ("topk_greedy", "topk, greedy"),
    ("popularity", "popularity"),
    ("logging", "β (logging)"),
    ("behavior", "β̂ (behaviour clone)"),
    ("uniform", "uniform"),
    ("oracle", "oracle"),
)
PAIR_ROWS = (
    "topk-none",
    "topk-is",
    "is-none",
    "topk_pl-none_pl",
    "topk_pl-is_pl",
    "is_pl-none_pl",
    "topk_greedy-none_greedy",
    "topk_greedy-is_greedy",
    "is_greedy-none_greedy",
    "none_pl-none",
    "topk_pl-topk",
    "none_greedy-none_pl",
    "none_greedy-popularity",
    "topk_greedy-popularity",
    "topk_pl-popularity",
    "behavior-logging",
    "popularity-logging",
)


def _cell(mean: float, lo: float, hi: float, signed: bool = False) -> str:
    f = "{:+.2f}" if signed else "{:.2f}"
    return f"{f.format(mean)} [{f.format(lo)}, {f.format(hi)}]"


def markdown_tables(results: dict[str, dict[str, Any]]) -> str:
    worlds = list(results)
    head = "| policy | " + " | ".join(worlds) + " |\n|---|" + "---|" * len(worlds)
    lines = [head]
    for name, label in MAIN_ROWS:
        cells = []
        for w in worlds:
            p = results[w]["policies"].get(name)
            cells.append(_cell(p["true_value"], p["ci_low"], p["ci_high"]) if p else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    head = "| A − B | " + " | ".join(worlds) + " |\n|---|" + "---|" * len(worlds)
    lines.append(head)
    for pair in PAIR_ROWS:
        cells = []
        for w in worlds:
            d = results[w]["paired"].get(pair)
            if d is None:
                cells.append("–")
                continue
            positive = sum(x > 0 for x in d["per_seed"])
            cells.append(
                _cell(d["mean"], d["ci_low"], d["ci_high"], signed=True) + f" ({positive}/{len(d['per_seed'])})"
            )
        lines.append(f"| {pair.replace('-', ' − ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(args: argparse.Namespace) -> None:
    from topkrec.io import write_json
    from topkrec.simulate.sequential import SequentialConfig, run_sequential

    t0 = time.perf_counter()
    cpu0 = time.process_time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for world in args.worlds.split(","):
        config = SequentialConfig.for_world(world, n_seeds=args.seeds, seed=args.seed)
        res = run_sequential(config, progress=False)
        write_json(out / f"{world}.json", res)
        results[world] = res
        print(f"{world}: {res['elapsed_s']:.0f} s wall, {res['cpu_s']:.0f} s CPU", flush=True)
    print(markdown_tables(results))
    summary = {
        "worlds": {
            w: {
                "policies": {
                    n: {k: p[k] for k in ("true_value", "ci_low", "ci_high", "per_seed")}
                    for n, p in r["policies"].items()
                },
                "paired": {
                    n: {k: d[k] for k in ("mean", "ci_low", "ci_high", "per_seed")} for n, d in r["paired"].items()
                },
                "elapsed_s": round(r["elapsed_s"], 1),
            }
            for w, r in results.items()
        },
        "seeds": args.seeds,
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(time.process_time() - cpu0, 1),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(summary))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=400)
    ap.add_argument("--items", type=int, default=300)
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--table", action="store_true", help="Run the three worlds and print the docs' tables.")
    ap.add_argument("--worlds", default="default,costly-bias,many-good")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="topkrec-simulate/worlds")
    args = ap.parse_args()
    if args.table:
        table(args)
    else:
        throughput(args)


if __name__ == "__main__":
    main()
