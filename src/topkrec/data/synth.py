"""Synthetic behaviour logs in the Tianchi raw format (DESIGN §1), realistic and learnable.

The generator is a small world with known structure, so that every later stage has something real
to learn and the tests have something to check:

* **Items** have power-law popularity and sit under a category; each item has a shop and a brand
  that belong (mostly) to the same category.
* **Users** have a few taste categories (Dirichlet weights), chosen partly by category popularity and
  partly by sex, and a purchase power that raises the chance of buying.
* **Journeys** have a log-uniform length between ``min_events`` and ``max_events`` events, so both
  reference sampling bands (5 < n ≤ 50 and 50 < n ≤ 200) are populated.
* **Sessions** are separated by gaps over an hour; events inside a session are seconds to minutes
  apart. A session starts in one of the user's taste categories and then walks: with probability
  ``follow_prob`` to one of the current item's hidden *successors* (a fixed, item-specific list, so
  next-item prediction from history beats popularity), otherwise to a popular item of the same
  category, or (rarely) to a new taste category.
* **Behaviours**: every step is a page view; some views are followed by a cart, a fav or a buy of the
  same item, and a cart is followed by a buy far more often than a view is, giving a mix near
  pv 88 % / cart 6 % / fav 3 % / buy 3 %.

Everything is vectorised with NumPy: the only Python loop runs over journey *positions* (at most
``max_events``), never over users or events.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

BEHAVIORS = ("pv", "cart", "fav", "buy")
T0 = 1_511_539_200  # 2017-11-25 00:00 UTC, the start of the Taobao UserBehavior window


@dataclass(frozen=True)
class SynthConfig:
    """Size and shape of the synthetic world."""

    n_users: int = 1500
    """Number of users (each gets one journey)."""
    n_items: int = 3000
    """Number of items in the catalogue (not all need to be consumed)."""
    seed: int = 0
    """Seed of every random draw: the same config gives byte-identical files."""
    min_events: int = 6
    """Shortest journey (events, all behaviours) before de-duplication."""
    max_events: int = 200
    """Longest journey."""
    days: float = 14.0
    """Length of the time window."""
    popularity_exponent: float = 1.0
    """Item weight ∝ rank^-exponent (Zipf)."""
    n_successors: int = 5
    """Hidden successors per item."""
    follow_prob: float = 0.65
    """Probability that the next view is one of the current item's successors."""
    switch_prob: float = 0.08
    """Probability that the next view jumps to a new taste category (otherwise: same category)."""
    mean_session_views: float = 12.0
    """Mean number of views per session (session ends are geometric)."""
    recent_window: int = 30
    """A view that repeats one of the user's last ``recent_window`` views is redrawn once."""

    def __post_init__(self) -> None:
        from topkrec.errors import TopkrecError

        if self.n_users < 1 or self.n_items < 10:
            raise TopkrecError(f"synth needs --users ≥ 1 and --items ≥ 10 (got {self.n_users}, {self.n_items})")
        if not 1 <= self.min_events <= self.max_events:
            raise TopkrecError(f"need 1 ≤ min_events ≤ max_events (got {self.min_events}, {self.max_events})")


@dataclass(frozen=True)
class SynthLogs:
    """The three Tianchi tables as column arrays."""

    # user.csv
    user_id: np.ndarray  # (U,) int64
    sex: np.ndarray  # (U,) int64, 0/1
    age: np.ndarray  # (U,) int64, years
    pur_power: np.ndarray  # (U,) int64, 1..7
    # item.csv
    item_id: np.ndarray  # (I,) int64
    category: np.ndarray  # (I,) int64
    shop: np.ndarray  # (I,) int64
    brand: np.ndarray  # (I,) int64
    # user_behavior.csv, sorted by (user, time)
    ev_user: np.ndarray  # (E,) int64 raw user id
    ev_item: np.ndarray  # (E,) int64 raw item id
    ev_behavior: np.ndarray  # (E,) int8 index into BEHAVIORS
    ev_time: np.ndarray  # (E,) int64 unix seconds

    @property
    def n_events(self) -> int:
        return int(self.ev_user.shape[0])


def _weighted_pick_in_ranges(cum: np.ndarray, lo: np.ndarray, hi: np.ndarray, u: np.ndarray) -> np.ndarray:
    """For each row, an index in [lo, hi) drawn with the weights whose inclusive cumsum is ``cum``."""
    base = np.where(lo > 0, cum[np.maximum(lo - 1, 0)], 0.0)
    target = base + u * (cum[hi - 1] - base)
    idx = np.searchsorted(cum, target, side="right")
    return np.clip(idx, lo, hi - 1)


