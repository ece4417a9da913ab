"""The ``sequential`` scenario: logs from a biased policy → prepare → train none/is/topk → roll out.

For each seed:

1. build a world (``environment.Environment``, one of ``WORLDS``) and let the logging policy β run
   ``logged_sessions`` sessions per user, recording every shown item with its exact propensity
   α_β = 1 − (1 − β)^K and its slate step;
2. write those logs as an ``events`` CSV and run the library's ``prepare`` on them (the same code as
   ``topkrec prepare --format events --event-col event --propensity-col propensity --step-col step
   --no-dedupe``), so returns are discounted once per slate step;
3. train the agent with ``--correction none``, ``is`` and ``topk`` through the library's public entry
   point (``topkrec.train.train_agent``) on the prepared dataset;
4. roll every policy out in the same world from where the logs ended — fresh sessions on one set of
   noise streams (``streams.NoiseStreams``: exact common random numbers, every random number indexed by
   (session, step, user)) — and take the mean total reward per session as its **true value**;
5. estimate each trained policy's value from a held-out log of β alone (item-level IPS / capped IPS /
   SNIPS, see ``item_level_estimates``) and report the error against the true value.

Comparisons are reported twice: the marginal 95 % t interval of each policy's value over the seeds (each
seed a new world, new logs and a new training run, so it covers world-to-world and training variance),
and the **paired** per-seed difference of two policies with its own t interval — the honest comparison,
since both policies of a pair meet the same world, users and noise within a seed.

Every trained π is served in three slate forms (``environment.SlateForm``): ``none``/``is``/``topk`` —
K independent draws from π (the paper's top-K policy, the form the top-K correction is derived for);
``*_pl`` — K distinct items by Plackett–Luce sampling without replacement (what exploration serves);
``*_greedy`` — the K most probable items (``topkrec recommend``'s deterministic mode). Baselines:
``logging`` (β itself), ``popularity`` (the K items most engaged with in the logs), ``behavior`` (the
β̂ head of the ``none`` model, K draws like β), ``uniform``, and two reference points that are not learners:
``oracle`` (the K items of highest true utility for the user's current taste) and ``item_oracle`` (knows the
true item vectors, but not the taste: it estimates each user's taste from the logs, ``taste_from_logs``, and
moves it toward the last engaged item with the environment's own pull — what one simple estimate of the taste
from the logs reaches when the items are known; not an upper bound for learners, who must learn the items).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from topkrec.policy.config import Correction, Encoder
from topkrec.simulate.environment import (
    EVENT_TOKENS,
    EnvConfig,
    Environment,
    LoggedEvents,
    LoggingPolicyConfig,
    PolicyFn,
    RolloutResult,
    SessionState,
    SlateForm,
    inclusion_probability,
    logging_policy_probs,
    rollout,
)
from topkrec.simulate.streams import NoiseStreams

logger = logging.getLogger(__name__)

__all__ = [
    "WORLDS",
    "SequentialConfig",
    "comparison_pairs",
    "item_level_estimates",
    "paired_interval",
    "prepare_logs",
    "run_sequential",
    "t_interval",
    "world_settings",
]

CORRECTION_NAMES: tuple[Correction, ...] = ("none", "is", "topk")
FORM_ITEMS: tuple[tuple[SlateForm, str], ...] = (("draws", ""), ("pl", "_pl"), ("slate", "_greedy"))
"""Policy-name suffix of each slate form: ``topk`` (K draws), ``topk_pl`` (Plackett–Luce), ``topk_greedy``."""
FORM_SUFFIX: dict[str, str] = dict(FORM_ITEMS)
REWARD_MAP: tuple[tuple[str, float], ...] = (("pv", 1.0), ("cart", 2.0), ("fav", 2.0), ("buy", 3.0), ("skip", 0.0))
WORLDS: tuple[str, ...] = ("default", "costly-bias", "many-good")


def world_settings(name: str) -> tuple[EnvConfig, LoggingPolicyConfig]:
    """The world and logging policy of a named scenario (issue 13, item 4).

    - ``default``: users also like popular items (0.3·logpop in every utility), β is popularity-heavy
      (T = 0.7) — β's bias is partly right, so correcting it gains little;
    - ``costly-bias``: no popularity term in the utility (popularity says nothing about what a user
      likes) and a sharply popularity-biased β (T = 0.4) — imitating β's bias costs reward;
    - ``many-good``: ``costly-bias`` plus items and users gathered around 20 taste clusters (~15 good
      items per user), the setting where the top-K correction's theory says K matters (a biased β,
      K ≥ 2, several good items per user).

    The values were set before any run and not tuned toward an ordering.
    """
    if name == "default":
        return EnvConfig(), LoggingPolicyConfig()
    if name == "costly-bias":
        return EnvConfig(pop_weight=0.0), LoggingPolicyConfig(pop_temperature=0.4)
    if name == "many-good":
        return EnvConfig(pop_weight=0.0, item_clusters=20), LoggingPolicyConfig(pop_temperature=0.4)
    from topkrec.errors import TopkrecError

    raise TopkrecError(f"unknown world {name!r}; use one of {', '.join(WORLDS)}")


@dataclass(frozen=True)
class SequentialConfig:
    """Everything the ``sequential`` scenario does; saved in its result JSON."""

    env: EnvConfig = field(default_factory=EnvConfig)
    logging_policy: LoggingPolicyConfig = field(default_factory=LoggingPolicyConfig)
    world: str = "default"
    """Name of the world the env and logging policy came from (``world_settings``), or "custom"."""
    logged_sessions: int = 5
    """Sessions per user recorded by the logging policy (the training logs)."""
    log_impressions: bool = True
    """Log every shown item (skipped ones as ``skip``, reward 0) — the agent's state is then the last
    hist_num *shown* items. False logs only engagements, like Taobao-style interaction logs, and the
    state is the last hist_num engaged items. Propensities are recorded either way."""
    ope_sessions: int = 2
    """Sessions per user of a held-out log of β, on which the off-policy estimates are computed."""
    eval_sessions: int = 5
    """Sessions per user rolled out to measure each policy's true value."""
    n_seeds: int = 5
    """Independent worlds / logs / trainings; the intervals are over these."""
    seed: int = 0
    """Seed of the first world; seed i uses seed + i."""
    epochs: int = 8
    val_size: float = 0.0
    """``train --val-size`` of the learners. 0 (unlike ``train``'s 0.1): every logged event trains and
    the last of ``epochs`` epochs is kept. Selecting the epoch by validation ndcg@K, which does not track
    reward here, and holding out a tenth of 5 sessions per user cost the greedy learners in all three
    worlds (docs/simulate.md, "Choosing the learner's validation split")."""
    batch_size: int = 256
    lr: float = 3e-3
    hidden: int = 64
    embed_dim: int = 16
    hist_num: int = 10
    encoder: Encoder = "concat"
    cap: float | None = math.exp(3.0)
    """Importance-weight cap during training (the paper's e³)."""
    ope_cap: float = math.exp(3.0)
    """Cap of the capped IPS estimate."""
    n_boot: int = 200
    ope_pl: bool = False
    """Also estimate the Plackett–Luce forms off-policy. Their exact inclusion probabilities cost ~10 CPU-ms
    per logged step at 300 items (quadrature, ``topkrec.serve.exploration``): ~2 CPU-min per seed by default."""
    threads: int = 1
    """Torch intra-op threads while the scenario runs (small models: one thread avoids contention)."""

    @classmethod
    def for_world(cls, world: str = "default", **overrides: Any) -> SequentialConfig:
        """The config of a named world (``WORLDS``) with any field overridden."""
        env, lp = world_settings(world)
        return cls(env=env, logging_policy=lp, world=world, **overrides)

    @classmethod
    def quick(cls, seed: int = 0, n_seeds: int = 3, world: str = "default") -> SequentialConfig:
        """A small preset for tests: well under a minute on 2 cores."""
        env, lp = world_settings(world)
        return cls(
            env=replace(env, n_users=120, n_items=80, slate_size=4, max_len=12),
            logging_policy=lp,
            world=world,
            logged_sessions=2,
            eval_sessions=3,
            n_seeds=n_seeds,
            seed=seed,
            epochs=3,
            n_boot=50,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def comparison_pairs(names: list[str]) -> list[tuple[str, str]]:
    """The (A, B) pairs whose paired difference A − B is reported, among the policies in ``names``.

    Within each slate form: topk − none, topk − is, is − none. Across forms, per correction: the
    Plackett–Luce form against K draws, greedy against Plackett–Luce. Every learned policy against
    popularity. β̂ and popularity against β, the oracle and the item oracle against popularity, and each
    greedy learner against the item oracle.
    """
    pairs: list[tuple[str, str]] = []
    for suffix in FORM_SUFFIX.values():
        pairs += [
            (f"topk{suffix}", f"none{suffix}"),
            (f"topk{suffix}", f"is{suffix}"),
            (f"is{suffix}", f"none{suffix}"),
        ]
    for corr in CORRECTION_NAMES:
        pairs += [(f"{corr}_pl", corr), (f"{corr}_greedy", f"{corr}_pl")]
    for suffix in FORM_SUFFIX.values():
        pairs += [(f"{corr}{suffix}", "popularity") for corr in CORRECTION_NAMES]
    pairs += [("behavior", "logging"), ("popularity", "logging"), ("oracle", "popularity")]
    pairs += [("item_oracle", "popularity")] + [(f"{corr}_greedy", "item_oracle") for corr in CORRECTION_NAMES]
    have = set(names)
    return [(a, b) for a, b in pairs if a in have and b in have]


# 0.975 quantiles of Student's t with n − 1 degrees of freedom, by n
_T975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262, 11: 2.228}


