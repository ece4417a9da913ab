"""Simulator honesty (issue 13): exact common random numbers, Plackett–Luce slates, named worlds, paired comparisons."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from topkrec.errors import TopkrecError
from topkrec.simulate.environment import (
    EnvConfig,
    Environment,
    LoggingPolicyConfig,
    SessionState,
    inclusion_probability,
    logging_policy_probs,
    pl_inclusion,
    pl_slates,
    rollout,
    sample_slates,
)
from topkrec.simulate.sequential import (
    WORLDS,
    SequentialConfig,
    comparison_pairs,
    paired_interval,
    t_interval,
    world_settings,
)
from topkrec.simulate.streams import BLOCK, Component, NoiseStreams

SMALL = EnvConfig(n_users=90, n_items=40, slate_size=4, max_len=8, seed=3)
LP = LoggingPolicyConfig()


# ---------------------------------------------------------------------------------------------- streams
@pytest.mark.parametrize("component", list(Component))
def test_a_users_numbers_do_not_depend_on_who_else_is_asked(component: Component) -> None:
    streams = NoiseStreams((7, 1))
    everyone = streams.draw(component, 2, 5, np.arange(3 * BLOCK), 6)
    some = np.array([1, BLOCK + 3, 2 * BLOCK + 31])
    np.testing.assert_array_equal(streams.draw(component, 2, 5, some, 6), everyone[some])
    np.testing.assert_array_equal(streams.draw(component, 2, 5, some[1:2], 6), everyone[some[1:2]])
    # another step, round or key gives other numbers
    assert not np.allclose(streams.draw(component, 2, 6, some, 6), everyone[some])
    assert not np.allclose(streams.draw(component, 3, 5, some, 6), everyone[some])
    assert not np.allclose(NoiseStreams((7, 2)).draw(component, 2, 5, some, 6), everyone[some])


def _logging(env: Environment):
    return lambda s: logging_policy_probs(env, LP, s.last_engaged)


@pytest.mark.parametrize("form", ["draws", "pl", "slate"])
def test_sessions_are_identical_wherever_two_policies_agree(form: str) -> None:
    """Policy B equals A on even users and differs on odd ones. With exact common random numbers every
    session of an even user is identical under A and B — although the odd users' sessions end at other
    steps, so the set of active sessions differs (a shared generator drifts apart there)."""
    env = Environment(SMALL)
    base = _logging(env)
    k = SMALL.slate_size

    def a(s: SessionState) -> np.ndarray:
        p = base(s)
        return np.argsort(-p, axis=1)[:, :k] if form == "slate" else p

    def b(s: SessionState) -> np.ndarray:
        out = a(s)
        odd = s.users % 2 == 1
        if form == "slate":
            out[odd] = np.arange(k)[None, :] + 7  # a fixed, different slate
        else:
            out[odd] = 1.0 / SMALL.n_items
        return out

    streams = NoiseStreams((11, 3))
    ra = rollout(env, a, 3, streams, form=form)  # type: ignore[arg-type]
    rb = rollout(env, b, 3, streams, form=form)  # type: ignore[arg-type]
    even = np.tile(np.arange(SMALL.n_users) % 2 == 0, 3)
    np.testing.assert_array_equal(ra.session_return[even], rb.session_return[even])
    np.testing.assert_array_equal(ra.session_length[even], rb.session_length[even])
    assert not np.array_equal(ra.session_length[~even], rb.session_length[~even])  # B really differs
    np.testing.assert_array_equal(ra.history[::2], rb.history[::2])


def test_identical_policies_get_identical_per_seed_values_and_a_zero_paired_interval() -> None:
    values_a, values_b = [], []
    for seed in range(5):
        env = Environment(EnvConfig(n_users=80, n_items=30, slate_size=3, max_len=6, seed=seed))
        copy = _logging(env)
        values_a.append(rollout(env, _logging(env), 2, NoiseStreams((seed, 3))).value)
        values_b.append(rollout(env, lambda s, f=copy: f(s).copy(), 2, NoiseStreams((seed, 3))).value)
    assert values_a == values_b
    pair = paired_interval(np.array(values_a) - np.array(values_b))
    assert (pair["mean"], pair["ci_low"], pair["ci_high"]) == (0.0, 0.0, 0.0)
    # the marginal interval of the same values is not degenerate: the seeds are different worlds
    _, lo, hi = t_interval(np.array(values_a))
    assert hi - lo > 0.01


def test_paired_interval_is_the_t_interval_of_the_differences() -> None:
    diffs = np.array([0.5, 0.1, 0.3, 0.2, 0.4])
    pair = paired_interval(diffs)
    assert (pair["mean"], pair["ci_low"], pair["ci_high"]) == pytest.approx(t_interval(diffs))
    assert pair["per_seed"] == diffs.tolist()
    assert pair["ci_low"] > 0  # every seed positive: the interval excludes 0


def test_generator_still_accepted_as_a_stream_source() -> None:
    env = Environment(SMALL)
    r1 = rollout(env, _logging(env), 1, np.random.default_rng(4))
    r2 = rollout(env, _logging(env), 1, np.random.default_rng(4))
    np.testing.assert_array_equal(r1.session_return, r2.session_return)


# ---------------------------------------------------------------------------------------------- slates
def enumerate_pl_inclusion(p: np.ndarray, k: int) -> np.ndarray:
    """Every ordered draw of k distinct items, each with its Plackett–Luce probability."""
    out = np.zeros_like(p)
    for seq in itertools.permutations(np.flatnonzero(p > 0), k):
        prob, left = 1.0, p.sum()
        for i in seq:
            prob *= p[i] / left
            left -= p[i]
        out[list(seq)] += prob
    return out


@pytest.mark.parametrize(("n", "k", "scale"), [(5, 2, 1.0), (6, 3, 2.0), (7, 4, 0.5), (6, 5, 3.0)])
def test_pl_inclusion_equals_enumeration(n: int, k: int, scale: float) -> None:
    rng = np.random.default_rng(n * 10 + k)
    p = np.exp(rng.normal(size=n) * scale)
    p /= p.sum()
    np.testing.assert_allclose(pl_inclusion(p[None, :], k)[0], enumerate_pl_inclusion(p, k), atol=1e-8)


def test_pl_slates_are_distinct_and_match_the_exact_inclusion_frequencies() -> None:
    p = np.array([0.45, 0.2, 0.15, 0.1, 0.06, 0.03, 0.01, 0.0])
    k, runs = 3, 40_000
    slates, shown = pl_slates(np.tile(p, (runs, 1)), k, np.random.default_rng(0))
    assert shown.all()
    assert np.all(np.sort(slates, axis=1)[:, 1:] != np.sort(slates, axis=1)[:, :-1])  # K distinct items
    freq = np.bincount(slates.ravel(), minlength=p.size) / runs
    exact = pl_inclusion(p[None, :], k)[0]
    se = np.sqrt(np.maximum(exact * (1 - exact), 1e-12) / runs)
    assert np.all(np.abs(freq - exact) <= 5 * se), (freq, exact)
    assert freq[-1] == 0.0 and exact[-1] == 0.0  # probability 0: never shown
    # the K-draw inclusion of the same p is a different function (the correction must match the form)
    assert not np.allclose(exact, inclusion_probability(p, k), atol=1e-3)


def test_pl_rows_with_fewer_than_k_positive_items_show_fewer() -> None:
    p = np.array([[0.7, 0.3, 0.0, 0.0, 0.0]])
    slates, shown = pl_slates(p, 3, np.random.default_rng(1))
    assert set(slates[0, shown[0]].tolist()) == {0, 1} and shown[0].sum() == 2


def test_k_draws_waste_slots_on_duplicates_where_pl_does_not() -> None:
    rng = np.random.default_rng(0)
    p = np.full((20_000, 50), 1e-4)
    p[:, :3] = [0.5, 0.3, 0.2]
    p /= p.sum(axis=1, keepdims=True)
    _, shown_draws = sample_slates(p, 5, rng)
    _, shown_pl = pl_slates(p, 5, rng)
    assert shown_draws.sum(axis=1).mean() < 3.5  # ~3 distinct items in a "slate of 5"
    assert shown_pl.sum(axis=1).min() == 5
    # and a rollout reports it
    env = Environment(SMALL)
    sharp = lambda s: np.tile(np.r_[0.7, 0.3, np.zeros(SMALL.n_items - 2)], (s.users.size, 1))  # noqa: E731
    assert rollout(env, sharp, 1, NoiseStreams((0,)), form="draws").distinct_per_slate < 2.0
    assert rollout(env, sharp, 1, NoiseStreams((0,)), form="pl").distinct_per_slate == 2.0


def test_pl_logs_record_exact_inclusion_probabilities() -> None:
    cfg = EnvConfig(n_users=40, n_items=12, slate_size=3, max_len=3, seed=2)
    env = Environment(cfg)
    res = rollout(env, _logging(env), 1, NoiseStreams((1,)), form="pl", record=True)
    log = res.log
    assert log is not None and log.item.size > 0
    # recompute each row's exact inclusion from β of the row's state: the first step has no engagement yet
    first = log.step == 0
    beta = logging_policy_probs(env, LP, np.full(1, -1))[0]
    exact = pl_inclusion(beta[None, :], cfg.slate_size)[0]
    np.testing.assert_allclose(log.propensity[first], exact[log.item[first]], rtol=1e-7)
    np.testing.assert_allclose(log.draw_prob[first], beta[log.item[first]])
    # every slate shows K distinct items
    keys = log.session * 1000 + log.step
    _, counts = np.unique(keys, return_counts=True)
    assert np.all(counts == cfg.slate_size)
    for key in np.unique(keys)[:50]:
        assert np.unique(log.item[keys == key]).size == cfg.slate_size


# ---------------------------------------------------------------------------------------------- worlds
def test_named_worlds() -> None:
    assert WORLDS == ("default", "costly-bias", "many-good")
    default_env, default_lp = world_settings("default")
    assert default_env == EnvConfig() and default_lp == LoggingPolicyConfig()
    costly_env, costly_lp = world_settings("costly-bias")
    assert costly_env.pop_weight == 0.0 and costly_lp.pop_temperature < default_lp.pop_temperature
    with pytest.raises(TopkrecError, match="unknown world"):
        world_settings("nope")
    cfg = SequentialConfig.for_world("many-good", n_seeds=2)
    assert cfg.world == "many-good" and cfg.env.item_clusters > 0 and cfg.n_seeds == 2
    assert SequentialConfig().n_seeds >= 5


def test_many_good_world_gives_each_user_several_good_items() -> None:
    def good_items(world: str) -> float:
        env = Environment(world_settings(world)[0])
        return float(np.median((env.user_taste @ env.item_vec.T > 0.7).sum(axis=1)))

    assert good_items("many-good") >= 2 * good_items("default")


def test_costly_bias_world_makes_popularity_worthless_to_users() -> None:
    env_cfg, lp = world_settings("costly-bias")
    env = Environment(env_cfg)
    util = env.utility(env.user_taste)
    # utility does not depend on popularity, while β puts most of its mass on the head
    assert abs(np.corrcoef(util.mean(axis=0), env.item_logpop)[0, 1]) < 0.2
    beta = logging_policy_probs(env, lp, np.full(1, -1))[0]
    head = np.argsort(-env.item_logpop)[:10]
    assert beta[head].sum() > 0.8


def test_comparison_pairs() -> None:
    names = ["none", "is", "topk", "none_pl", "is_pl", "topk_pl", "none_greedy", "is_greedy", "topk_greedy"]
    names += ["logging", "behavior", "popularity", "uniform", "oracle", "item_oracle"]
    pairs = comparison_pairs(names)
    assert ("item_oracle", "popularity") in pairs and ("topk_greedy", "item_oracle") in pairs
    for pair in [("topk", "none"), ("topk_pl", "is_pl"), ("is_greedy", "none_greedy"), ("topk_pl", "topk")]:
        assert pair in pairs
    assert ("topk_greedy", "popularity") in pairs and ("behavior", "logging") in pairs
    assert len(pairs) == len(set(pairs))
    assert comparison_pairs(["none", "topk"]) == [("topk", "none")]  # only pairs of present policies
