"""The sequential environment: exact propensities, the choice model, logs through `prepare`, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from topkrec.ope import ips
from topkrec.simulate.environment import (
    REWARDS,
    EnvConfig,
    Environment,
    LoggingPolicyConfig,
    inclusion_probability,
    logging_policy_probs,
    rollout,
    sample_slates,
)
from topkrec.simulate.sequential import (
    SequentialConfig,
    prepare_logs,
    pulled_taste,
    run_sequential,
    t_interval,
    taste_from_logs,
)

SMALL = EnvConfig(n_users=150, n_items=40, slate_size=4, max_len=8, seed=3)


def _logs(config: EnvConfig = SMALL, sessions: int = 2, impressions: bool = True, seed: int = 0):
    env = Environment(config)
    lp = LoggingPolicyConfig()
    res = rollout(
        env,
        lambda s: logging_policy_probs(env, lp, s.last_engaged),
        sessions,
        np.random.default_rng(seed),
        record=True,
        impressions=impressions,
    )
    return env, res


def test_inclusion_probability_matches_slate_frequencies():
    p = np.array([0.5, 0.2, 0.15, 0.1, 0.04, 0.01])
    k, n = 3, 40_000
    slates, shown = sample_slates(np.tile(p, (n, 1)), k, np.random.default_rng(0))
    in_slate = np.zeros((n, p.size), dtype=bool)
    rows = np.repeat(np.arange(n), k)
    in_slate[rows[shown.ravel()], slates[shown]] = True
    freq = in_slate.mean(axis=0)
    alpha = inclusion_probability(p, k)
    se = np.sqrt(alpha * (1 - alpha) / n)
    assert np.all(np.abs(freq - alpha) < 4 * se + 1e-12), (freq, alpha)
    # a shown slate never repeats an item
    for row, mask in zip(slates[:500], shown[:500], strict=True):
        assert len(set(row[mask].tolist())) == int(mask.sum())
    assert inclusion_probability(np.array([1.0]), 5)[0] == 1.0


def test_logs_are_well_formed():
    env, res = _logs()
    log = res.log
    assert log is not None and log.item.shape[0] > 500
    assert np.all((log.propensity > 0) & (log.propensity <= 1))
    assert np.allclose(log.propensity, inclusion_probability(log.draw_prob, SMALL.slate_size))
    engaged = log.event != "skip"
    mapping = {"pv": 1.0, "cart": 2.0, "fav": 2.0, "buy": 3.0, "skip": 0.0}
    assert np.array_equal(log.reward, np.array([mapping[e] for e in log.event]))
    assert np.array_equal(log.reward[engaged] > 0, np.ones(int(engaged.sum()), dtype=bool))
    assert set(np.unique(log.reward)) <= {0.0, *REWARDS.tolist()}
    # at most one engagement per slate (user, timestamp)
    keys = log.user[engaged] * 10**10 + log.ts[engaged]
    assert np.unique(keys).size == keys.size
    # grouped by user, time-sorted within a user
    assert np.all(np.diff(log.user) >= 0)
    same = np.diff(log.user) == 0
    assert np.all(np.diff(log.ts)[same] >= 0)
    # per-session totals agree with the rollout's own accounting
    totals = np.bincount(log.session, weights=log.reward, minlength=log.n_sessions)
    assert np.allclose(np.sort(totals), np.sort(res.session_return))


def test_item_level_ips_is_unbiased_in_the_one_step_bandit_case():
    """K = 1 and one step per session: no slate competition, no state shift — IPS must recover the value
    of another policy (uniform) from the logging policy's recorded propensities."""
    cfg = replace(SMALL, slate_size=1, max_len=1, n_users=3000)
    env, res = _logs(cfg, sessions=2)
    log = res.log
    assert log is not None and log.item.shape[0] == log.n_sessions
    est = float(ips(log.reward, np.full(log.reward.shape, 1.0 / cfg.n_items), log.propensity))
    uniform = rollout(
        env, lambda s: np.full((s.users.size, cfg.n_items), 1.0 / cfg.n_items), 4, np.random.default_rng(9)
    )
    se_est = (log.reward / log.propensity / cfg.n_items).std() / np.sqrt(log.reward.size)
    se_true = uniform.session_return.std() / np.sqrt(uniform.session_return.size)
    assert abs(est - uniform.value) < 4 * np.hypot(se_est, se_true), (est, uniform.value)
    # the logging policy is far from uniform here, so this is not a trivial agreement
    assert abs(res.value - uniform.value) > 8 * se_true