def t_interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95 % t confidence interval of ``values`` (one value gives a zero-width interval)."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if values.size < 2:
        return mean, mean, mean
    q = _T975.get(values.size, 1.96 + 2.5 / values.size)  # beyond 11, within 0.01 of the exact quantile
    half = q * float(values.std(ddof=1)) / math.sqrt(values.size)
    return mean, mean - half, mean + half


def paired_interval(per_seed_differences: Any) -> dict[str, Any]:
    """The paired comparison of two policies from their per-seed differences of value (A − B, both
    measured on the same seed's world, users and noise): mean, 95 % t interval over the seeds, and the
    differences themselves. A policy against itself gives exactly [0, 0]."""
    diffs = np.asarray(per_seed_differences, dtype=np.float64)
    mean, lo, hi = t_interval(diffs)
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "per_seed": diffs.tolist()}


def prepare_logs(csv_path: Path, out_dir: Path):  # -> topkrec.data.dataset.Dataset
    """Run the library's ``prepare`` on an environment log (events format) and load the dataset.

    The log's ``step`` column goes through ``--step-col``, so the rows of one slate share a step and
    returns are discounted once per step (γ^(step distance)), not once per impression row."""
    from topkrec.data.dataset import Dataset
    from topkrec.data.prepare import PrepareConfig, prepare
    from topkrec.data.readers import EventColumns
    from topkrec.io import atomic_dir

    cfg = PrepareConfig(
        format="events",
        sampling=None,
        dedupe=False,  # an item shown twice to a user is two impressions, not a duplicate
        test_size=0.0,  # the true value is measured by rollouts, not on a held-out split
        reward=REWARD_MAP,
        columns=EventColumns(user="user", item="item", time="ts", event="event", propensity="propensity", step="step"),
    )
    prepared, warnings = prepare(csv_path, cfg)
    for w in warnings:
        logger.warning("prepare: %s", w)
    with atomic_dir(out_dir, force=True) as tmp:
        prepared.save(tmp)
    return Dataset.load(out_dir)


