"""A dataset with a known answer: users of group g consume only items of group g (planted blocks).

Used by the learning tests and the benchmark: a two-tower model that works must put every user nearest to
its own group's items and reach an eval AUC near 1.
"""

from __future__ import annotations

import numpy as np

from topkrec.data.dataset import Dataset


def planted_block_dataset(
    n_groups: int = 8,
    users_per_group: int = 25,
    items_per_group: int = 16,
    events_per_user: int = 16,
    test_size: float = 0.2,
    with_features: bool = True,
    seed: int = 0,
) -> Dataset:
    """Users ``g*users_per_group …`` and items ``g*items_per_group …`` form group g; each user draws
    ``events_per_user`` distinct items of its group; the last ``test_size`` of each user's events are test.

    Side features, when asked for, are noise (uniform codes independent of the group), so the towers must
    learn the structure from the ids. With the defaults every user consumes its whole group, so a user's
    test items are group items it never saw in train and every eval negative lies in another group: a
    perfect model reaches AUC 1.
    """
    if events_per_user > items_per_group:
        raise ValueError("events_per_user must be ≤ items_per_group (items are distinct per user)")
    rng = np.random.default_rng(seed)
    n_users, n_items = n_groups * users_per_group, n_groups * items_per_group
    group_of_user = np.arange(n_users) // users_per_group
    # distinct items per user: the first events_per_user of a random permutation of its group's items
    local = np.argsort(rng.random((n_users, items_per_group)), axis=1)[:, :events_per_user]
    item = (group_of_user[:, None] * items_per_group + local).astype(np.int32).ravel()
    user = np.repeat(np.arange(n_users, dtype=np.int32), events_per_user)
    position = np.tile(np.arange(events_per_user), n_users)
    is_test = position >= int(round(events_per_user * (1 - test_size)))
    n = user.shape[0]
    user_features: dict[str, np.ndarray] = {}
    item_features: dict[str, np.ndarray] = {}
    if with_features:
        user_features = {"sex": rng.integers(1, 3, n_users).astype(np.int32)}
        item_features = {"category": rng.integers(1, 6, n_items).astype(np.int32)}
    return Dataset(
        user=user,
        item=item,
        behavior=np.full(n, "pv", dtype=object),
        reward=np.ones(n, np.float32),
        ts=(1_600_000_000 + position * 60).astype(np.int64),
        session=user.astype(np.int32),
        is_test=is_test,
        returns=np.ones(n, np.float32),
        n_users=n_users,
        n_items=n_items,
        user_features=user_features,
        item_features=item_features,
        meta={"source": "planted_block_dataset", "seed": seed},
    )