def test_oracle_beats_uniform_and_sessions_end():
    env, res = _logs()
    assert res.session_length.max() <= SMALL.max_len and res.session_length.min() >= 1
    k = SMALL.slate_size

    def oracle(s):
        util = SMALL.taste_scale * s.taste @ env.item_vec.T + SMALL.pop_weight * env.item_logpop
        return np.argsort(-util, axis=1)[:, :k]

    rng = np.random.default_rng(5)
    best = rollout(env, oracle, 2, rng, form="slate")
    uniform = rollout(env, lambda s: np.full((s.users.size, SMALL.n_items), 1 / SMALL.n_items), 2, rng)
    assert best.value > res.value > uniform.value


@pytest.mark.parametrize("impressions", [True, False])
def test_logs_round_trip_through_prepare(tmp_path, impressions):
    _, res = _logs(impressions=impressions)
    log = res.log
    assert log is not None
    csv = tmp_path / "logs.csv"
    log.write(csv)
    ds = prepare_logs(csv, tmp_path / "data")
    assert ds.n_events == log.item.shape[0]
    assert ds.propensity is not None
    # same rows in the same order: raw ids, behaviours, rewards, propensities, times
    assert np.array_equal(np.array([int(x) for x in ds.user_raw])[ds.user], log.user)
    assert np.array_equal(np.array([int(x) for x in ds.item_raw])[ds.item], log.item)
    assert np.array_equal(ds.behavior.astype(str), log.event)
    assert np.allclose(ds.reward, log.reward)
    assert np.allclose(ds.propensity, log.propensity, rtol=1e-12)
    assert np.array_equal(ds.ts, log.ts)
    # the step column survives, counted from each user's first step; rows of a slate share it
    assert ds.step is not None
    first = np.r_[True, log.user[1:] != log.user[:-1]]
    user_first = np.maximum.accumulate(np.where(first, np.arange(first.size), 0))
    assert np.array_equal(ds.step, log.step - log.step[user_first])
    same_time = (np.diff(log.ts) == 0) & ~first[1:]
    assert np.array_equal(np.diff(ds.step)[same_time], np.zeros(int(same_time.sum())))
    # sessions: one per (user, logged session) that left rows
    assert ds.summary()["n_sessions"] == np.unique(log.session).size
    # and the command line gives the same dataset
    out = tmp_path / "data_cli"
    flags = ["--event-col", "event", "--propensity-col", "propensity", "--step-col", "step", "--no-dedupe"]
    flags += ["--test-size", "0"]
    r = subprocess.run(
        [sys.executable, "-m", "topkrec", "prepare", "--format", "events", "--input", str(csv), "--out", str(out),
         "--reward", "pv=1,cart=2,fav=2,buy=3,skip=0", *flags],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    from topkrec.data.dataset import Dataset

    cli = Dataset.load(out)
    assert np.array_equal(cli.item, ds.item) and np.allclose(cli.propensity, ds.propensity)
    assert np.allclose(cli.returns, ds.returns) and np.array_equal(cli.step, ds.step)


def test_t_interval():
    m, lo, hi = t_interval(np.array([1.0, 2.0, 3.0]))
    assert m == 2.0 and hi - m == pytest.approx(4.303 * 1.0 / np.sqrt(3), rel=1e-4) and m - lo == hi - m
    assert t_interval(np.array([5.0])) == (5.0, 5.0, 5.0)


def test_quick_run_end_to_end():
    res = run_sequential(replace(SequentialConfig.quick(n_seeds=2), ope_pl=True))
    assert res["scenario"] == "sequential"
    pol = res["policies"]
    assert {"none", "is", "topk", "logging", "popularity", "behavior", "uniform", "oracle"} <= set(pol)
    for p in pol.values():
        assert p["ci_low"] <= p["true_value"] <= p["ci_high"]
        assert len(p["per_seed"]) == 2
    for name in ("none", "is", "topk"):
        est = pol[name]["estimates"]
        assert {"ips", "capped_ips", "snips"} <= set(est)
        assert np.isfinite(est["ips"]["value"]) and "error" in est["ips"]
    assert pol["oracle"]["true_value"] > pol["uniform"]["true_value"]
    assert pol["item_oracle"]["true_value"] > pol["uniform"]["true_value"]
    # the logging policy's held-out log mean estimates its own rollout value
    lg = pol["logging"]
    assert abs(lg["estimates"]["ips"]["value"] - lg["true_value"]) < 0.25 * lg["true_value"]
    assert sorted(res["ordering"]) == ["is", "none", "topk"]
    assert sorted(res["orderings"]["pl"]) == ["is_pl", "none_pl", "topk_pl"]
    assert res["world"] == "default"
    # paired differences: per seed exactly the difference of the two policies' per-seed values
    paired = res["paired"]
    assert {"topk-none", "topk_pl-none_pl", "topk_greedy-is_greedy", "topk_pl-topk", "none_greedy-popularity"} <= set(
        paired
    )
    for key, pair in paired.items():
        a, b = key.split("-")
        np.testing.assert_allclose(
            pair["per_seed"], np.array(pol[a]["per_seed"]) - np.array(pol[b]["per_seed"]), atol=1e-12
        )
        assert pair["ci_low"] <= pair["mean"] <= pair["ci_high"] and len(pair["within_seed_se"]) == 2
    assert {pol[n]["form"] for n in ("topk", "topk_pl", "topk_greedy")} == {"draws", "pl", "slate"}
    # Σ_rows w has a known expectation (the distinct items the target would show): with exact logged
    # propensities the ratio is 1 up to noise — a check of the recorded α_β and of α_π = 1 − (1 − π)^K
    for seed in res["seeds"]:
        for name in ("none", "topk", "topk_pl", "topk_greedy"):
            assert 0.85 < seed["estimates"][name]["control_ratio"] < 1.15, (name, seed["estimates"][name])


@pytest.mark.parametrize("val_size", [0.0, 0.2])
def test_the_learners_validation_split_reaches_training(tmp_path, val_size):
    """SequentialConfig.val_size is the learners' train --val-size (0 by default: no split, last epoch kept)."""
    import tomllib

    assert SequentialConfig().val_size == 0.0
    config = replace(SequentialConfig.quick(n_seeds=1), val_size=val_size, epochs=1)
    res = run_sequential(config, work_dir=tmp_path)
    assert res["config"]["val_size"] == val_size
    for corr in ("none", "is", "topk"):
        saved = tomllib.loads((tmp_path / f"seed0_{corr}" / "config.toml").read_text())
        assert saved["train"]["val_size"] == val_size


@pytest.mark.slow
def test_cli_sequential_quick(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "topkrec", "simulate", "sequential", "--quick", "--seeds", "2", "--world", "many-good",
         "--plots", "--out", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "paired differences" in r.stdout and "many-good" in r.stdout
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["scenario"] == "sequential" and "true_value" in res["policies"]["topk"]
    assert res["world"] == "many-good" and res["config"]["env"]["item_clusters"] > 0
    assert "topk_pl-none_pl" in res["paired"] and len(res["paired"]["topk_pl-none_pl"]["per_seed"]) == 2
    assert (tmp_path / "sequential.png").exists()


def test_cli_sequential_rejects_an_unknown_world(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "topkrec", "simulate", "sequential", "--world", "moon", "--out", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 2 and "unknown --world 'moon'" in r.stderr and "Traceback" not in r.stderr


def test_taste_from_logs_is_the_mean_engaged_item_direction() -> None:
    env, res = _logs()
    log = res.log
    taste = taste_from_logs(env, log)
    assert taste.shape == (env.config.n_users, env.config.dim)
    user = int(log.user[log.reward > 0][0])
    rows = (log.user == user) & (log.reward > 0)
    mean = env.item_vec[log.item[rows]].sum(axis=0)
    assert np.allclose(taste[user], mean / np.linalg.norm(mean))
    never = np.setdiff1d(np.arange(env.config.n_users), log.user[log.reward > 0])
    assert np.all(taste[never] == 0.0)  # no engagement: no evidence, no direction
    # it carries the users' true tastes: closer to them than to another user's
    engaged = np.unique(log.user[log.reward > 0])
    own = (taste[engaged] * env.user_taste[engaged]).sum(axis=1).mean()
    other = (taste[engaged] * np.roll(env.user_taste[engaged], 1, axis=0)).sum(axis=1).mean()
    assert own > other + 0.2


def test_pulled_taste_is_the_environments_update_without_drift() -> None:
    env, _ = _logs()
    taste = env.user_taste[:3]
    last = np.array([5, -1, 7])
    moved = pulled_taste(env, taste, last)
    noise = np.zeros_like(taste)
    exact = env.next_taste(taste, last, last >= 0, noise)
    assert np.allclose(moved, exact)
    assert np.allclose(moved[1], taste[1])  # no engaged item: unchanged
