"""Item-level IPS vs the slate pseudo-inverse (PI) estimator on ``simulate sequential``'s held-out logs.

    python benchmarks/bench_ope_slates.py [--quick] [--seeds 3] [--work DIR]

Written against the sequential simulator of 2026-11 (``topkrec.simulate.sequential``, impression logs:
K independent draws from β, duplicates shown once). It runs ``run_sequential`` with a work directory so the
trained models stay on disk, regenerates each seed's logging and held-out rollouts (same seeded streams),
and for every evaluated policy computes, per logged step s (one slate S shown to one user):

- **item-level IPS** (Li et al. 2018's item model, what ``simulate sequential`` reports as ``ips``):
  Σ_rows r·α_π(i|s)/α_β(i|s) per session — recomputed here and checked equal to the simulator's number;
- **PI** (Swaminathan et al. 2017) with the slate as the set of shown items, 1_S its item-indicator vector:
  w(s, S) = α_πᵀ Γ_β(s)⁻¹ 1_S with Γ_β(s)_ij = P_β(i ∈ S, j ∈ S) for K independent draws
  (= 1 − (1−β_i)^K − (1−β_j)^K + (1−β_i−β_j)^K, diagonal α_β(i)); Γ is invertible because a slate of one
  item repeated K times has positive probability. Per session Σ_steps w·R_step, R_step = the step's reward.
  β(·|s) is rebuilt from the environment (``logging_policy_probs`` with the user's last engaged item, read
  off the log) and checked against the logged ``draw_prob``.

Both treat each step as a one-step slate bandit: neither corrects for a target changing later states or
session lengths. PI is unbiased per step when the step reward is additive over the shown items; the
environment's choice model (one engagement per slate, items compete) is not additive, so PI is biased
too — the table measures by how much. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from topkrec.data.dataset import Dataset
from topkrec.policy.artifact import load_agent
from topkrec.simulate.environment import (
    Environment,
    SessionState,
    inclusion_probability,
    logging_policy_probs,
    rollout,
)
from topkrec.simulate.sequential import SequentialConfig, _agent_probs, _IdMaps, run_sequential

CORRECTIONS = ("none", "is", "topk")


def pair_inclusion(beta: np.ndarray, k: int) -> np.ndarray:
    """(B, N, N) P(i ∈ S and j ∈ S) for K independent draws from β (B, N)."""
    miss = (1.0 - beta) ** k  # (B, N) P(i ∉ S)
    both_miss = np.clip(1.0 - beta[:, :, None] - beta[:, None, :], 0.0, None) ** k
    gram = 1.0 - miss[:, :, None] - miss[:, None, :] + both_miss
    idx = np.arange(beta.shape[1])
    gram[:, idx, idx] = 1.0 - miss
    return gram


def steps_of(log: Any, initial_last: np.ndarray) -> dict[str, np.ndarray]:
    """Group log rows into steps (session, ts); the user's last engaged item before each step."""
    key = log.session.astype(np.int64) * (1 << 32) + (log.ts - log.ts.min())
    uniq, first, step = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(first)  # steps in log order (rows are sorted by user, ts)
    n_steps = uniq.shape[0]
    user = log.user[first]
    last = np.empty(n_steps, dtype=np.int64)
    current = initial_last.copy()
    engaged_item = np.full(n_steps, -1, dtype=np.int64)
    eng = log.reward > 0
    engaged_item[step[eng]] = log.item[eng]
    for s in order:  # rows are sorted by (user, ts), so steps of one user come in time order
        last[s] = current[user[s]]
        if engaged_item[s] >= 0:
            current[user[s]] = engaged_item[s]
    return {
        "step": step,
        "n_steps": np.array(n_steps),
        "user": user,
        "history": log.history[first],
        "last": last,
        "session": log.session[first],
        "reward": np.bincount(step, weights=log.reward, minlength=n_steps),
    }


