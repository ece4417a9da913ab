"""Every off-policy estimator of ``topkrec.ope`` against the true value on ``simulate sequential``'s held-out logs.

    python benchmarks/bench_ope_slates.py [--quick] [--seeds 3] [--work DIR] [--reward-model linear] [--folds 5]

Follows the sequential simulator with noise streams and served sessions (``topkrec.simulate.sequential``,
impression logs; the logging policy β shows K independent draws, duplicates shown once, and logs each shown
item with its inclusion probability α_β = 1 − (1 − β)^K as ``propensity`` and its per-draw β as
``draw_prob``). It runs ``run_sequential`` with a work directory so the trained models stay on disk,
regenerates each seed's logging and held-out rollouts exactly as ``_run_seed`` does (``NoiseStreams((seed, 2))``
for the training logs, then ``NoiseStreams((seed, 4))`` from where they ended, with their histories, event
codes and last engaged items), and for every evaluated policy (``none``/``is``/``topk`` as K draws and
``*_greedy``, ``behavior``, and ``logging`` as a sanity row) computes, per logged step s (one slate S shown
to one user), α_π(i|s), the target's probability of showing item i there: 1 − (1 − π)^K for the K-draws forms,
1 for the K most probable items for ``*_greedy``, from the model's own state at each step, the held-out log
replayed through its serving sessions (``sequential._replay_states``, as ``item_level_estimates`` does).
Values are total reward per session; the table is estimate − true value, mean over seeds, with a 95 % t
interval over the seeds and each seed's error in the JSON.

**Item-level estimators** (``topkrec.ope.estimators``; Li et al. 2018's item model, each shown item one row
with w = α_π/α_β; ``item_level_values`` turns the library's per-row means into values per session):
IPS, capped IPS (cap e³), SNIPS, DM, DR, SNDR, Switch-DR (τ = cap) and DRos (λ = cap²) — τ and λ are
``topkrec ope``'s defaults. The DM family uses the library's reward model (``topkrec.ope.reward_model``,
``--reward-model``, default ``linear``) cross-fitted in ``--folds`` folds over the rows of the held-out log,
on the features the log has: the shown item's id (the action) and, as context, the user's last engaged
item's id before the step (one-hot, with a "none yet" column; ``mean`` ignores the context). The target's
action distribution enters as the step's DM term v̂(s) = Σ_items α_π(i|s) r̂(s, i) (``cross_fit``'s
``value_hat``, given α_π(·|s) as the row's distribution), counted once per logged step; DR adds
Σ_rows w·(r − r̂). IPS, capped IPS and SNIPS are checked against the simulator's own figures (1e-6).

**Slate estimators** (``topkrec.ope.slates``): PI (Swaminathan et al. 2017) and self-normalised PI with the
slate as the set of shown items, 1_S its item-indicator vector: w(s, S) = α_πᵀ Γ_β(s)⁻¹ 1_S with
Γ_β(s)_ij = P_β(i ∈ S, j ∈ S), exact for the logging form actually used (K independent draws, checked
against the result's ``logging`` form): 1 − (1−β_i)^K − (1−β_j)^K + (1−β_i−β_j)^K, diagonal α_β(i); Γ is
invertible because a slate of one item repeated K times has positive probability. The weights go to
``slate_estimates``. Its closed forms do not fit this logger (the product form needs per-position logging
marginals — the K draws in order — and the other uniform slates without replacement; the log keeps neither
draw order nor multiplicity), so Γ is solved per step here. The item-position estimator (IIPS) needs
positions, which the log does not have; without them it is the item-level IPS (``slate_estimates``'s
``iips`` is checked equal to it). β(·|s) is rebuilt from the environment (``logging_policy_probs`` with the
user's last engaged item, read off the log) and checked against the logged ``draw_prob`` and ``propensity``.

Every estimator here treats each step as a one-step (slate) bandit: none corrects for a target changing
later states or session lengths. The item-level ones assume each shown item's reward does not depend on the
rest of the slate, PI that the step's reward is additive over the shown items; the environment's choice
model (one engagement per slate, items compete) is neither, so all are biased — the table measures by how
much. The Plackett–Luce forms (``*_pl``) are left out, as the simulator leaves them out of its estimates by
default (``ope_pl``). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from topkrec.data.dataset import Dataset
from topkrec.ope.estimators import (
    capped_ips,
    default_dros_lambda,
    direct_method,
    doubly_robust,
    dr_shrinkage,
    effective_sample_size,
    ips,
    self_normalized_dr,
    snips,
    switch_dr,
)
from topkrec.ope.reward_model import MAX_INTERACTIONS, REWARD_MODELS, RewardData, cross_fit
from topkrec.ope.slates import slate_estimates, slate_sums
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
    t_interval,
)
from topkrec.simulate.streams import NoiseStreams

CORRECTIONS = ("none", "is", "topk")

ITEM_ESTIMATORS = ("ips", "capped_ips", "snips", "dm", "dr", "sndr", "switch_dr", "dros")
"""Item-level estimators of ``topkrec.ope.estimators``, per session (``item_level_values``)."""
SLATE_ESTIMATORS = ("pi", "sn_pi")
"""Slate estimators of ``topkrec.ope.slates`` over the set of shown items (Γ solved per step)."""
ESTIMATORS = ITEM_ESTIMATORS + SLATE_ESTIMATORS


def last_item_context(last: np.ndarray, n_items: int) -> np.ndarray:
    """(n, n_items + 1) one-hot of each row's last engaged item; column ``n_items`` = none yet (−1)."""
    out = np.zeros((last.shape[0], n_items + 1))
    out[np.arange(last.shape[0]), np.where(last >= 0, last, n_items)] = 1.0
    return out


