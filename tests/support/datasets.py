"""Small random datasets with the shapes real logs have (slates, skipped impressions, context rows, OOV)."""

from __future__ import annotations

import numpy as np

from topkrec.data.dataset import Dataset, discounted_returns


def random_dataset(
    seed: int = 0, n_users: int = 7, n_items: int = 13, steps: bool = False, context: bool = False
) -> Dataset:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 25, size=n_users)
    user = np.repeat(np.arange(n_users), lengths).astype(np.int32)
    n = user.shape[0]
    item = rng.integers(0, n_items, size=n).astype(np.int32)
    ts = np.concatenate([np.sort(rng.integers(0, 20_000, size=k)) for k in lengths]).astype(np.int64)
    # last 20 % of each user's events are test when the user has more than 3 events
    pos = np.concatenate([np.arange(k) for k in lengths])
    ln = np.repeat(lengths, lengths)
    is_test = (ln > 3) & (pos >= ln - np.maximum(1, (ln * 0.2).astype(int)))
    item[is_test & (rng.random(n) < 0.2)] = n_items  # some OOV test items
    gap = np.r_[True, (user[1:] != user[:-1]) | (np.diff(ts) > 3600)]
    session = np.cumsum(gap).astype(np.int32) - 1
    reward = rng.integers(0, 4, size=n).astype(np.float32)
    behavior = np.array(["skip", "pv", "cart", "buy"], dtype=object)[reward.astype(int)]
    is_context = (rng.random(n) < 0.15) if context else None
    if is_context is not None:
        behavior[is_context], reward[is_context] = "view", 0.0
    # slates: runs of 1-3 rows share a step (non-decreasing within a user)
    step = None
    if steps:
        new = np.r_[True, user[1:] != user[:-1]] | (rng.random(n) < 0.5)
        step = (np.cumsum(new) - 1).astype(np.int32)
    returns = discounted_returns(reward, session, 0.99)
    return Dataset(
        step=step,
        context=is_context,
        user=user,
        item=item,
        behavior=behavior,
        reward=reward,
        ts=ts,
        session=session,
        is_test=is_test,
        returns=returns,
        n_users=n_users,
        n_items=n_items,
    )


def pv_dataset(user: np.ndarray, item: np.ndarray, is_test: np.ndarray, n_items: int) -> Dataset:
    """A hand-written log: every event a page view with reward and return 1, one session per user, ts = row."""
    n = len(user)
    return Dataset(
        user=np.asarray(user, dtype=np.int32),
        item=np.asarray(item, dtype=np.int32),
        behavior=np.array(["pv"] * n, dtype=object),
        reward=np.ones(n, np.float32),
        ts=np.arange(n, dtype=np.int64),
        session=np.asarray(user, dtype=np.int32).copy(),
        is_test=np.asarray(is_test, dtype=bool),
        returns=np.ones(n, np.float32),
        n_users=int(np.max(user)) + 1,
        n_items=n_items,
    )