class _IdMaps:
    """Environment ids ↔ dataset indices (the dataset orders items by frequency)."""

    def __init__(self, dataset: Any, n_env_items: int, n_env_users: int) -> None:
        self.n_items = int(dataset.n_items)
        self.pad = int(dataset.pad_index)
        self.item_env = np.array([int(x) for x in dataset.item_raw], dtype=np.int64)  # dataset index → env id
        self.item_ds = np.full(n_env_items, self.pad, dtype=np.int64)  # env id → dataset index (pad if unseen)
        self.item_ds[self.item_env] = np.arange(self.n_items)
        self.user_ds = np.full(n_env_users, -1, dtype=np.int64)  # env user → dataset index (−1 = unknown)
        self.user_ds[np.array([int(x) for x in dataset.user_raw], dtype=np.int64)] = np.arange(dataset.n_users)

    def history(self, env_history: np.ndarray) -> np.ndarray:
        return np.where(env_history >= 0, self.item_ds[np.maximum(env_history, 0)], self.pad)


class AgentSessions:
    """A trained model served to the simulated users through its step-wise sessions (``topkrec.serve``).

    One session row per environment user, started from the user's stored history (the training logs), so
    each state is built by the model's own rules — its history setting, its (item, event type) tokens,
    its window — exactly as training built the logged states (``tests/serve/test_sessions.py``). ``rollout``
    tells it each step's feedback (``observe``); calling it gives per-draw probabilities (B, I_env).
    """

    def __init__(self, model_dir: Path, maps: _IdMaps, n_env_items: int, head: str = "policy_head") -> None:
        from topkrec.serve import Recommender

        self.rec = Recommender.load(model_dir, device="cpu")
        self.maps, self.n_env_items, self.head = maps, n_env_items, head
        self.sessions = self.rec.sessions_for_indices(maps.user_ds)
        names = self.rec.config.event_types
        code = {name: i for i, name in enumerate(names)}
        # environment event token → the model's event code (pad for tokens the data never had)
        self.event_code = np.array([code.get(t, self.rec.event_pad) for t in EVENT_TOKENS], dtype=np.int64)

    def probs(self, users: np.ndarray) -> np.ndarray:
        import torch

        logits = self.sessions.logits(users, head=self.head).float()
        probs = torch.softmax(logits, dim=-1).double().numpy()
        out = np.zeros((users.shape[0], self.n_env_items))
        out[:, self.maps.item_env] = probs
        return out

    def __call__(self, state: SessionState) -> np.ndarray:
        return self.probs(state.users)

    def observe(self, users: np.ndarray, slates: np.ndarray, events: np.ndarray, logged: np.ndarray) -> None:
        b, j = np.nonzero(logged)  # row-major: each user's slate in position order
        self.sessions.observe_indices(users[b], self.maps.item_ds[slates[b, j]], self.event_code[events[b, j]])

    def greedy(self, k: int) -> PolicyFn:
        """The same sessions serving their K most probable items (``recommend``'s deterministic mode)."""

        def choose(state: SessionState) -> np.ndarray:
            return np.argsort(-self.probs(state.users), axis=1, kind="stable")[:, :k]

        choose.observe = self.observe  # type: ignore[attr-defined]
        return choose