def item_level_values(
    reward: np.ndarray,
    target_incl: np.ndarray,
    logging_incl: np.ndarray,
    step: np.ndarray,
    n_sessions: int,
    target_shown: float,
    reward_hat: np.ndarray,
    value_hat: np.ndarray,
    *,
    cap: float,
    tau: float,
    lam: float,
) -> dict[str, float]:
    """Every item-level estimator of ``topkrec.ope.estimators`` as a value per session.

    Rows are shown items: reward r, α_π and α_β (inclusion probabilities), ``step`` the code in [0, G) of the
    logged step (slate) each row belongs to; ``target_shown`` = Σ_steps m(s), m(s) = Σ_i α_π(i|s) the number of
    distinct items the target shows at step s; ``reward_hat`` r̂(s, i) of each row's item and ``value_hat``
    v̂(s) = Σ_i α_π(i|s) r̂(s, i) at each row's step (``cross_fit``'s two outputs). The library's estimators are
    means over rows; with n rows and S sessions:

    - IPS, capped IPS, DR, Switch-DR and DRos are sums over rows / S: the library's value × n / S;
    - the DM term belongs to the step, not to a row: each row carries v̂(s) / L_s (L_s the step's rows), so its
      rows add up to v̂(s) and DM = Σ_steps v̂(s) / S;
    - the self-normalised forms divide by Σ_rows w, whose expectation is Σ_steps m(s), not n (a step's rows are
      the items β showed; E_β[Σ_{i ∈ S} w_i] = m(s)): SNIPS = the library's value × Σ m / S (as ``simulate
      sequential``'s ``snips``), and SNDR = DM plus its self-normalised correction × Σ m / S.
    """
    reward, target_incl, logging_incl = (np.asarray(x, dtype=np.float64) for x in (reward, target_incl, logging_incl))
    n = reward.shape[0]
    rows_of_step = np.bincount(step)
    dm_share = np.asarray(value_hat, dtype=np.float64) / rows_of_step[step]
    per_row = n / n_sessions
    per_control = float(target_shown) / n_sessions
    cols = (reward, target_incl, logging_incl)
    model = (*cols, reward_hat, dm_share)
    dm = float(direct_method(dm_share))
    return {
        "ips": float(ips(*cols)) * per_row,
        "capped_ips": float(capped_ips(*cols, cap=cap)) * per_row,
        "snips": float(snips(*cols)) * per_control,
        "dm": dm * per_row,
        "dr": float(doubly_robust(*model)) * per_row,
        "sndr": dm * per_row + (float(self_normalized_dr(*model)) - dm) * per_control,
        "switch_dr": float(switch_dr(*model, tau=tau)) * per_row,
        "dros": float(dr_shrinkage(*model, lam=lam)) * per_row,
    }