def seed_estimates(config: SequentialConfig, seed: int, work: Path, result_seed: dict[str, Any]) -> dict[str, Any]:
    env_cfg = replace(config.env, seed=seed)
    env = Environment(env_cfg)
    k, n_items = env_cfg.slate_size, env_cfg.n_items
    lp = config.logging_policy

    def logging_policy(state: SessionState) -> np.ndarray:
        return logging_policy_probs(env, lp, state.last_engaged)

    logged = rollout(
        env, logging_policy, config.logged_sessions, np.random.default_rng([seed, 2]), hist_len=config.hist_num,
        record=True, impressions=config.log_impressions,
    )  # fmt: skip
    held = rollout(
        env, logging_policy, config.ope_sessions, np.random.default_rng([seed, 4]), history=logged.history,
        last_engaged=logged.last_engaged, hist_len=config.hist_num, record=True, impressions=config.log_impressions,
    ).log  # fmt: skip
    assert held is not None
    dataset = Dataset.load(work / f"seed{seed}_data")
    maps = _IdMaps(dataset, n_items, env_cfg.n_users)
    modules = {c: load_agent(work / f"seed{seed}_{c}").module.eval() for c in CORRECTIONS}

    st = steps_of(held, logged.last_engaged)
    n_steps = int(st["n_steps"])
    beta = logging_policy_probs(env, lp, st["last"])  # (steps, N)
    check = np.abs(beta[st["step"], held.item] - held.draw_prob).max()
    assert check < 1e-9, f"rebuilt β differs from the logged draw_prob by {check}"
    state = SessionState(
        users=st["user"], history=st["history"], last_engaged=st["last"], taste=np.zeros((n_steps, env_cfg.dim))
    )
    targets: dict[str, np.ndarray] = {}  # (steps, N) α_π of each policy
    with torch.no_grad():
        for c, module in modules.items():
            probs = _agent_probs(module, maps, state, "policy_head", n_items)
            targets[c] = inclusion_probability(probs, k)
            top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
            greedy = np.zeros_like(probs)
            np.put_along_axis(greedy, top, 1.0, axis=1)
            targets[f"{c}_greedy"] = greedy
        targets["behavior"] = inclusion_probability(
            _agent_probs(modules["none"], maps, state, "behavior_head", n_items), k
        )
    targets["logging"] = inclusion_probability(beta, k)
    names = list(targets)
    q = np.stack([targets[n] for n in names], axis=2)  # (steps, N, P)
    shown = np.zeros((n_steps, n_items))
    shown[st["step"], held.item] = 1.0
    pi_weight = np.empty((n_steps, len(names)))
    chunk = 64
    for s in range(0, n_steps, chunk):
        gram = pair_inclusion(beta[s : s + chunk], k)
        x = np.linalg.solve(gram, q[s : s + chunk])  # (b, N, P)
        pi_weight[s : s + chunk] = np.einsum("bn,bnp->bp", shown[s : s + chunk], x)
    n_ses = held.n_sessions
    out: dict[str, Any] = {}
    for p_idx, name in enumerate(names):
        alpha_pi = targets[name][st["step"], held.item]
        w_rows = alpha_pi / held.propensity
        item_ips = np.bincount(held.session, weights=w_rows * held.reward, minlength=n_ses).mean()
        pi = np.bincount(st["session"], weights=pi_weight[:, p_idx] * st["reward"], minlength=n_ses).mean()
        sim = result_seed["estimates"].get(name, {}).get("ips", {}).get("value")
        if sim is not None and name != "logging":
            assert abs(sim - item_ips) < 1e-6 * max(1.0, abs(sim)), (name, sim, item_ips)
        out[name] = {
            "true": result_seed["values"][name]["value"],
            "item_ips": float(item_ips),
            "pi": float(pi),
            "pi_weight_mean": float(pi_weight[:, p_idx].mean()),
            "pi_weight_ess_share": float(pi_weight[:, p_idx].sum() ** 2 / (pi_weight[:, p_idx] ** 2).sum() / n_steps),
        }
    out["_n_steps"] = n_steps
    out["_beta_check"] = float(check)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="Keep the run here; a second run reuses it.")
    args = ap.parse_args()
    config = SequentialConfig.quick(n_seeds=args.seeds) if args.quick else SequentialConfig(n_seeds=args.seeds)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ope-slates-") as tmp:
        work = args.work or Path(tmp)
        saved = work / "result.json"
        if args.work is not None and saved.exists():  # reuse a previous run's models and true values
            result = json.loads(saved.read_text())
        else:
            result = run_sequential(config, work_dir=work)
            saved.write_text(json.dumps(result))
        t_sim = time.perf_counter() - t0
        torch.set_num_threads(1)
        per_seed = [seed_estimates(config, config.seed + i, work, result["seeds"][i]) for i in range(config.n_seeds)]
    t_all = time.perf_counter() - t0
    names = [n for n in per_seed[0] if not n.startswith("_")]
    rows = []
    header = f"{'policy':<13} {'true':>6} {'item IPS':>9} {'err':>6} {'PI':>7} {'err':>6}"
    print(f"{header}  (mean over {config.n_seeds} seeds)")
    for name in names:
        true = np.mean([s[name]["true"] for s in per_seed])
        item = np.mean([s[name]["item_ips"] for s in per_seed])
        pi = np.mean([s[name]["pi"] for s in per_seed])
        abs_item = np.mean([abs(s[name]["item_ips"] - s[name]["true"]) for s in per_seed])
        abs_pi = np.mean([abs(s[name]["pi"] - s[name]["true"]) for s in per_seed])
        print(f"{name:<13} {true:6.2f} {item:9.2f} {item - true:+6.2f} {pi:7.2f} {pi - true:+6.2f}")
        rows.append(
            {
                "policy": name,
                "true_value": float(true),
                "item_ips": float(item),
                "item_ips_error": float(item - true),
                "item_ips_abs_error_per_seed": float(abs_item),
                "pi": float(pi),
                "pi_error": float(pi - true),
                "pi_abs_error_per_seed": float(abs_pi),
                "pi_weight_ess_share": float(np.mean([s[name]["pi_weight_ess_share"] for s in per_seed])),
            }
        )
    print(
        json.dumps(
            {
                "config": "quick" if args.quick else "default",
                "seeds": config.n_seeds,
                "steps_per_seed": [s["_n_steps"] for s in per_seed],
                "simulate_s": round(t_sim, 1),
                "total_s": round(t_all, 1),
                "results": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