def generate(cfg: SynthConfig) -> SynthLogs:
    """Draw the synthetic world and its logs (see the module docstring)."""
    rng = np.random.default_rng(cfg.seed)
    n_users, n_items = cfg.n_users, cfg.n_items

    # ---------------------------------------------------------------- catalogue
    n_cat = max(5, n_items // 60)
    cat_weight = 1.0 / np.arange(1, n_cat + 1) ** 0.7
    item_cat = rng.choice(n_cat, size=n_items, p=cat_weight / cat_weight.sum())
    # Popularity: a Zipf weight per item, random rank.
    pop = 1.0 / rng.permutation(np.arange(1, n_items + 1)).astype(np.float64) ** cfg.popularity_exponent
    # Items laid out by category so a category is a contiguous range [cat_lo, cat_hi).
    order = np.argsort(item_cat, kind="stable")  # position -> item
    cat_sorted = item_cat[order]
    cat_lo = np.searchsorted(cat_sorted, np.arange(n_cat), side="left")
    cat_hi = np.searchsorted(cat_sorted, np.arange(n_cat), side="right")
    nonempty = np.flatnonzero(cat_hi > cat_lo)
    pop_cum = np.cumsum(pop[order])

    def popular_in_category(cats: np.ndarray) -> np.ndarray:
        pos = _weighted_pick_in_ranges(pop_cum, cat_lo[cats], cat_hi[cats], np.asarray(rng.random(cats.shape[0])))
        return order[pos]

    # Shops and brands belong to a category; an item takes a shop/brand of its own category
    # (or, for 10 % of brands, any brand: brands span categories more than shops do).
    def owned_by_category(n_owners: int, cross_share: float) -> np.ndarray:
        owner_cat = np.sort(rng.choice(nonempty, size=n_owners))
        lo = np.searchsorted(owner_cat, item_cat, side="left")
        hi = np.searchsorted(owner_cat, item_cat, side="right")
        has = hi > lo
        pick = lo + (rng.random(n_items) * np.maximum(hi - lo, 1)).astype(np.int64)
        anyone = rng.integers(0, n_owners, size=n_items)
        cross = rng.random(n_items) < cross_share
        return np.where(has & ~cross, pick, anyone)

    item_shop = owned_by_category(max(2, n_items // 8), 0.02)
    item_brand = owned_by_category(max(2, n_items // 12), 0.10)

    # Hidden successors: mostly popular items of the same category, some of a neighbouring one.
    s = cfg.n_successors
    succ_cat = np.repeat(item_cat, s)
    neighbour = rng.random(n_items * s) < 0.2
    succ_cat = np.where(neighbour, nonempty[rng.integers(0, nonempty.size, size=n_items * s)], succ_cat)
    successors = popular_in_category(succ_cat).reshape(n_items, s)
    self_loop = successors == np.arange(n_items)[:, None]
    successors[self_loop] = rng.integers(0, n_items, size=int(self_loop.sum()))
    succ_weight = 0.6 ** np.arange(s)
    succ_cum = np.cumsum(succ_weight / succ_weight.sum())

    # ---------------------------------------------------------------- users
    sex = rng.integers(0, 2, size=n_users)
    age = np.clip(rng.normal(33, 9, size=n_users).round(), 16, 70).astype(np.int64)
    pur_power = np.clip(rng.poisson(2.5, size=n_users) + 1, 1, 7)
    n_taste = 3
    # Taste categories: by category popularity, tilted by sex (half the categories lean each way).
    even = nonempty % 2 == 0
    w_female = cat_weight[nonempty] * np.where(even, 1.0, 0.4)
    w_male = cat_weight[nonempty] * np.where(even, 0.4, 1.0)
    cum_f, cum_m = np.cumsum(w_female), np.cumsum(w_male)
    u_taste = rng.random((n_users, n_taste))
    pick_f = np.searchsorted(cum_f, u_taste * cum_f[-1], side="right")
    pick_m = np.searchsorted(cum_m, u_taste * cum_m[-1], side="right")
    taste_cat = nonempty[np.where(sex[:, None] == 0, pick_f, pick_m).clip(0, nonempty.size - 1)]  # (U, 3)
    taste_w = rng.dirichlet(np.full(n_taste, 0.7), size=n_users)
    taste_cum = np.cumsum(taste_w, axis=1)

    # ---------------------------------------------------------------- journeys (views)
    # Total events log-uniform in [min, max]; views are ~88 % of them.
    log_n = rng.uniform(np.log(cfg.min_events), np.log(cfg.max_events + 1), size=n_users)
    n_total = np.clip(np.exp(log_n).astype(np.int64), cfg.min_events, cfg.max_events)
    n_views = np.maximum(cfg.min_events, np.round(n_total * 0.88).astype(np.int64))
    max_views = int(n_views.max())

    views = np.full((n_users, max_views), -1, dtype=np.int64)
    new_session = np.zeros((n_users, max_views), dtype=bool)
    cur = np.zeros(n_users, dtype=np.int64)
    cur_cat = np.zeros(n_users, dtype=np.int64)
    all_users = np.arange(n_users)
    p_end = 1.0 / cfg.mean_session_views
    for t in range(max_views):
        active = all_users[n_views > t]
        if active.size == 0:
            break
        m = active.size
        u = rng.random(m)
        starting = np.ones(m, dtype=bool) if t == 0 else rng.random(m) < p_end
        switch = starting | (u < cfg.switch_prob)
        follow = ~switch & (u < cfg.switch_prob + cfg.follow_prob)
        stay = ~switch & ~follow
        nxt = np.empty(m, dtype=np.int64)
        if switch.any():
            who = active[switch]
            k = (rng.random(who.size)[:, None] > taste_cum[who]).sum(axis=1).clip(0, n_taste - 1)
            cats = taste_cat[who, k]
            stray = rng.random(who.size) < 0.1
            cats[stray] = nonempty[rng.integers(0, nonempty.size, size=int(stray.sum()))]
            nxt[switch] = popular_in_category(cats)
            cur_cat[who] = cats
        if follow.any():
            who = active[follow]
            k = np.searchsorted(succ_cum, rng.random(who.size) * succ_cum[-1], side="right").clip(0, s - 1)
            nxt[follow] = successors[cur[who], k]
        if stay.any():
            who = active[stay]
            nxt[stay] = popular_in_category(cur_cat[who])
        # Users rarely re-view an item they just saw: redraw repeats of the last `recent` views once,
        # first among the other successors, then among the category's popular items.
        if t > 0:
            recent = views[active, max(0, t - cfg.recent_window) : t]
            again = np.flatnonzero((recent == nxt[:, None]).any(axis=1))
            if again.size:
                who = active[again]
                alt = successors[cur[who], rng.integers(0, s, size=again.size)]
                fallback = popular_in_category(cur_cat[who])
                seen = (recent[again] == alt[:, None]).any(axis=1)
                nxt[again] = np.where(seen, fallback, alt)
        cur[active] = nxt
        cur_cat[active] = item_cat[nxt]
        views[active, t] = nxt
        new_session[active, t] = starting

    valid = views >= 0
    v_user = np.broadcast_to(all_users[:, None], views.shape)[valid]
    v_item = views[valid]
    v_start = new_session[valid]
    n_v = v_item.shape[0]

    # ---------------------------------------------------------------- times
    # Inside a session: lognormal gaps, median ~40 s (seconds to minutes). Between sessions: 1 h plus
    # an exponential, scaled so a user's journey fits the window.
    intra = np.clip(rng.lognormal(np.log(40.0), 1.0, size=n_v), 1, 1800).astype(np.int64)
    intra[v_start] = 0
    window = int(cfg.days * 86400)
    # Each user's journey spans a random share of the window; what the sessions themselves do not
    # take is split over the session gaps by normalised exponentials (a flat Dirichlet), on top of
    # the hour that separates sessions.
    n_sess = np.bincount(v_user, weights=v_start, minlength=n_users)
    busy = np.bincount(v_user, weights=intra, minlength=n_users)
    target_span = rng.uniform(0.3, 0.97, size=n_users) * window
    gaps_between = np.maximum(n_sess - 1, 0)
    budget = np.maximum(target_span - busy - 3601 * gaps_between, 0.0)
    first = np.r_[True, v_user[1:] != v_user[:-1]]
    inter_start = v_start & ~first
    e = rng.exponential(1.0, size=n_v) * inter_start
    e_sum = np.bincount(v_user, weights=e, minlength=n_users)
    share = e / np.maximum(e_sum[v_user], 1e-12)
    inter = 3601 + (share * budget[v_user]).astype(np.int64)
    gap = np.where(inter_start, inter, intra)
    gap[first] = 0
    elapsed = np.cumsum(gap)
    user_first = np.flatnonzero(first)
    elapsed -= np.repeat(elapsed[user_first], np.diff(np.r_[user_first, n_v]))
    span = np.zeros(n_users, dtype=np.int64)
    np.maximum.at(span, v_user, elapsed)
    start = T0 + (rng.random(n_users) * np.maximum(window - span, 0)).astype(np.int64)
    v_time = start[v_user] + elapsed

    # ---------------------------------------------------------------- behaviours
    # After a view of the same item: cart, fav, direct buy; after a cart: buy (much likelier).
    power = (pur_power[v_user] - 1) / 6.0  # 0..1
    cart = np.asarray(rng.random(n_v) < 0.068)
    fav = np.asarray(rng.random(n_v) < 0.034)
    buy_after_cart = np.asarray(cart & (rng.random(n_v) < 0.20 + 0.25 * power))
    buy_direct = np.asarray(~cart & (rng.random(n_v) < 0.008 + 0.016 * power))

    def delay() -> np.ndarray:  # seconds after the view
        return np.asarray(rng.integers(3, 90, size=n_v))

    parts_user = [v_user]
    parts_item = [v_item]
    parts_beh = [np.zeros(n_v, dtype=np.int8)]
    parts_time = [v_time]
    cart_delay = delay()
    extras = (
        (cart, 1, v_time + cart_delay),
        (fav, 2, v_time + delay()),
        (buy_after_cart, 3, v_time + cart_delay + delay()),
        (buy_direct, 3, v_time + delay()),
    )
    for mask, beh, when in extras:
        parts_user.append(v_user[mask])
        parts_item.append(v_item[mask])
        parts_beh.append(np.full(int(mask.sum()), beh, dtype=np.int8))
        parts_time.append(when[mask])
    e_user = np.concatenate(parts_user)
    e_item = np.concatenate(parts_item)
    e_beh = np.concatenate(parts_beh)
    e_time = np.concatenate(parts_time)
    ev_order = np.lexsort((e_beh, e_time, e_user))
    e_user, e_item, e_beh, e_time = e_user[ev_order], e_item[ev_order], e_beh[ev_order], e_time[ev_order]
    # Cap each journey at max_events (the extras can push a long one over).
    starts = np.flatnonzero(np.r_[True, e_user[1:] != e_user[:-1]])
    rank = np.arange(e_user.size) - np.repeat(starts, np.diff(np.r_[starts, e_user.size]))
    keep = rank < cfg.max_events
    e_user, e_item, e_beh, e_time = e_user[keep], e_item[keep], e_beh[keep], e_time[keep]

    # ---------------------------------------------------------------- raw ids
    # Raw ids are sparse integers, as in real logs, so id mapping is exercised.
    user_id = np.arange(1, n_users + 1, dtype=np.int64) * 7 + 100
    item_id = rng.choice(np.arange(1_000, 1_000 + 20 * n_items), size=n_items, replace=False)
    cat_id = rng.choice(np.arange(1, 10 * n_cat + 1), size=n_cat, replace=False)
    logs = SynthLogs(
        user_id=user_id,
        sex=sex.astype(np.int64),
        age=age,
        pur_power=pur_power.astype(np.int64),
        item_id=item_id.astype(np.int64),
        category=cat_id[item_cat].astype(np.int64),
        shop=(item_shop + 1).astype(np.int64),
        brand=(item_brand + 1).astype(np.int64),
        ev_user=user_id[e_user],
        ev_item=item_id[e_item].astype(np.int64),
        ev_behavior=e_beh,
        ev_time=e_time.astype(np.int64),
    )
    logger.info("synth: %d users, %d items, %d events", n_users, n_items, logs.n_events)
    return logs


def write_tianchi(logs: SynthLogs, directory: Path) -> None:
    """Write ``user.csv``, ``item.csv`` and ``user_behavior.csv`` (headerless) into ``directory``."""
    import polars as pl

    d = Path(directory)
    pl.DataFrame({"user": logs.user_id, "sex": logs.sex, "age": logs.age, "pur_power": logs.pur_power}).write_csv(
        d / "user.csv", include_header=False
    )
    pl.DataFrame({"item": logs.item_id, "category": logs.category, "shop": logs.shop, "brand": logs.brand}).write_csv(
        d / "item.csv", include_header=False
    )
    beh = pl.Series("behavior", np.asarray(BEHAVIORS)[logs.ev_behavior])
    pl.DataFrame({"user": logs.ev_user, "item": logs.ev_item, "behavior": beh, "time": logs.ev_time}).write_csv(
        d / "user_behavior.csv", include_header=False
    )