def error_summary(estimates: list[float], truths: list[float]) -> dict[str, Any]:
    """Estimate − true value over seeds: its mean with a 95 % t interval, each seed's, and the mean |error|."""
    err = np.asarray(estimates, dtype=np.float64) - np.asarray(truths, dtype=np.float64)
    mean, lo, hi = t_interval(err)
    return {
        "value": float(np.mean(estimates)),
        "error": mean,
        "error_ci_low": lo,
        "error_ci_high": hi,
        "error_per_seed": err.tolist(),
        "abs_error": float(np.abs(err).mean()),
    }


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
        incl = inclusion_probability(np.exp(logp_np), k)
        draws[g0:g1, maps.item_env] = incl
        # the simulator's rule: in the top K ⇔ fewer than K items score higher ⇔ at least the K-th largest
        kth = -np.partition(-logp_np, min(k, logp_np.shape[1]) - 1, axis=1)[:, min(k, logp_np.shape[1]) - 1]
        greedy[g0:g1, maps.item_env] = (logp_np >= kth[:, None]).astype(np.float64)
    return draws, greedy


def seed_estimates(
    config: SequentialConfig,
    seed: int,
    work: Path,
    result_seed: dict[str, Any],
    reward_model: str = "linear",
    folds: int = 5,
) -> dict[str, Any]:
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
    # the reward model of the DM family, cross-fitted on the held-out log: item id (+ last engaged item)
    context = last_item_context(st["last"][group], n_items) if reward_model != "mean" else np.zeros((group.shape[0], 0))
    data = RewardData(action=held.item, n_actions=n_items, context=context)
    cap = config.ope_cap
    tau, lam = cap, default_dros_lambda(cap)  # the defaults of topkrec ope (off_policy_report)
    out: dict[str, Any] = {}
    for p_idx, name in enumerate(names):
        alpha_pi = targets[name][group, held.item]
        w_rows = alpha_pi / held.propensity
        item_ips = np.bincount(held.session, weights=w_rows * held.reward, minlength=n_ses).mean()
        ips_per_session = np.bincount(held.session, weights=w_rows * held.reward, minlength=n_ses)
        pi = np.bincount(st["session"], weights=pi_weight[:, p_idx] * st["reward"], minlength=n_ses).mean()
        sim = result_seed["estimates"][name]
        assert abs(sim["ips"]["value"] - item_ips) < 1e-6 * max(1.0, abs(sim["ips"]["value"])), (name, sim, item_ips)
        reward_hat, value_hat = cross_fit(
            reward_model, data, held.reward, lambda rows, t=targets[name]: t[group[rows]], folds=folds, seed=seed
        )
        values = item_level_values(
            held.reward, alpha_pi, held.propensity, group, n_ses, float(targets[name].sum()), reward_hat, value_hat,
            cap=cap, tau=tau, lam=lam,
        )  # fmt: skip
        # the slate estimators of topkrec.ope.slates with this logger's PI weights; IIPS without positions is the
        # item-level IPS (checked)
        slate, _ = slate_estimates(
            group, n_steps, held.reward, alpha_pi, held.propensity, pi_weights=pi_weight[:, p_idx], n_boot=1, seed=seed
        )
        per_step = n_steps / n_ses
        values["pi"] = slate["pi"].value * per_step
        values["sn_pi"] = slate["sn_pi"].value * per_step
        checks = [("ips", values["ips"], item_ips), ("iips", slate["iips"].value * per_step, item_ips)]
        checks.append(("pi", values["pi"], pi))
        if name != "logging":  # the simulator copies the log's mean return into all of logging's estimates
            checks += [(e, values[e], sim[e]["value"]) for e in ("capped_ips", "snips") if e in sim]
        for what, ours, theirs in checks:
            assert abs(ours - theirs) < 1e-6 * max(1.0, abs(theirs)), (name, what, ours, theirs)
        out[name] = {
            "true": result_seed["values"][name]["value"],
            "item_ips": float(item_ips),
            "pi": float(pi),
            "pi_weight_mean": float(pi_weight[:, p_idx].mean()),
            "pi_weight_ess_share": float(pi_weight[:, p_idx].sum() ** 2 / (pi_weight[:, p_idx] ** 2).sum() / n_steps),
            "item_weight_ess_share": float(effective_sample_size(w_rows)) / w_rows.shape[0],
            "true_se": result_seed["values"][name]["se"],
            "item_ips_se": float(ips_per_session.std(ddof=1) / np.sqrt(n_ses)),
            "estimates": values,
        }
    out["_n_steps"] = n_steps
    out["_n_rows"] = int(group.shape[0])
    out["_n_sessions"] = int(n_ses)
    out["_beta_check"] = float(check)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="Keep the run here; a second run reuses it.")
    ap.add_argument(
        "--reward-model", choices=REWARD_MODELS, default="linear", help="Reward model of DM/DR/SNDR/Switch-DR/DRos."
    )
    ap.add_argument("--folds", type=int, default=5, help="Cross-fitting folds of the reward model.")
    args = ap.parse_args()
    config = SequentialConfig.quick(n_seeds=args.seeds) if args.quick else SequentialConfig(n_seeds=args.seeds)
    n_items_env = config.env.n_items
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
        interactions = n_items_env * (n_items_env + 1) <= MAX_INTERACTIONS
        if args.reward_model == "linear" and not interactions:
            print(f"linear reward model: item one-hot + last engaged item one-hot, no item × context interactions "
                  f"({n_items_env} × {n_items_env + 1} > {MAX_INTERACTIONS})")  # fmt: skip
            logging.getLogger("topkrec.ope.reward_model").setLevel(logging.ERROR)  # said once here, not per fit
        per_seed = [
            seed_estimates(config, config.seed + i, work, result["seeds"][i], args.reward_model, args.folds)
            for i in range(config.n_seeds)
        ]
    t_all = time.perf_counter() - t0
    names = [n for n in per_seed[0] if not n.startswith("_")]
    rows = []
    short = {"capped_ips": "cIPS", "switch_dr": "swDR", "sn_pi": "SN-PI"}
    print(f"estimate − true value per session, mean over {config.n_seeds} seeds ({args.reward_model} reward model)")
    print(f"{'policy':<13} {'true':>6} " + " ".join(f"{short.get(e, e.upper()):>6}" for e in ESTIMATORS))
    for name in names:
        truths = [s[name]["true"] for s in per_seed]
        true = np.mean(truths)
        item = np.mean([s[name]["item_ips"] for s in per_seed])
        pi = np.mean([s[name]["pi"] for s in per_seed])
        abs_item = np.mean([abs(s[name]["item_ips"] - s[name]["true"]) for s in per_seed])
        abs_pi = np.mean([abs(s[name]["pi"] - s[name]["true"]) for s in per_seed])
        summary = {e: error_summary([s[name]["estimates"][e] for s in per_seed], truths) for e in ESTIMATORS}
        print(f"{name:<13} {true:6.2f} " + " ".join(f"{summary[e]['error']:+6.2f}" for e in ESTIMATORS))
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
                "true_value_per_seed": [float(t) for t in truths],
                "item_weight_ess_share": float(np.mean([s[name]["item_weight_ess_share"] for s in per_seed])),
                # the noise in each seed's error: the rolled-out truth's and the held-out IPS's standard errors
                "true_value_se": float(np.mean([s[name]["true_se"] for s in per_seed])),
                "item_ips_se": float(np.mean([s[name]["item_ips_se"] for s in per_seed])),
                "estimators": summary,
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
                "rows_per_seed": [s["_n_rows"] for s in per_seed],
                "sessions_per_seed": [s["_n_sessions"] for s in per_seed],
                "estimator_names": list(ESTIMATORS),
                "reward_model": args.reward_model,
                "reward_model_context": "none" if args.reward_model == "mean" else "last_engaged_item",
                "folds": args.folds,
                "cap": config.ope_cap,
                "switch_tau": config.ope_cap,
                "dros_lambda": default_dros_lambda(config.ope_cap),
            }
        )
    )


if __name__ == "__main__":
    main()
