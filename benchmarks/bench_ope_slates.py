"""Item-level IPS vs the slate pseudo-inverse (PI) estimator on ``simulate sequential``'s held-out logs.

    python benchmarks/bench_ope_slates.py [--quick] [--seeds 3] [--work DIR]

Follows the sequential simulator with noise streams and served sessions (``topkrec.simulate.sequential``,
impression logs; the logging policy β shows K independent draws, duplicates shown once, and logs each shown
item with its inclusion probability α_β = 1 − (1 − β)^K as ``propensity`` and its per-draw β as
``draw_prob``). It runs ``run_sequential`` with a work directory so the trained models stay on disk,
regenerates each seed's logging and held-out rollouts exactly as ``_run_seed`` does (``NoiseStreams((seed, 2))``
for the training logs, then ``NoiseStreams((seed, 4))`` from where they ended, with their histories, event
codes and last engaged items), and for every evaluated policy computes, per logged step s (one slate S shown
to one user):

- **item-level IPS** (Li et al. 2018's item model, what ``simulate sequential`` reports as ``ips``):
  Σ_rows r·α_π(i|s)/α_β(i|s) per session. α_π comes from the model's own state at each step, the held-out log
  replayed through its serving sessions (``sequential._replay_states``, as ``item_level_estimates`` does):
  1 − (1 − π)^K for the K-draws forms (``none``/``is``/``topk``, ``behavior``), 1 for the K most probable
  items for ``*_greedy``. The script checks that its number equals the simulator's to 1e-6;
- **PI** (Swaminathan et al. 2017) with the slate as the set of shown items, 1_S its item-indicator vector:
  w(s, S) = α_πᵀ Γ_β(s)⁻¹ 1_S with Γ_β(s)_ij = P_β(i ∈ S, j ∈ S), exact for the logging form actually used
  (K independent draws, checked against the result's ``logging`` form):
  1 − (1−β_i)^K − (1−β_j)^K + (1−β_i−β_j)^K, diagonal α_β(i); Γ is invertible because a slate of one
  item repeated K times has positive probability. Per session Σ_steps w·R_step, R_step = the step's reward.
  The closed forms of ``topkrec.ope.slates`` do not fit this logger (they need per-position logging
  marginals or uniform slates without replacement; the log keeps neither draw order nor multiplicity), so
  Γ is solved per step here; the per-step rewards use ``slate_sums``.
  β(·|s) is rebuilt from the environment (``logging_policy_probs`` with the user's last engaged item, read
  off the log) and checked against the logged ``draw_prob`` and, through α_β, ``propensity``.

Both treat each step as a one-step slate bandit: neither corrects for a target changing later states or
session lengths. PI is unbiased per step when the step reward is additive over the shown items; the
environment's choice model (one engagement per slate, items compete) is not additive, so PI is biased
too — the table measures by how much. The Plackett–Luce forms (``*_pl``) are left out, as the simulator leaves
them out of its estimates by default (``ope_pl``). The last line is one JSON object.
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
from topkrec.ope.slates import slate_sums
from topkrec.serve import Recommender
from topkrec.simulate.environment import (
    Environment,
    LoggedEvents,
    SessionState,
    inclusion_probability,
    logging_policy_probs,
    rollout,
)
from topkrec.simulate.sequential import (
    SequentialConfig,
    _IdMaps,
    _replay_states,
    _step_groups,
    replayed_log_probs,
    run_sequential,
)
from topkrec.simulate.streams import NoiseStreams

CORRECTIONS = ("none", "is", "topk")


def pair_inclusion(beta: np.ndarray, k: int) -> np.ndarray:
    """(B, N, N) P(i ∈ S and j ∈ S) for K independent draws from β (B, N)."""
    miss = (1.0 - beta) ** k  # (B, N) P(i ∉ S)
    both_miss = np.clip(1.0 - beta[:, :, None] - beta[:, None, :], 0.0, None) ** k
    gram = 1.0 - miss[:, :, None] - miss[:, None, :] + both_miss
    idx = np.arange(beta.shape[1])
    gram[:, idx, idx] = 1.0 - miss
    return gram


def steps_of(log: LoggedEvents, initial_last: np.ndarray) -> dict[str, np.ndarray]:
    """Group log rows into steps (session, step) as the simulator does (``_step_groups``); the user's last
    engaged item before each step."""
    first, group = _step_groups(log)
    n_steps = first.shape[0]
    user = log.user[first]
    engaged_item = np.full(n_steps, -1, dtype=np.int64)
    eng = log.reward > 0
    engaged_item[group[eng]] = log.item[eng]
    last = np.empty(n_steps, dtype=np.int64)
    current = initial_last.copy()
    for s in np.argsort(first, kind="stable"):  # rows are sorted by (user, ts): a user's steps in time order
        last[s] = current[user[s]]
        if engaged_item[s] >= 0:
            current[user[s]] = engaged_item[s]
    return {
        "first": first,
        "group": group,
        "user": user,
        "last": last,
        "session": log.session[first],
        "reward": slate_sums(group, log.reward, n_steps),
    }


def target_probs(
    model_dir: Path, maps: _IdMaps, log: LoggedEvents, first: np.ndarray, k: int, n_env: int, head: str
) -> tuple[np.ndarray, np.ndarray]:
    """(α_π for K draws (G, N_env), 1 on the greedy top K (G, N_env)) of a model's ``head`` at each logged step.

    The same computation as ``sequential.item_level_estimates``: states replayed through the model's sessions,
    the same chunks, float log-softmax; items the training data never had get 0."""
    rec = Recommender.load(model_dir, device="cpu")
    module = rec.agent.module
    state_user, state_items, state_events = _replay_states(rec, maps, log, first)
    draws = np.zeros((first.shape[0], n_env))
    greedy = np.zeros((first.shape[0], n_env))
    for g0, g1, logp_np in replayed_log_probs(module, head, (state_user, state_items, state_events)):
        incl = -np.expm1(k * np.log1p(-np.minimum(np.exp(logp_np), 1.0 - 1e-15)))
        draws[g0:g1, maps.item_env] = incl
        # the simulator's rule: in the top K ⇔ fewer than K items score higher ⇔ at least the K-th largest
        kth = -np.partition(-logp_np, min(k, logp_np.shape[1]) - 1, axis=1)[:, min(k, logp_np.shape[1]) - 1]
        greedy[g0:g1, maps.item_env] = (logp_np >= kth[:, None]).astype(np.float64)
    return draws, greedy


def seed_estimates(config: SequentialConfig, seed: int, work: Path, result_seed: dict[str, Any]) -> dict[str, Any]:
    assert result_seed["seed"] == seed and result_seed["values"]["logging"]["form"] == "draws"
    env_cfg = replace(config.env, seed=seed)
    env = Environment(env_cfg)
    k, n_items = env_cfg.slate_size, env_cfg.n_items
    lp = config.logging_policy

    def logging_policy(state: SessionState) -> np.ndarray:
        return logging_policy_probs(env, lp, state.last_engaged)

    logged = rollout(
        env, logging_policy, config.logged_sessions, NoiseStreams((seed, 2)), hist_len=config.hist_num, record=True,
        impressions=config.log_impressions,
    )  # fmt: skip
    held = rollout(
        env, logging_policy, config.ope_sessions, NoiseStreams((seed, 4)), history=logged.history,
        history_events=logged.history_events, last_engaged=logged.last_engaged, hist_len=config.hist_num,
        record=True, impressions=config.log_impressions,
    ).log  # fmt: skip
    assert held is not None
    dataset = Dataset.load(work / f"seed{seed}_data")
    maps = _IdMaps(dataset, n_items, env_cfg.n_users)

    st = steps_of(held, logged.last_engaged)
    group = st["group"]
    n_steps = st["first"].shape[0]
    beta = logging_policy_probs(env, lp, st["last"])  # (steps, N)
    check = max(
        np.abs(beta[group, held.item] - held.draw_prob).max(),
        np.abs(inclusion_probability(beta, k)[group, held.item] - held.propensity).max(),
    )
    assert check < 1e-9, f"rebuilt β differs from the logged draw_prob / propensity by {check}"
    targets: dict[str, np.ndarray] = {}  # (steps, N) α_π of each policy
    for c in CORRECTIONS:
        targets[c], targets[f"{c}_greedy"] = target_probs(
            work / f"seed{seed}_{c}", maps, held, st["first"], k, n_items, "policy_head"
        )
    targets["behavior"], _ = target_probs(
        work / f"seed{seed}_none", maps, held, st["first"], k, n_items, "behavior_head"
    )
    targets["logging"] = inclusion_probability(beta, k)
    names = list(targets)
    q = np.stack([targets[n] for n in names], axis=2)  # (steps, N, P)
    shown = np.zeros((n_steps, n_items))
    shown[group, held.item] = 1.0
    pi_weight = np.empty((n_steps, len(names)))
    chunk = 64
    for s in range(0, n_steps, chunk):
        gram = pair_inclusion(beta[s : s + chunk], k)
        # torch's solve runs on the one intra-op thread set in main; numpy's multi-threaded OpenBLAS batched solve
        # was ~50x slower on a busy 2-core machine
        x = torch.linalg.solve(torch.from_numpy(gram), torch.from_numpy(q[s : s + chunk])).numpy()  # (b, N, P)
        pi_weight[s : s + chunk] = np.einsum("bn,bnp->bp", shown[s : s + chunk], x)
    n_ses = held.n_sessions
    out: dict[str, Any] = {}
    for p_idx, name in enumerate(names):
        alpha_pi = targets[name][group, held.item]
        w_rows = alpha_pi / held.propensity
        item_ips = np.bincount(held.session, weights=w_rows * held.reward, minlength=n_ses).mean()
        pi = np.bincount(st["session"], weights=pi_weight[:, p_idx] * st["reward"], minlength=n_ses).mean()
        sim = result_seed["estimates"][name]["ips"]["value"]
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