def _agent_probs(module: Any, maps: _IdMaps, state: SessionState, head: str, n_env_items: int) -> np.ndarray:
    """Per-draw probabilities (B, I_env) of a module's head from the environment's own history window.

    Stateless and approximate (bare items, the environment's window): benchmarks that have no model
    directory use it; the scenario serves models through ``AgentSessions``.
    """
    import torch

    with torch.no_grad():
        user = torch.as_tensor(maps.user_ds[state.users])
        hist = torch.as_tensor(maps.history(state.history))
        s = module.encode(user, hist)
        logits = getattr(module, head).logits(s).float()
        probs = torch.softmax(logits, dim=-1).double().numpy()
    out = np.zeros((state.users.shape[0], n_env_items))
    out[:, maps.item_env] = probs
    return out


def taste_from_logs(env: Environment, log: LoggedEvents) -> np.ndarray:
    """Each user's taste as the logs show it to someone who knows the true item vectors: the normalised mean
    vector of the items the user engaged with in ``log`` (U, d); zero for a user with no engagement.

    The ``item_oracle`` reference policy reads it: not a learner (no learner knows the item vectors), but a
    reference for how far a simple estimate of each user's taste from the logs takes a policy that knows the
    items — next to the ``oracle`` that knows the current taste itself. It is neither an upper bound for
    learners (they must learn the items from the same logs) nor the best estimator of the taste."""
    engaged = log.reward > 0
    total = np.zeros((env.config.n_users, env.config.dim))
    np.add.at(total, log.user[engaged], env.item_vec[log.item[engaged]])
    norm = np.linalg.norm(total, axis=1, keepdims=True)
    return np.divide(total, norm, out=np.zeros_like(total), where=norm > 0)


def pulled_taste(env: Environment, taste: np.ndarray, last_engaged: np.ndarray) -> np.ndarray:
    """``taste`` (B, d) moved by the environment's own pull toward each row's last engaged item (−1: none) and
    renormalised — the in-session update of ``Environment.next_taste`` without its random drift."""
    pull = np.where(last_engaged[:, None] >= 0, env.config.pull * env.item_vec[np.maximum(last_engaged, 0)], 0.0)
    moved = taste + pull
    norm = np.linalg.norm(moved, axis=1, keepdims=True)
    return np.divide(moved, norm, out=np.zeros_like(moved), where=norm > 0)


def _step_groups(log: LoggedEvents) -> tuple[np.ndarray, np.ndarray]:
    """Rows of one logged step share its state: (first row of each step (G,), step index of each row (n,))."""
    key = log.session.astype(np.int64) * (1 << 32) + log.step
    _, first, group = np.unique(key, return_index=True, return_inverse=True)
    return first, group


