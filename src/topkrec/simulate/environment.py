"""A sequential recommendation environment with a known ground truth (DESIGN §5, issue 5).

- **Items** have a latent attribute vector v_i (unit norm, d dims) and a popularity prior: a Zipf-like
  log-popularity that also enters the users' utility (popular items are a little more attractive to
  everyone).
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

**Slates from a stochastic policy** follow the paper's top-K set-up (§4.4): K independent draws from
the policy's distribution p(·|s), duplicates shown once. The probability that item i is in the slate
is then exactly α(i|s) = 1 − (1 − p(i|s))^K — the propensity recorded in the logs.

**The logging policy β** is popularity-heavy with exploration: with probability ε a uniform draw,
otherwise a softmax of logpop/T plus κ·⟨v_i, v_last⟩, a similarity to the user's last engaged item
(so β depends on the state, as a deployed recommender does, and β̂ has something to learn).

Everything is vectorised over the sessions that run in parallel; the Python loop is over steps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "BEHAVIORS",
    "REWARDS",
    "EnvConfig",
    "Environment",
    "LoggedEvents",
    "LoggingPolicyConfig",
    "RolloutResult",
    "SessionState",
    "inclusion_probability",
    "logging_policy_probs",
    "rollout",
    "sample_slates",
]

BEHAVIORS: tuple[str, ...] = ("pv", "cart", "fav", "buy")
REWARDS = np.array([1.0, 2.0, 2.0, 3.0])  # the default behaviour → reward map (DESIGN §1)
SKIP = "skip"  # a shown item the user did not engage with (reward 0)


@dataclass(frozen=True)
class EnvConfig:
    """The ground-truth world."""

    n_users: int = 400
    n_items: int = 300
    dim: int = 8
    """Latent dimensions of tastes and item attributes."""
    slate_size: int = 5
    """K: draws per slate (duplicates shown once)."""
    zipf: float = 1.0
    """Popularity prior: logpop_i = −zipf·log(rank_i), ranks a random permutation."""
    taste_scale: float = 4.0
    """Weight of the taste match ⟨u, v_i⟩ in the utility."""
    pop_weight: float = 0.3
    """Weight of logpop in the utility (users' own pull toward popular items)."""
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


class Environment:
    """Users, items and the choice model of one seeded world."""

    def __init__(self, config: EnvConfig) -> None:
        self.config = config
        rng = np.random.default_rng([config.seed, 1])
        self.item_vec = _unit(rng.normal(size=(config.n_items, config.dim)))  # (I, d)
        ranks = rng.permutation(config.n_items) + 1
        self.item_logpop = -config.zipf * np.log(ranks)  # (I,)
        self.user_taste = _unit(rng.normal(size=(config.n_users, config.dim)))  # (U, d)

    @property
    def n_items(self) -> int:
        return self.config.n_items

    def start_sessions(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Initial tastes (B, d) of new sessions of ``users``."""
        noise = (
            rng.normal(size=(users.shape[0], self.config.dim)) * self.config.session_noise / np.sqrt(self.config.dim)
        )
        return _unit(self.user_taste[users] + noise)

    def respond(
        self, taste: np.ndarray, slates: np.ndarray, shown: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """The user's choice on each slate: (position engaged or −1 (B,), behaviour code 0..3 or −1 (B,)).

        ``slates`` (B, K) item ids; ``shown`` (B, K) False for duplicate positions (not shown).
        """
        c = self.config
        affinity = np.einsum("bd,bkd->bk", taste, self.item_vec[slates])  # (B, K)
        util = c.taste_scale * affinity + c.pop_weight * self.item_logpop[slates]
        util = np.where(shown, util, -np.inf)
        util0 = np.full((slates.shape[0], 1), c.no_engage_utility)
        logits = np.concatenate([util0, util], axis=1)  # (B, 1 + K); column 0 = no engagement
        gumbel = rng.gumbel(size=logits.shape)
        choice = np.argmax(logits + gumbel, axis=1) - 1  # −1 = none
        engaged = choice >= 0
        pos = np.where(engaged, choice, 0)
        aff = affinity[np.arange(slates.shape[0]), pos]
        # type: logits over pv, cart, fav, buy; a closer match moves mass from pv to the others
        type_logits = np.stack([np.zeros_like(aff), 2.5 * aff - 3.2, 2.5 * aff - 3.5, 3.0 * aff - 3.8], axis=1)
        behavior = np.argmax(type_logits + rng.gumbel(size=type_logits.shape), axis=1)
        return np.where(engaged, choice, -1), np.where(engaged, behavior, -1)

    def next_taste(
        self, taste: np.ndarray, engaged_item: np.ndarray, engaged: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        c = self.config
        pull = np.where(engaged[:, None], c.pull * self.item_vec[np.maximum(engaged_item, 0)], 0.0)
        noise = rng.normal(size=taste.shape) * c.drift / np.sqrt(c.dim)
        return _unit(taste + pull + noise)

    def session_ends(self, engaged: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        p_end = np.where(engaged, c.p_end_engaged, c.p_end_skip)
        return (rng.random(engaged.shape[0]) < p_end) | (step + 1 >= c.max_len)


def inclusion_probability(draw_prob: np.ndarray, k: int) -> np.ndarray:
    """α = 1 − (1 − p)^K: the probability that an item is in a slate of K independent draws from p."""
    with np.errstate(divide="ignore"):  # p = 1 gives log1p(−1) = −inf and α = 1, as it should
        return -np.expm1(k * np.log1p(-np.minimum(draw_prob, 1.0)))


def sample_slates(probs: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """K independent draws per row from ``probs`` (B, I): slates (B, K) and ``shown`` (B, K) marking first
    occurrences (a duplicate draw is shown once)."""
    cdf = np.cumsum(probs, axis=1)
    cdf /= cdf[:, -1:]
    u = rng.random((probs.shape[0], k))
    slates = np.minimum((cdf[:, None, :] < u[:, :, None]).sum(axis=2), probs.shape[1] - 1)  # (B, K)
    shown = np.ones_like(slates, dtype=bool)
    for j in range(1, k):
        shown[:, j] = ~(slates[:, :j] == slates[:, j : j + 1]).any(axis=1)
    return slates, shown


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
    history: np.ndarray  # (B, H) last H shown item ids of the user (−1 = none), oldest first
    last_engaged: np.ndarray  # (B,) last engaged item id of the user (−1 = none)
    taste: np.ndarray  # (B, d) true current taste — only the oracle may use it


# A policy maps the state to per-row draw probabilities (B, I) (K independent draws make the slate)
# or directly to slates (B, K) when ``deterministic``.
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
    draw_prob: np.ndarray  # (n,) float64 β(item|s) per draw
    session: np.ndarray  # (n,) int64 global session number
    history: np.ndarray  # (n, H) int64 the user's last H history items before the slate (−1 = none)
    n_sessions: int  # sessions run, including those that left no row (no engagement, interactions-only logs)

    def write(self, path) -> None:  # path: Path; csv or parquet by suffix
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
            }
        )
        if str(path).endswith(".parquet"):
            frame.write_parquet(path)
        else:
            frame.write_csv(path)


@dataclass
class RolloutResult:
    """Per-session totals of a rollout, plus the log rows it produced (when asked for)."""

    session_return: np.ndarray  # (S,) total reward per session
    session_length: np.ndarray  # (S,) steps per session
    engagements: np.ndarray  # (S,) engaged steps per session
    history: np.ndarray  # (U, H) each user's last H shown items at the end (−1 = none)
    last_engaged: np.ndarray  # (U,)
    log: LoggedEvents | None = None
    # mean α of the shown items under the policy that chose them (diagnostic)

    @property
    def value(self) -> float:
        return float(self.session_return.mean())


def rollout(
    env: Environment,
    policy: PolicyFn,
    sessions_per_user: int,
    rng: np.random.Generator,
    *,
    history: np.ndarray | None = None,
    last_engaged: np.ndarray | None = None,
    hist_len: int = 10,
    deterministic: bool = False,
    record: bool = False,
    impressions: bool = True,
    t0: int = 1_700_000_000,
) -> RolloutResult:
    """Run ``sessions_per_user`` sessions for every user, one session of each user at a time.

    ``policy`` returns draw probabilities (B, I) (slates are K independent draws, as in the paper)
    or, when ``deterministic``, the slates (B, K) themselves. ``record`` collects every shown item as
    a log row with its exact propensity α = 1 − (1 − p)^K (1 for a deterministic policy).
    ``impressions`` False logs (and keeps in the users' histories) only the engaged items, as
    interaction logs such as Taobao's do; True logs every shown item, the skipped ones as ``skip``.
    """
    c = env.config
    users_all = np.arange(c.n_users)
    hist = np.full((c.n_users, hist_len), -1, dtype=np.int64) if history is None else history.copy()
    last = np.full(c.n_users, -1, dtype=np.int64) if last_engaged is None else last_engaged.copy()
    returns, lengths, engagements = [], [], []
    keys = ("user", "item", "event", "reward", "ts", "prop", "draw", "ses", "hist")
    rows: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for s in range(sessions_per_user):
        users = users_all
        taste = env.start_sessions(users, rng)
        total = np.zeros(c.n_users)
        length = np.zeros(c.n_users, dtype=np.int64)
        engaged_n = np.zeros(c.n_users, dtype=np.int64)
        active = np.ones(c.n_users, dtype=bool)
        for step in range(c.max_len):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            state = SessionState(users=idx, history=hist[idx], last_engaged=last[idx], taste=taste[idx])
            out = policy(state)
            if deterministic:
                slates = out.astype(np.int64)
                shown = np.ones_like(slates, dtype=bool)
                for j in range(1, slates.shape[1]):
                    shown[:, j] = ~(slates[:, :j] == slates[:, j : j + 1]).any(axis=1)
                draw = np.ones(slates.shape)
                alpha = np.ones(slates.shape)
            else:
                slates, shown = sample_slates(out, c.slate_size, rng)
                draw = np.take_along_axis(out, slates, axis=1)
                alpha = inclusion_probability(draw, c.slate_size)
            choice, behavior = env.respond(taste[idx], slates, shown, rng)
            engaged = choice >= 0
            engaged_item = np.where(engaged, slates[np.arange(idx.size), np.maximum(choice, 0)], -1)
            reward = np.where(engaged, REWARDS[np.maximum(behavior, 0)], 0.0)
            total[idx] += reward
            length[idx] += 1
            engaged_n[idx] += engaged
            if record:
                b, k = np.nonzero(shown if impressions else shown & (np.arange(shown.shape[1]) == choice[:, None]))
                is_chosen = k == choice[b]
                ev = np.where(is_chosen, np.array(BEHAVIORS, dtype=object)[np.maximum(behavior[b], 0)], SKIP)
                rows["user"].append(idx[b])
                rows["item"].append(slates[b, k])
                rows["event"].append(ev)
                rows["reward"].append(np.where(is_chosen, reward[b], 0.0))
                # sessions a day apart, steps a minute apart; all items of a slate share the step's time
                rows["ts"].append(np.full(b.shape, t0 + 86_400 * s + 60 * step, dtype=np.int64))
                rows["prop"].append(alpha[b, k])
                rows["draw"].append(draw[b, k])
                rows["ses"].append(idx[b] * sessions_per_user + s)
                rows["hist"].append(state.history[b])
            # the user's history gains the shown items in slate order (or only the engaged one)
            in_history = shown if impressions else shown & (np.arange(shown.shape[1]) == choice[:, None])
            for j in range(slates.shape[1]):
                col = np.where(in_history[:, j], slates[:, j], -1)
                sel = col >= 0
                rows_idx = idx[sel]
                hist[rows_idx] = np.concatenate([hist[rows_idx, 1:], col[sel, None]], axis=1)
            last[idx] = np.where(engaged, engaged_item, last[idx])
            taste[idx] = env.next_taste(taste[idx], engaged_item, engaged, rng)
            ends = env.session_ends(engaged, step, rng)
            active[idx[ends]] = False
        returns.append(total)
        lengths.append(length)
        engagements.append(engaged_n)
    log = None
    if record:
        order_keys = (np.concatenate(rows["ts"]), np.concatenate(rows["user"]))
        # stable sort by (user, ts) keeps slate order within a step
        order = np.lexsort((order_keys[0], order_keys[1]))
        log = LoggedEvents(
            user=np.concatenate(rows["user"])[order],
            item=np.concatenate(rows["item"])[order],
            event=np.concatenate(rows["event"])[order].astype(str),
            reward=np.concatenate(rows["reward"])[order],
            ts=np.concatenate(rows["ts"])[order],
            propensity=np.concatenate(rows["prop"])[order],
            draw_prob=np.concatenate(rows["draw"])[order],
            session=np.concatenate(rows["ses"])[order],
            history=np.concatenate(rows["hist"])[order],
            n_sessions=c.n_users * sessions_per_user,
        )
    return RolloutResult(
        session_return=np.concatenate(returns),
        session_length=np.concatenate(lengths),
        engagements=np.concatenate(engagements),
        history=hist,
        last_engaged=last,
        log=log,
    )
