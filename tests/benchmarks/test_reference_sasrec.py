"""benchmarks/reference_sasrec.py: its splits, its training windows, and that it learns a planted sequence."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from support.paths import load_script
from topkrec.data.dataset import Dataset, discounted_returns

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "reference_sasrec.py"


@pytest.fixture(scope="module")
def sasrec() -> ModuleType:
    return load_script(SCRIPT)


def cycle_dataset(n_users: int = 60, length: int = 30, n_items: int = 12, test_size: float = 0.2) -> Dataset:
    """Each user walks the cycle 0 → 1 → … → n_items−1 → 0 from a random start: the next item is
    determined by the last one, so a sequence model can reach ndcg 1 while popularity is near uniform."""
    rng = np.random.default_rng(0)
    start = rng.integers(0, n_items, n_users)
    user = np.repeat(np.arange(n_users), length).astype(np.int32)
    item = ((start[:, None] + np.arange(length)[None, :]) % n_items).reshape(-1).astype(np.int32)
    n_train = round((1 - test_size) * length)
    is_test = np.tile(np.arange(length) >= n_train, n_users)
    reward = np.ones(user.size, dtype=np.float32)
    session = user.copy()
    return Dataset(
        user=user,
        item=item,
        behavior=np.array(["pv"] * user.size, dtype=object),
        reward=reward,
        ts=np.tile(np.arange(length, dtype=np.int64), n_users),
        session=session,
        is_test=is_test,
        returns=discounted_returns(reward, session, 0.99),
        n_users=n_users,
        n_items=n_items,
        meta={"gamma": 0.99},
    )


def test_validation_mask_takes_each_users_train_tail_by_the_prepare_rule(sasrec: ModuleType) -> None:
    # user 0: 10 train + 2 test events; user 1: 3 train events (too few for a validation part).
    ds = cycle_dataset(n_users=1, length=12)
    ds.user = np.r_[np.zeros(12), np.ones(3)].astype(np.int32)
    ds.is_test = np.r_[np.arange(12) >= 10, np.zeros(3, dtype=bool)]
    ds.n_users = 2
    val = sasrec.validation_mask(ds, 0.2)
    assert np.flatnonzero(val).tolist() == [8, 9]  # round(0.8 · 10) = 8 kept for fitting
    assert not (val & ds.is_test).any()
    fit = sasrec.fit_mask(ds, val)
    assert np.flatnonzero(fit).tolist() == [*range(8), 12, 13, 14]
    assert not sasrec.validation_mask(ds, 0.0).any()


def test_windows_make_every_fitted_event_but_the_first_a_target_once(sasrec: ModuleType) -> None:
    ds = cycle_dataset(n_users=3, length=23)
    fit = ~ds.is_test
    target_pos = sasrec.window_positions(ds, fit, 5)
    targets = target_pos[target_pos >= 0].numpy()
    first_of_user = np.r_[0, np.flatnonzero(np.diff(ds.user)) + 1]
    expected = sorted(set(np.flatnonzero(fit)) - set(first_of_user))
    assert sorted(targets.tolist()) == expected
    inputs, items = sasrec.train_windows(ds, fit, 5)
    real = target_pos >= 0
    item = torch.as_tensor(ds.item, dtype=torch.int64)
    assert torch.equal(inputs[real], item[target_pos[real] - 1])  # the input of target p is the item at p − 1
    assert torch.equal(items[real], item[target_pos[real]])
    assert (inputs[~real] == ds.n_items).all()
    assert bool(real[:, -1].all())  # windows are cut from the end: only a user's first window is padded


def test_sasrec_learns_a_planted_cycle_through_topkrecs_evaluator(sasrec: ModuleType, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    ds = cycle_dataset()
    ds.save(tmp_path)
    config = sasrec.SASRecConfig(max_len=8, dim=16, blocks=1, dropout=0.0, lr=1e-2, batch_size=16, max_epochs=40)
    result = sasrec.run_sasrec(tmp_path, config)
    assert result.metrics["ndcg@10"] > 0.9  # popularity is about 0.4 here: every item is equally frequent
    assert result.metrics["mrr"] > 0.8
    assert 1 <= result.best_epoch <= result.epochs_run <= 40
    assert result.train_seconds > 0