def _replay_states(rec: Any, maps: _IdMaps, log: LoggedEvents, first: np.ndarray) -> tuple[np.ndarray, ...]:
    """(user index (G,), history items (G, H), event codes (G, H)) of each logged step ``first`` (its first row):
    the log replayed through the model's sessions in time order, so each step's state is the one the model
    would have had when the slate was shown."""
    sessions = rec.sessions_for_indices(maps.user_ds)
    code = {name: i for i, name in enumerate(rec.config.event_types)}
    event_codes = np.array([code.get(str(e), rec.event_pad) for e in log.event], dtype=np.int64)
    _, group = _step_groups(log)
    n_groups, h = first.shape[0], rec.hist_num
    items = np.empty((n_groups, h), dtype=np.int64)
    events = np.empty((n_groups, h), dtype=np.int64)
    group_ts = log.ts[first]
    rows_by_group = np.argsort(group, kind="stable")  # rows of each group, in log (slate) order
    bounds = np.searchsorted(group[rows_by_group], np.arange(n_groups + 1))
    for ts in np.unique(group_ts):  # steps in time order; a user has at most one step at a time
        gs = np.flatnonzero(group_ts == ts)
        users = log.user[first[gs]]
        items[gs], events[gs] = sessions.history[users], sessions.history_event[users]
        rows = np.concatenate([rows_by_group[bounds[g] : bounds[g + 1]] for g in gs])
        sessions.observe_indices(log.user[rows], maps.item_ds[log.item[rows]], event_codes[rows])
    return maps.user_ds[log.user[first]], items, events


