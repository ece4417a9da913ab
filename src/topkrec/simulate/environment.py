"""A sequential recommendation environment with a known ground truth (DESIGN §5, issues 5 and 13).

- **Items** have a latent attribute vector v_i (unit norm, d dims) and a popularity prior: a Zipf-like
  log-popularity that may also enter the users' utility (``pop_weight``). With ``item_clusters`` > 0
  items and users gather around cluster centres, so every user has several good items (a slate of K
  can hold several of them, and which K matters).
- **Users** have a latent taste u (unit norm). A session starts from the user's base taste plus noise;
  within the session the taste drifts at random and is pulled toward each engaged item.
- **Choice model**: a slate of at most K distinct items is shown; the user engages with at most one,
  by a multinomial logit with a "no engagement" option: P(i) = e^{x_i} / (e^{x_0} + Σ_j e^{x_j}) with
  x_i = taste_scale·⟨u, v_i⟩ + pop_weight·logpop_i. The engagement type (pv/cart/fav/buy) depends on
  the affinity ⟨u, v_i⟩: a closer match is likelier to end in cart, fav or buy.
- **Session end**: after each step the session ends with probability p_end_engaged after an
  engagement and p_end_skip after none (so good slates make sessions longer), or at max_len steps.
- **Rewards** are the default behaviour rewards pv 1 / cart 2 / fav 2 / buy 3; the value of a policy
  is the mean total reward per session, measured by rolling it out.

**Slate forms** (``SlateForm``) — how a policy's distribution p(·|s) becomes a slate of K items:

- ``draws``: K independent draws from p, duplicates shown once (the paper's top-K set-up, §4.3). The
  probability that item i is in the slate is α(i|s) = 1 − (1 − p(i|s))^K.
- ``pl``: Plackett–Luce sampling without replacement (Gumbel-top-K): K distinct items, drawn one after
  another with probability ∝ p among those not yet drawn — what ``serve --explore`` does. Its exact
  inclusion probabilities come from ``topkrec.serve.exploration.inclusion_probabilities``.
- ``slate``: the policy returns the K items itself (greedy top-K, popularity, the oracle); α = 1.

**The logging policy β** is popularity-heavy with exploration: with probability ε a uniform draw,
otherwise a softmax of logpop/T plus κ·⟨v_i, v_last⟩, a similarity to the user's last engaged item
(so β depends on the state, as a deployed recommender does, and β̂ has something to learn).

**Randomness** comes from ``topkrec.simulate.streams.NoiseStreams``: every number is indexed by
(session round, step, user), so two policies rolled out on equal streams meet the same users and the
same noise (exact common random numbers). Everything is vectorised over the sessions that run in
parallel; the Python loop is over steps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from topkrec.simulate.streams import Component, NoiseStreams

logger = logging.getLogger(__name__)

__all__ = [
    "BEHAVIORS",
    "EVENT_TOKENS",
    "REWARDS",
    "SLATE_FORMS",
    "EnvConfig",
    "Environment",
    "LoggedEvents",
    "LoggingPolicyConfig",
    "RolloutResult",
    "SessionState",
    "SlateForm",
    "StepOutcome",
    "as_streams",
    "inclusion_probability",
    "logging_policy_probs",
    "pl_slates",
    "rollout",
    "sample_slates",
]

BEHAVIORS: tuple[str, ...] = ("pv", "cart", "fav", "buy")
REWARDS = np.array([1.0, 2.0, 2.0, 3.0])  # the default behaviour → reward map (DESIGN §1)
SKIP = "skip"  # a shown item the user did not engage with (reward 0)
EVENT_TOKENS: tuple[str, ...] = ("pad", SKIP, *BEHAVIORS)
"""Event codes of history tokens: 0 = padding, 1 = skip, 2.. = pv, cart, fav, buy."""
SlateForm = Literal["draws", "pl", "slate"]
SLATE_FORMS: tuple[str, ...] = ("draws", "pl", "slate")


@dataclass(frozen=True)
class EnvConfig:
    """The ground-truth world."""

    n_users: int = 400
    n_items: int = 300
    dim: int = 8
    """Latent dimensions of tastes and item attributes."""
    slate_size: int = 5
    """K: items per slate (K draws for the ``draws`` form, duplicates shown once)."""
    zipf: float = 1.0
    """Popularity prior: logpop_i = −zipf·log(rank_i), ranks a random permutation."""
    taste_scale: float = 4.0
    """Weight of the taste match ⟨u, v_i⟩ in the utility."""
    pop_weight: float = 0.3
    """Weight of logpop in the utility (users' own pull toward popular items); 0 = none."""
    no_engage_utility: float = 2.0
    """x_0, the utility of engaging with nothing."""
    session_noise: float = 0.5
    """Noise added to the base taste at each session start (before normalising)."""
    drift: float = 0.15
    """Random taste drift per step."""
    pull: float = 0.4
    """Pull of the taste toward an engaged item."""
    p_end_engaged: float = 0.08
    p_end_skip: float = 0.3
    max_len: int = 20
    """Steps after which a session always ends."""
    item_clusters: int = 0
    """0: item and taste vectors are independent directions. C > 0: items and users are drawn around C
    random centres (v = unit(centre + cluster_spread·direction)), so each user has ~n_items/C good items."""
    cluster_spread: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class LoggingPolicyConfig:
    """The biased logging policy β."""

    pop_temperature: float = 0.7
    """β ∝ exp(logpop/T + κ·sim): below 1 sharpens the popularity bias."""
    similarity_weight: float = 2.0
    """κ: weight of the similarity to the user's last engaged item."""
    epsilon: float = 0.1
    """Share of uniform exploration."""


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass
class StepOutcome:
    """What one step did to the sessions in it (B rows)."""

    choice: np.ndarray  # (B,) slate position engaged, −1 = none
    behavior: np.ndarray  # (B,) 0..3 (pv/cart/fav/buy), −1 = none
    engaged_item: np.ndarray  # (B,) item id engaged, −1 = none
    reward: np.ndarray  # (B,) float
    taste: np.ndarray  # (B, d) taste after the step
    ends: np.ndarray  # (B,) bool: the session ends after this step (the user left, or max_len was reached)
    left: np.ndarray  # (B,) bool: the user ended the session (the end draw), whatever the step count

    @property
    def engaged(self) -> np.ndarray:
        return self.choice >= 0


class Environment:
    """Users, items and the choice model of one seeded world."""

    def __init__(self, config: EnvConfig) -> None:
        self.config = config
        rng = np.random.default_rng([config.seed, 1])
        self.item_vec = _unit(rng.normal(size=(config.n_items, config.dim)))  # (I, d)
        ranks = rng.permutation(config.n_items) + 1
        self.item_logpop = -config.zipf * np.log(ranks)  # (I,)
        self.user_taste = _unit(rng.normal(size=(config.n_users, config.dim)))  # (U, d)
        if config.item_clusters > 0:
            crng = np.random.default_rng([config.seed, 5])
            centres = _unit(crng.normal(size=(config.item_clusters, config.dim)))
            self.item_cluster = crng.integers(config.item_clusters, size=config.n_items)
            self.user_cluster = crng.integers(config.item_clusters, size=config.n_users)
            self.item_vec = _unit(centres[self.item_cluster] + config.cluster_spread * self.item_vec)
            self.user_taste = _unit(centres[self.user_cluster] + config.cluster_spread * self.user_taste)

    @property
    def n_items(self) -> int:
        return self.config.n_items

    def utility(self, taste: np.ndarray, items: np.ndarray | None = None) -> np.ndarray:
        """x_i = taste_scale·⟨u, v_i⟩ + pop_weight·logpop_i for every item (B, I), or the given (B, K) items."""
        c = self.config
        if items is None:
            return c.taste_scale * taste @ self.item_vec.T + c.pop_weight * self.item_logpop[None, :]
        affinity = np.einsum("bd,bkd->bk", taste, self.item_vec[items])
        return c.taste_scale * affinity + c.pop_weight * self.item_logpop[items]

    def start_sessions(self, users: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """Initial tastes (B, d) of new sessions of ``users`` from standard normal ``noise`` (B, d)."""
        c = self.config
        return _unit(self.user_taste[users] + noise * c.session_noise / np.sqrt(c.dim))

    def respond(
        self, taste: np.ndarray, slates: np.ndarray, shown: np.ndarray, choice_noise: np.ndarray, kind_noise: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The user's choice on each slate: (position engaged or −1 (B,), behaviour code 0..3 or −1 (B,)).

        ``slates`` (B, K) item ids; ``shown`` (B, K) False for positions not shown (duplicates).
        ``choice_noise`` (B, 1 + K) Gumbel shocks: column 0 for "no engagement", then one per slate
        position — ``step`` reads them from a stream keyed by item, so the same item gets the same shock
        wherever a policy puts it. ``kind_noise`` (B, 4) Gumbel.
        """
        c = self.config
        affinity = np.einsum("bd,bkd->bk", taste, self.item_vec[slates])  # (B, K)
        util = c.taste_scale * affinity + c.pop_weight * self.item_logpop[slates]
        util = np.where(shown, util + choice_noise[:, 1:], -np.inf)
        util0 = c.no_engage_utility + choice_noise[:, :1]
        choice = np.argmax(np.concatenate([util0, util], axis=1), axis=1) - 1  # −1 = none
        engaged = choice >= 0
        pos = np.where(engaged, choice, 0)
        aff = affinity[np.arange(slates.shape[0]), pos]
        # type: logits over pv, cart, fav, buy; a closer match moves mass from pv to the others
        type_logits = np.stack([np.zeros_like(aff), 2.5 * aff - 3.2, 2.5 * aff - 3.5, 3.0 * aff - 3.8], axis=1)
        behavior = np.argmax(type_logits + kind_noise, axis=1)
        return np.where(engaged, choice, -1), np.where(engaged, behavior, -1)

    def next_taste(
        self, taste: np.ndarray, engaged_item: np.ndarray, engaged: np.ndarray, noise: np.ndarray
    ) -> np.ndarray:
        """Taste after a step: pulled toward the engaged item, plus drift from normal ``noise`` (B, d)."""
        c = self.config
        pull = np.where(engaged[:, None], c.pull * self.item_vec[np.maximum(engaged_item, 0)], 0.0)
        return _unit(taste + pull + noise * c.drift / np.sqrt(c.dim))

    def user_leaves(self, engaged: np.ndarray, uniform: np.ndarray) -> np.ndarray:
        """Whether the user ends the session after this step (before the max_len limit), from ``uniform``."""
        c = self.config
        return uniform < np.where(engaged, c.p_end_engaged, c.p_end_skip)

    def step(
        self,
        streams: NoiseStreams,
        round_: int,
        step: int,
        users: np.ndarray,
        taste: np.ndarray,
        slates: np.ndarray,
        shown: np.ndarray,
    ) -> StepOutcome:
        """One step of the sessions of ``users`` (round ``round_``) given their slates; noise from ``streams``."""
        c = self.config
        choice, behavior = self.respond(
            taste,
            slates,
            shown,
            # column 0 = no engagement, column 1 + i = item i: read only the shown items' columns
            streams.draw(
                Component.CHOICE, round_, step, users, c.n_items + 1, cols=np.c_[np.zeros_like(users), 1 + slates]
            ),
            streams.draw(Component.KIND, round_, step, users, len(BEHAVIORS)),
        )
        engaged = choice >= 0
        engaged_item = np.where(engaged, slates[np.arange(users.size), np.maximum(choice, 0)], -1)
        reward = np.where(engaged, REWARDS[np.maximum(behavior, 0)], 0.0)
        new_taste = self.next_taste(
            taste, engaged_item, engaged, streams.draw(Component.DRIFT, round_, step, users, c.dim)
        )
        left = self.user_leaves(engaged, streams.draw(Component.END, round_, step, users, 1)[:, 0])
        ends = left | (step + 1 >= c.max_len)
        return StepOutcome(choice, behavior, engaged_item, reward, new_taste, ends, left)


def inclusion_probability(draw_prob: np.ndarray, k: int) -> np.ndarray:
    """α = 1 − (1 − p)^K: the probability that an item is in a slate of K independent draws from p."""
    with np.errstate(divide="ignore"):  # p = 1 gives log1p(−1) = −inf and α = 1, as it should
        return -np.expm1(k * np.log1p(-np.minimum(draw_prob, 1.0)))


def _first_occurrences(slates: np.ndarray) -> np.ndarray:
    shown = np.ones_like(slates, dtype=bool)
    for j in range(1, slates.shape[1]):
        shown[:, j] = ~(slates[:, :j] == slates[:, j : j + 1]).any(axis=1)
    return shown


def sample_slates(
    probs: np.ndarray, k: int, uniform: np.ndarray | np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """K independent draws per row from ``probs`` (B, I) by inverse CDF of ``uniform`` (B, K) (or fresh
    uniforms from a generator): slates (B, K) and ``shown`` (B, K) marking first occurrences (a duplicate
    draw is shown once)."""
    if isinstance(uniform, np.random.Generator):
        uniform = uniform.random((probs.shape[0], k))
    cdf = np.cumsum(probs, axis=1)
    cdf /= cdf[:, -1:]
    slates = np.minimum((cdf[:, None, :] < uniform[:, :, None]).sum(axis=2), probs.shape[1] - 1)  # (B, K)
    return slates.astype(np.int64), _first_occurrences(slates)


def pl_slates(probs: np.ndarray, k: int, gumbel: np.ndarray | np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Plackett–Luce slates: K distinct items per row drawn without replacement with probability ∝
    ``probs`` (B, I), by the Gumbel-top-K trick on ``gumbel`` (B, I) noise keyed by item (or fresh noise
    from a generator). Returns slates (B, K) in draw order and ``shown`` (B, K), False only where a row
    has fewer than K items of positive probability (those positions are not shown)."""
    if isinstance(gumbel, np.random.Generator):
        gumbel = gumbel.gumbel(size=probs.shape)
    with np.errstate(divide="ignore"):
        keys = np.log(probs) + gumbel
    k_eff = min(k, probs.shape[1])
    part = np.argpartition(-keys, k_eff - 1, axis=1)[:, :k_eff]
    order = np.argsort(-np.take_along_axis(keys, part, axis=1), axis=1, kind="stable")
    slates = np.take_along_axis(part, order, axis=1)
    shown = np.take_along_axis(probs, slates, axis=1) > 0
    return slates.astype(np.int64), shown


def pl_inclusion(probs: np.ndarray, k: int) -> np.ndarray:
    """Exact inclusion probabilities (B, I) of Plackett–Luce slates of K from ``probs`` (B, I)."""
    from topkrec.serve.exploration import inclusion_probabilities

    with np.errstate(divide="ignore"):
        return inclusion_probabilities(np.log(probs), k)


def logging_policy_probs(env: Environment, config: LoggingPolicyConfig, last_engaged: np.ndarray) -> np.ndarray:
    """β(·|s) (B, I) given each session's last engaged item (−1 = none yet)."""
    sim = np.where(last_engaged[:, None] >= 0, env.item_vec[np.maximum(last_engaged, 0)] @ env.item_vec.T, 0.0)
    logits = env.item_logpop[None, :] / config.pop_temperature + config.similarity_weight * sim
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return (1.0 - config.epsilon) * p + config.epsilon / env.n_items


@dataclass
class SessionState:
    """What a policy may look at for the sessions running now (one row per session)."""

    users: np.ndarray  # (B,) user ids
    history: np.ndarray  # (B, H) last H history item ids of the user (−1 = none), oldest first
    last_engaged: np.ndarray  # (B,) last engaged item id of the user (−1 = none)
    taste: np.ndarray  # (B, d) true current taste — only the oracle may use it
    history_events: np.ndarray | None = None  # (B, H) event codes of the history tokens (EVENT_TOKENS)


# A policy maps the state to per-row probabilities (B, I) (the ``draws`` and ``pl`` forms) or directly to
# slates (B, K) (the ``slate`` form).
PolicyFn = Callable[[SessionState], np.ndarray]


@dataclass
class LoggedEvents:
    """Rows of the events log: one per shown item."""

    user: np.ndarray  # (n,) int64
    item: np.ndarray  # (n,) int64
    event: np.ndarray  # (n,) str: skip | pv | cart | fav | buy
    reward: np.ndarray  # (n,) float64
    ts: np.ndarray  # (n,) int64 unix seconds
    propensity: np.ndarray  # (n,) float64 α_β(item|s): probability the item was in the slate
    draw_prob: np.ndarray  # (n,) float64 β(item|s), the per-draw probability
    session: np.ndarray  # (n,) int64 global session number
    step: np.ndarray  # (n,) int64 slate step of the user: round·max_len + step in session (rows of a slate share it)
    history: np.ndarray  # (n, H) int64 the user's last H history items before the slate (−1 = none)
    n_sessions: int  # sessions run, including those that left no row (no engagement, interactions-only logs)

    def write(self, path: Path | str) -> None:
        """Write the log as an events file (CSV, or Parquet by suffix)."""
        import polars as pl

        frame = pl.DataFrame(
            {
                "user": self.user,
                "item": self.item,
                "event": self.event,
                "reward": self.reward,
                "ts": self.ts,
                "propensity": self.propensity,
                "draw_prob": self.draw_prob,
                "session": self.session,
                "step": self.step,
            }
        )
        if str(path).endswith(".parquet"):
            frame.write_parquet(path)
        else:
            frame.write_csv(path)


@dataclass
class RolloutResult:
    """Per-session totals of a rollout, plus the log rows it produced (when asked for)."""

    session_return: np.ndarray  # (S,) total reward per session, S = rounds·users, index round·U + user
    session_length: np.ndarray  # (S,) steps per session
    engagements: np.ndarray  # (S,) engaged steps per session
    history: np.ndarray  # (U, H) each user's last H history items at the end (−1 = none)
    last_engaged: np.ndarray  # (U,)
    history_events: np.ndarray | None = None  # (U, H) event codes of those history items
    log: LoggedEvents | None = None
    items_shown: int = 0  # distinct items shown, summed over every slate of the rollout

    @property
    def value(self) -> float:
        return float(self.session_return.mean())

    @property
    def distinct_per_slate(self) -> float:
        """Mean number of distinct items in a slate (K for Plackett–Luce and greedy slates, fewer for K draws)."""
        return self.items_shown / max(int(self.session_length.sum()), 1)


def as_streams(streams: NoiseStreams | Sequence[int] | np.random.Generator) -> NoiseStreams:
    """A ``NoiseStreams`` from itself, a key, or a generator (two draws from it form the key)."""
    if isinstance(streams, NoiseStreams):
        return streams
    if isinstance(streams, np.random.Generator):
        return NoiseStreams(streams.integers(0, 2**31, size=2).tolist())
    return NoiseStreams(streams)


def push_history(
    hist: np.ndarray, hist_ev: np.ndarray, users: np.ndarray, slates: np.ndarray, events: np.ndarray, keep: np.ndarray
) -> None:
    """Append the slate items marked ``keep`` (B, K) to the users' histories, in slate order, in place.

    ``events`` (B, K) are the event codes of the items (EVENT_TOKENS)."""
    for j in range(slates.shape[1]):
        sel = keep[:, j]
        rows = users[sel]
        hist[rows] = np.concatenate([hist[rows, 1:], slates[sel, j, None]], axis=1)
        hist_ev[rows] = np.concatenate([hist_ev[rows, 1:], events[sel, j, None]], axis=1)


def slate_events(choice: np.ndarray, behavior: np.ndarray, k: int) -> np.ndarray:
    """Event codes (B, K) of a slate's positions: the engaged one's behaviour, skip for the others."""
    chosen = np.arange(k)[None, :] == choice[:, None]
    return np.where(chosen, 2 + np.maximum(behavior, 0)[:, None], 1).astype(np.int64)


def rollout(
    env: Environment,
    policy: PolicyFn,
    sessions_per_user: int,
    streams: NoiseStreams | Sequence[int] | np.random.Generator,
    *,
    form: SlateForm = "draws",
    history: np.ndarray | None = None,
    history_events: np.ndarray | None = None,
    last_engaged: np.ndarray | None = None,
    hist_len: int = 10,
    record: bool = False,
    impressions: bool = True,
    t0: int = 1_700_000_000,
) -> RolloutResult:
    """Run ``sessions_per_user`` sessions for every user, one session of each user at a time.

    ``policy`` returns probabilities (B, I) for the ``draws`` and ``pl`` forms, or the slates (B, K)
    themselves for the ``slate`` form (see the module docstring). ``streams`` (a ``NoiseStreams``, a
    key, or a generator that picks a key) provides every random number, indexed by (round, step, user):
    two rollouts on equal streams are exact common random numbers. ``record`` collects every shown item
    as a log row with its exact propensity (α = 1 − (1 − p)^K for draws, the Plackett–Luce inclusion
    probability for ``pl``, 1 for slates). ``impressions`` False logs (and keeps in the users'
    histories) only the engaged items, as interaction logs such as Taobao's do; True logs every shown
    item, the skipped ones as ``skip``. A ``policy`` with an ``observe(users, slates, events, logged)``
    method is told after each step what happened: the shown slates (B, K), their event codes (B, K,
    EVENT_TOKENS) and which positions the log keeps (B, K) — what a trained agent's serving sessions need.
    """
    if form not in SLATE_FORMS:
        raise ValueError(f"unknown slate form {form!r}; use one of {', '.join(SLATE_FORMS)}")
    streams = as_streams(streams)
    observe = getattr(policy, "observe", None)
    c = env.config
    k = c.slate_size
    users_all = np.arange(c.n_users)
    hist = np.full((c.n_users, hist_len), -1, dtype=np.int64) if history is None else history.copy()
    if history_events is not None:
        hist_ev = history_events.copy()
    else:  # without event codes, known history items count as shown (skip), padding as 0
        hist_ev = np.where(hist >= 0, 1, 0).astype(np.int64)
    last = np.full(c.n_users, -1, dtype=np.int64) if last_engaged is None else last_engaged.copy()
    returns, lengths, engagements = [], [], []
    items_shown = 0
    keys = ("user", "item", "event", "reward", "ts", "prop", "draw", "ses", "step", "hist")
    rows: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    event_names = np.array(EVENT_TOKENS, dtype=object)
    for s in range(sessions_per_user):
        taste = env.start_sessions(users_all, streams.draw(Component.START, s, 0, users_all, c.dim))
        total = np.zeros(c.n_users)
        length = np.zeros(c.n_users, dtype=np.int64)
        engaged_n = np.zeros(c.n_users, dtype=np.int64)
        active = np.ones(c.n_users, dtype=bool)
        for step in range(c.max_len):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            state = SessionState(
                users=idx, history=hist[idx], last_engaged=last[idx], taste=taste[idx], history_events=hist_ev[idx]
            )
            out = policy(state)
            if form == "slate":
                slates = np.asarray(out).astype(np.int64)
                shown = _first_occurrences(slates)
                draw = alpha = np.ones(slates.shape)
            elif form == "draws":
                slates, shown = sample_slates(out, k, streams.draw(Component.DRAWS, s, step, idx, k))
                draw = np.take_along_axis(out, slates, axis=1)
                alpha = inclusion_probability(draw, k)
            else:
                slates, shown = pl_slates(out, k, streams.draw(Component.PL, s, step, idx, c.n_items))
                draw = np.take_along_axis(out, slates, axis=1)
                alpha = np.take_along_axis(pl_inclusion(out, k), slates, axis=1) if record else np.ones(slates.shape)
            items_shown += int(shown.sum())
            res = env.step(streams, s, step, idx, taste[idx], slates, shown)
            engaged = res.engaged
            total[idx] += res.reward
            length[idx] += 1
            engaged_n[idx] += engaged
            chosen = np.arange(slates.shape[1])[None, :] == res.choice[:, None]
            in_history = shown if impressions else shown & chosen
            events = slate_events(res.choice, res.behavior, slates.shape[1])
            if record:
                b, j = np.nonzero(in_history)
                rows["user"].append(idx[b])
                rows["item"].append(slates[b, j])
                rows["event"].append(event_names[events[b, j]])
                rows["reward"].append(np.where(chosen[b, j], res.reward[b], 0.0))
                # sessions a day apart, steps a minute apart; all items of a slate share the step's time
                rows["ts"].append(np.full(b.shape, t0 + 86_400 * s + 60 * step, dtype=np.int64))
                rows["prop"].append(alpha[b, j])
                rows["draw"].append(draw[b, j])
                rows["ses"].append(idx[b] * sessions_per_user + s)
                rows["step"].append(np.full(b.shape, s * c.max_len + step, dtype=np.int64))
                rows["hist"].append(state.history[b])
            # the user's history gains the shown items in slate order (or only the engaged one)
            push_history(hist, hist_ev, idx, slates, events, in_history)
            if observe is not None:  # a stateful policy (a trained agent's sessions) sees the same feedback
                observe(idx, slates, events, in_history)
            last[idx] = np.where(engaged, res.engaged_item, last[idx])
            taste[idx] = res.taste
            active[idx[res.ends]] = False
        returns.append(total)
        lengths.append(length)
        engagements.append(engaged_n)
    log = None
    if record:
        cat = {key: np.concatenate(v) if v else np.zeros(0) for key, v in rows.items()}
        # stable sort by (user, ts) keeps slate order within a step
        order = np.lexsort((cat["ts"], cat["user"]))
        log = LoggedEvents(
            user=cat["user"][order].astype(np.int64),
            item=cat["item"][order].astype(np.int64),
            event=cat["event"][order].astype(str),
            reward=cat["reward"][order],
            ts=cat["ts"][order].astype(np.int64),
            propensity=cat["prop"][order],
            draw_prob=cat["draw"][order],
            session=cat["ses"][order].astype(np.int64),
            step=cat["step"][order].astype(np.int64),
            history=(np.concatenate(rows["hist"]) if rows["hist"] else np.zeros((0, hist_len), np.int64))[order],
            n_sessions=c.n_users * sessions_per_user,
        )
    return RolloutResult(
        session_return=np.concatenate(returns),
        session_length=np.concatenate(lengths),
        engagements=np.concatenate(engagements),
        history=hist,
        last_engaged=last,
        history_events=hist_ev,
        log=log,
        items_shown=items_shown,
    )
