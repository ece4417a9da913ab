"""Small datasets for the agent's tests, built in memory (no `topkrec prepare` needed).

``synth_dataset`` turns ``topkrec.data.synth`` logs into a ``Dataset`` with a minimal NumPy version of
the DESIGN §1 preparation (dedupe, chronological 80/20 split, ids by train frequency, 1 h sessions,
rewards pv 1 / cart 2 / fav 2 / buy 3, γ 0.99 returns). The real `prepare` is tested by the data area.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from topkrec.data.dataset import Dataset, discounted_returns

REWARDS = {"pv": 1.0, "cart": 2.0, "fav": 2.0, "buy": 3.0}


def synth_dataset(n_users: int = 300, n_items: int = 400, seed: int = 0) -> Dataset:
    from topkrec.data.synth import BEHAVIORS, SynthConfig, generate

    logs = generate(SynthConfig(n_users=n_users, n_items=n_items, seed=seed, max_events=60))
    u_raw, item_raw, beh, ts = logs.ev_user, logs.ev_item, logs.ev_behavior, logs.ev_time
    order = np.lexsort((np.arange(len(ts)), ts, u_raw))
    u_raw, item_raw, beh, ts = u_raw[order], item_raw[order], beh[order], ts[order]
    key = np.stack([u_raw, item_raw, beh.astype(np.int64)], axis=1)
    _, first = np.unique(key, axis=0, return_index=True)
    keep = np.sort(first)
    u_raw, item_raw, beh, ts = u_raw[keep], item_raw[keep], beh[keep], ts[keep]
    users, user = np.unique(u_raw, return_inverse=True)
    n = len(user)
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    lengths = np.diff(np.r_[starts, n])
    pos = np.arange(n) - np.repeat(starts, lengths)
    ln = np.repeat(lengths, lengths)
    n_test = np.where(ln > 3, np.ceil(0.2 * ln).astype(int), 0)
    is_test = pos >= ln - n_test
    train_items, counts = np.unique(item_raw[~is_test], return_counts=True)
    rank = np.argsort(-counts, kind="stable")
    ordered = train_items[rank]
    lookup = {int(r): i for i, r in enumerate(ordered)}
    n_cat = len(ordered)
    item = np.array([lookup.get(int(r), n_cat) for r in item_raw], dtype=np.int32)
    gap = np.r_[True, (user[1:] != user[:-1]) | (np.diff(ts) > 3600)]
    session = (np.cumsum(gap) - 1).astype(np.int32)
    behavior = np.array([BEHAVIORS[b] for b in beh], dtype=object)
    reward = np.array([REWARDS[b] for b in behavior], dtype=np.float32)
    return Dataset(
        user=user.astype(np.int32),
        item=item,
        behavior=behavior,
        reward=reward,
        ts=ts.astype(np.int64),
        session=session,
        is_test=is_test,
        returns=discounted_returns(reward, session, 0.99),
        n_users=len(users),
        n_items=n_cat,
        user_raw=users.astype(str),
        item_raw=ordered.astype(str),
        meta={"gamma": 0.99},
    )


def train_recording_losses(
    dataset: Dataset, out: Any, *args: Any, **kwargs: Any
) -> tuple[Any, list[tuple[float, float]]]:
    """``train_agent(dataset, out, *args, **kwargs)`` and the (policy, behavior) loss of every step."""
    from topkrec.train import train_agent

    losses: list[tuple[float, float]] = []
    result = train_agent(
        dataset, out, *args, on_step=lambda s, o: losses.append((o.policy_loss, o.behavior_loss)), **kwargs
    )
    return result, losses