def replayed_log_probs(
    module: Any, head: str, states: tuple[np.ndarray, np.ndarray, np.ndarray], chunk: int = 4096
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(g0, g1, log π (g1 − g0, n_items) as float64) of ``head`` over replayed states, ``chunk`` steps at a
    time (the float log-softmax every item-level estimate and ``benchmarks/bench_ope_slates.py`` read)."""
    import torch

    state_user, state_items, state_events = states
    with torch.no_grad():
        for g0 in range(0, state_user.shape[0], chunk):
            g1 = min(g0 + chunk, state_user.shape[0])
            user = torch.as_tensor(state_user[g0:g1])
            hist, hist_ev = torch.as_tensor(state_items[g0:g1]), torch.as_tensor(state_events[g0:g1])
            state = module.encode(user, hist, hist_ev)
            logp = torch.log_softmax(module.head_logits(head, state, hist, hist_ev).float(), dim=-1)
            yield g0, g1, logp.double().numpy()


def item_level_estimates(
    model_dir: Path,
    maps: _IdMaps,
    log: LoggedEvents,
    k: int,
    cap: float,
    n_boot: int,
    seed: int,
    head: str = "policy_head",
    greedy: bool = False,
    all_shown: bool = True,
    form: SlateForm = "draws",
) -> dict[str, Any]:
    """Value per session of the agent's policy served in slate ``form``, estimated from a log of β.

    The log is a *held-out* one (fresh sessions of β, not the training logs: a policy evaluated on the
    rows it was fitted to looks better than it is). Each row is a shown item with reward r and the
    recorded inclusion probability α_β; with α_π the target's probability of showing the row's item in
    the row's state — 1 − (1 − π)^K for K draws, the exact Plackett–Luce inclusion probability for
    ``pl``, 1 or 0 for greedy top-K (``form="slate"``, or ``greedy=True``) — the item-level IPS estimate
    of a session's total reward is Σ_rows r·α_π/α_β (Li et al. 2018's item model, without positions).
    It ignores that the target policy would lead to other states (no product of weights over a session)
    and that in the choice model the items of a slate compete for one engagement, so it is biased here;
    the scenario measures by how much. Capped IPS caps each weight at ``cap``. SNIPS uses Σ_rows w as a
    control variate: over the rows of one logged step its expectation is m(s) = Σ_i α_π(i|s), the number
    of distinct items the target would show, known exactly from the model; so V̂ = IPS · Σ_steps m(s) /
    Σ_rows w. It needs every shown item in the log (``all_shown``), so it is left out for
    interaction-only logs. Intervals: bootstrap over sessions.
    """

    from topkrec.ope import BootstrapResult
    from topkrec.serve import Recommender
    from topkrec.serve.exploration import inclusion_probabilities

    if greedy:
        form = "slate"
    rec = Recommender.load(model_dir, device="cpu")
    module = rec.agent.module
    n = log.item.shape[0]
    alpha_p = np.zeros(n)
    first, group = _step_groups(log)
    state_user, state_items, state_events = _replay_states(rec, maps, log, first)
    expected_shown = np.zeros(first.shape[0])  # m(s) of each logged step's state
    item_ds = maps.item_ds[log.item]
    known = item_ds != maps.pad  # items never logged in training cannot be drawn by π
    action = np.where(known, item_ds, 0)
    # rows of a step share the state: compute π once per step, then read each row's item
    order = np.argsort(group, kind="stable")
    row_start = np.searchsorted(group[order], np.arange(first.shape[0] + 1))
    chunk = 1024 if form == "pl" else 4096
    states = (state_user, state_items, state_events)
    for g0, g1, logp_np in replayed_log_probs(module, head, states, chunk):
        if form == "slate":  # in the top K ⇔ fewer than K items score higher
            rank_ok = None
            expected_shown[g0:g1] = min(k, logp_np.shape[1])
        elif form == "pl":
            incl = inclusion_probabilities(logp_np, k)
            expected_shown[g0:g1] = incl.sum(axis=1)
        else:
            incl = inclusion_probability(np.exp(logp_np), k)
            expected_shown[g0:g1] = incl.sum(axis=1)
        members = order[row_start[g0] : row_start[g1]]
        local = group[members] - g0
        if form == "slate":
            chosen = logp_np[local, action[members]]
            rank_ok = (logp_np[local] > chosen[:, None]).sum(axis=1) < k
            alpha_p[members] = rank_ok.astype(np.float64)
        else:
            alpha_p[members] = incl[local, action[members]]
    alpha_p = np.where(known, alpha_p, 0.0)
    w = alpha_p / log.propensity
    ses = log.session
    n_ses = log.n_sessions  # sessions that left no row count as zero reward
    reward = log.reward
    per_session = {
        "ips": np.bincount(ses, weights=w * reward, minlength=n_ses),
        "capped_ips": np.bincount(ses, weights=np.minimum(w, cap) * reward, minlength=n_ses),
    }
    rng = np.random.default_rng(seed)
    boot = rng.integers(0, n_ses, size=(n_boot, n_ses))
    out: dict[str, Any] = {}
    for name, values in per_session.items():
        lo, hi = np.quantile(values[boot].mean(axis=1), [0.025, 0.975])
        out[name] = BootstrapResult(float(values.mean()), float(lo), float(hi)).as_dict()
    if all_shown:
        control = np.bincount(ses[first], weights=expected_shown, minlength=n_ses)
        w_sum = np.bincount(ses, weights=w, minlength=n_ses)

        def snips(idx: np.ndarray) -> np.ndarray:
            ips_part = per_session["ips"][idx].sum(axis=-1)
            return ips_part * control[idx].sum(axis=-1) / np.maximum(w_sum[idx].sum(axis=-1), 1e-300) / n_ses

        lo, hi = np.quantile(snips(boot), [0.025, 0.975])
        out["snips"] = BootstrapResult(float(snips(np.arange(n_ses))), float(lo), float(hi)).as_dict()
        out["control_ratio"] = float(w_sum.sum() / control.sum())  # ≈ 1 when the propensities are right
    out["ess"] = float(w.sum() ** 2 / max(float((w * w).sum()), 1e-300))
    out["n_rows"] = int(n)
    out["capped_frac"] = float((w > cap).mean())
    return out


def _run_seed(config: SequentialConfig, seed: int, work: Path, progress: bool) -> dict[str, Any]:
    from topkrec.policy.config import AgentConfig, TrainConfig
    from topkrec.train import train_agent

    t0 = time.perf_counter()
    env_cfg = replace(config.env, seed=seed)
    env = Environment(env_cfg)
    k = env_cfg.slate_size
    lp = config.logging_policy

    def logging_policy(state: SessionState) -> np.ndarray:
        return logging_policy_probs(env, lp, state.last_engaged)

    logged = rollout(
        env,
        logging_policy,
        config.logged_sessions,
        NoiseStreams((seed, 2)),
        hist_len=config.hist_num,
        record=True,
        impressions=config.log_impressions,
    )
    assert logged.log is not None
    csv = work / f"seed{seed}_logs.csv"
    logged.log.write(csv)
    dataset = prepare_logs(csv, work / f"seed{seed}_data")
    timings = {"log": time.perf_counter() - t0}

    models: dict[str, Any] = {}
    train_diag: dict[str, dict[str, float]] = {}
    for corr in CORRECTION_NAMES:
        t = time.perf_counter()
        agent_cfg = AgentConfig(
            n_users=dataset.n_users,
            n_items=dataset.n_items,
            embed_size=config.embed_dim,
            hist_num=config.hist_num,
            hidden=config.hidden,
            encoder=config.encoder,
            trainable_embeddings=True,
        )
        train_cfg = TrainConfig(
            epochs=config.epochs,
            val_size=config.val_size,
            batch_size=config.batch_size,
            lr=config.lr,
            correction=corr,
            k=k,
            cap=config.cap,
            seed=seed,
            device="cpu",
            log_every=10**9,
        )
        result = train_agent(
            dataset, work / f"seed{seed}_{corr}", agent_cfg, train_cfg, embeddings=None, force=True, progress=progress
        )
        module = result.agent.eval()
        models[corr] = module
        last = result.history[-1] if result.history else {}
        train_diag[corr] = {k_: float(v) for k_, v in last.items() if isinstance(v, int | float)}
        timings[f"train_{corr}"] = time.perf_counter() - t

    maps = _IdMaps(dataset, env_cfg.n_items, env_cfg.n_users)
    popular_env = maps.item_env[np.argsort(-np.bincount(dataset.item[dataset.reward > 0], minlength=dataset.n_items))]

    def agent_policy(corr: str, head: str = "policy_head") -> PolicyFn:
        return AgentSessions(work / f"seed{seed}_{corr}", maps, env_cfg.n_items, head)

    def agent_greedy(corr: str) -> PolicyFn:  # top-K of π: the serving default
        return AgentSessions(work / f"seed{seed}_{corr}", maps, env_cfg.n_items).greedy(k)

    def popularity(state: SessionState) -> np.ndarray:
        return np.tile(popular_env[:k], (state.users.shape[0], 1))

    def uniform(state: SessionState) -> np.ndarray:
        return np.full((state.users.shape[0], env_cfg.n_items), 1.0 / env_cfg.n_items)

    def oracle(state: SessionState) -> np.ndarray:
        return np.argsort(-env.utility(state.taste), axis=1)[:, :k]

    logs_taste = taste_from_logs(env, logged.log)

    def item_oracle(state: SessionState) -> np.ndarray:
        return np.argsort(-env.utility(pulled_taste(env, logs_taste[state.users], state.last_engaged)), axis=1)[:, :k]

    policies: dict[str, tuple[PolicyFn, SlateForm]] = {}
    for form, suffix in FORM_ITEMS:
        for corr in CORRECTION_NAMES:
            fn = agent_greedy(corr) if form == "slate" else agent_policy(corr)
            policies[corr + suffix] = (fn, form)
    policies.update(
        {
            "logging": (logging_policy, "draws"),
            "behavior": (agent_policy("none", "behavior_head"), "draws"),
            "popularity": (popularity, "slate"),
            "uniform": (uniform, "draws"),
            "oracle": (oracle, "slate"),
            "item_oracle": (item_oracle, "slate"),
        }
    )
    eval_streams = NoiseStreams((seed, 3))  # every policy meets the same users and noise
    values: dict[str, dict[str, Any]] = {}
    session_returns: dict[str, np.ndarray] = {}
    for name, (fn, form) in policies.items():
        t = time.perf_counter()
        res: RolloutResult = rollout(
            env,
            fn,
            config.eval_sessions,
            eval_streams,
            form=form,
            history=logged.history,
            history_events=logged.history_events,
            last_engaged=logged.last_engaged,
            hist_len=config.hist_num,
            impressions=config.log_impressions,
        )
        ret = res.session_return
        session_returns[name] = ret
        values[name] = {
            "value": res.value,
            "form": form,
            "se": float(ret.std(ddof=1) / math.sqrt(ret.size)),
            "mean_session_length": float(res.session_length.mean()),
            "engagements_per_session": float(res.engagements.mean()),
            "distinct_per_slate": res.distinct_per_slate,
        }
        timings[f"rollout_{name}"] = time.perf_counter() - t
    paired: dict[str, dict[str, float]] = {}
    for a, b in comparison_pairs(list(policies)):
        diff = session_returns[a] - session_returns[b]  # the same sessions: exact common random numbers
        paired[f"{a}-{b}"] = {"diff": float(diff.mean()), "se": float(diff.std(ddof=1) / math.sqrt(diff.size))}
    held_out = rollout(
        env,
        logging_policy,
        config.ope_sessions,
        NoiseStreams((seed, 4)),
        history=logged.history,
        history_events=logged.history_events,
        last_engaged=logged.last_engaged,
        hist_len=config.hist_num,
        record=True,
        impressions=config.log_impressions,
    ).log
    assert held_out is not None
    t = time.perf_counter()
    estimates: dict[str, dict[str, Any]] = {}
    common: dict[str, Any] = {
        "k": k,
        "cap": config.ope_cap,
        "n_boot": config.n_boot,
        "seed": seed,
        "all_shown": config.log_impressions,
    }
    for form, suffix in FORM_ITEMS:
        if form == "pl" and not config.ope_pl:
            continue
        for name in CORRECTION_NAMES:
            model_dir = work / f"seed{seed}_{name}"
            estimates[name + suffix] = item_level_estimates(model_dir, maps, held_out, form=form, **common)
    estimates["behavior"] = item_level_estimates(
        work / f"seed{seed}_none", maps, held_out, head="behavior_head", **common
    )
    timings["ope"] = time.perf_counter() - t
    # sanity: the logging policy's own estimate (weights exactly 1) is the held-out log's mean return
    ones = np.bincount(held_out.session, weights=held_out.reward, minlength=held_out.n_sessions)
    estimates["logging"] = {
        e: {"value": float(ones.mean()), "ci_low": float(ones.mean()), "ci_high": float(ones.mean())}
        for e in ("ips", "capped_ips", "snips")
    }
    logged_value = float(logged.session_return.mean())
    return {
        "seed": seed,
        "values": values,
        "paired": paired,
        "estimates": estimates,
        "logged_value": logged_value,
        "n_log_rows": int(logged.log.item.shape[0]),
        "n_sessions_logged": int(logged.session_return.shape[0]),
        "dataset": dataset.summary(),
        "train_diagnostics": train_diag,
        "timings_s": timings,
    }


def run_sequential(
    config: SequentialConfig | None = None, progress: bool = False, work_dir: Path | None = None
) -> dict:
    """Run every seed and aggregate: the DESIGN §9 ``simulate --json`` dict for ``sequential``."""
    from topkrec.progress import progress_bar

    config = config or SequentialConfig()
    if config.n_seeds < 1:
        raise ValueError("n_seeds must be >= 1")
    import torch

    t0 = time.perf_counter()
    cpu0 = time.process_time()
    per_seed: list[dict[str, Any]] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, config.threads))
    try:
        with tempfile.TemporaryDirectory(prefix="topkrec-sequential-") as tmp:
            work = Path(work_dir) if work_dir is not None else Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            with progress_bar(config.n_seeds, f"sequential {config.world}: seeds", enabled=progress) as bar:
                for i in range(config.n_seeds):
                    per_seed.append(_run_seed(config, config.seed + i, work, progress=False))
                    bar.update(1)
    finally:
        torch.set_num_threads(threads)
    names = list(per_seed[0]["values"])
    policies: dict[str, dict[str, Any]] = {}
    for name in names:
        seed_values = np.array([s["values"][name]["value"] for s in per_seed])
        mean, lo, hi = t_interval(seed_values)
        entry: dict[str, Any] = {
            "true_value": mean,
            "ci_low": lo,
            "ci_high": hi,
            "per_seed": seed_values.tolist(),
            "form": per_seed[0]["values"][name]["form"],
            "mean_session_length": float(np.mean([s["values"][name]["mean_session_length"] for s in per_seed])),
            "engagements_per_session": float(np.mean([s["values"][name]["engagements_per_session"] for s in per_seed])),
            "distinct_per_slate": float(np.mean([s["values"][name]["distinct_per_slate"] for s in per_seed])),
        }
        if name in per_seed[0]["estimates"]:
            est: dict[str, Any] = {}
            for e in ("ips", "capped_ips", "snips"):
                if not all(e in s["estimates"][name] for s in per_seed):
                    continue
                vals = np.array([s["estimates"][name][e]["value"] for s in per_seed])
                m, elo, ehi = t_interval(vals)
                est[e] = {
                    "value": m,
                    "ci_low": elo,
                    "ci_high": ehi,
                    "per_seed": vals.tolist(),
                    "error": m - mean,
                    "abs_error_per_seed": np.abs(vals - seed_values).tolist(),
                }
            if all("ess" in s["estimates"][name] for s in per_seed):
                est["ess"] = float(np.mean([s["estimates"][name]["ess"] for s in per_seed]))
            entry["estimates"] = est
        policies[name] = entry
    paired: dict[str, dict[str, Any]] = {}
    for pair in per_seed[0]["paired"]:
        paired[pair] = {
            **paired_interval([s["paired"][pair]["diff"] for s in per_seed]),
            "within_seed_se": [s["paired"][pair]["se"] for s in per_seed],
        }
    logged = np.array([s["logged_value"] for s in per_seed])
    m, lo, hi = t_interval(logged)
    orderings = {
        form: sorted((c + suffix for c in CORRECTION_NAMES), key=lambda n: -policies[n]["true_value"])
        for form, suffix in FORM_SUFFIX.items()
    }
    return {
        "scenario": "sequential",
        "world": config.world,
        "value_unit": "total reward per session (pv 1, cart 2, fav 2, buy 3)",
        "policies": policies,
        "paired": paired,
        "logged_value": {"value": m, "ci_low": lo, "ci_high": hi},
        "ordering": orderings["draws"],
        "orderings": orderings,
        "config": config.to_json(),
        "seeds": per_seed,
        "elapsed_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - cpu0,
    }
