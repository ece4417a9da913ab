"""Transitions gathered by index vs a plain per-event reference written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from support.datasets import pv_dataset, random_dataset
from topkrec.data.dataset import Dataset
from topkrec.data.transitions import TransitionBatch, build_transitions, user_starts


def reference_transitions(ds: Dataset, split: str, hist_num: int, history: str = "all") -> list[tuple]:
    """One tuple per event of the split, by a loop over users — obviously right, slow.

    A row's history: the user's earlier rows of an earlier step (every row its own step without a step
    column) that the ``history`` setting keeps, the last ``hist_num`` of them, as (item, event code).
    """
    names, codes = ds.event_vocabulary()
    context = ds.context_mask()
    step = ds.step if ds.step is not None else np.arange(ds.n_events)
    out = []
    for u in range(ds.n_users):
        idx = np.flatnonzero(ds.user == u)
        for j, e in enumerate(idx):
            if bool(ds.is_test[e]) != (split == "test") or context[e]:
                continue
            past = []
            for r in idx[:j]:
                engaged = not context[r] and ds.reward[r] != 0
                keep = history == "all" or engaged or (history == "context_engaged" and context[r])
                keep = keep and ds.item[r] != ds.pad_index  # items outside the catalogue never enter a state
                if step[r] < step[e] and keep:
                    past.append((int(ds.item[r]), int(codes[r])))
            past = past[-hist_num:]
            pad = [(ds.pad_index, len(names))] * (hist_num - len(past))
            # independent return: sum over the rest of the session
            same = idx[j:][ds.session[idx[j:]] == ds.session[e]]
            ret = sum(0.99**k * float(ds.reward[x]) for k, x in enumerate(same))
            out.append((u, pad + past, int(ds.item[e]), float(ds.reward[e]), ret))
    return out


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("hist_num", [1, 4, 10])
@pytest.mark.parametrize("history", ["all", "engaged", "context_engaged"])
@pytest.mark.parametrize(("steps", "context"), [(False, False), (True, True)])
def test_transitions_match_reference(split: str, hist_num: int, history: str, steps: bool, context: bool) -> None:
    ds = random_dataset(seed=hist_num, steps=steps, context=context)
    tr = build_transitions(ds, split, hist_num=hist_num, history=history)
    ref = reference_transitions(ds, split, hist_num, history)
    assert len(tr) == len(ref) > 0
    b = tr.batch(torch.arange(len(tr)))
    assert isinstance(b, TransitionBatch) and b.history_event is not None
    assert b.history.shape == (len(ref), hist_num) and b.user.shape == (len(ref),)
    for i, (u, hist, a, r, ret) in enumerate(ref):
        assert int(b.user[i]) == u
        assert list(zip(b.history[i].tolist(), b.history_event[i].tolist(), strict=True)) == hist
        assert int(b.action[i]) == a
        assert float(b.reward[i]) == r
        assert float(b.returns[i]) == pytest.approx(ret, rel=1e-5, abs=1e-5)


def test_test_history_holds_train_tail_and_padding() -> None:
    # user 0: 5 train events then 2 test; user 1: 2 train events then 1 test
    items = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], dtype=np.int32)
    user = np.array([0] * 7 + [1] * 3, dtype=np.int32)
    is_test = np.array([0, 0, 0, 0, 0, 1, 1, 0, 0, 1], dtype=bool)
    ds = pv_dataset(user, items, is_test, n_items=11)
    tr = build_transitions(ds, "test", hist_num=4)
    b = tr.batch(torch.arange(len(tr)))
    assert b.history.tolist() == [[2, 3, 4, 5], [3, 4, 5, 6], [11, 11, 8, 9]]
    assert b.action.tolist() == [6, 7, 10]
    first = tr.first_per_user()
    assert first.batch(torch.arange(len(first))).action.tolist() == [6, 10]
    train = build_transitions(ds, "train", hist_num=4).batch(torch.arange(7))
    assert train.history[0].tolist() == [11, 11, 11, 11]  # first event: all padding
    assert train.history[5].tolist() == [11, 11, 11, 11]  # user 1 does not see user 0's items
    assert train.history[6].tolist() == [11, 11, 11, 8]


def test_batch_to_and_user_starts() -> None:
    assert user_starts(np.array([3, 3, 5, 5, 5, 9])).tolist() == [0, 0, 2, 2, 2, 5]
    ds = random_dataset()
    tr = build_transitions(ds, "train", hist_num=3)
    b = tr.batch(torch.tensor([0, 2])).to("cpu")
    assert b.history.dtype == torch.int64 and b.returns.dtype == torch.float32 and len(b) == 2


def test_rows_of_one_slate_never_see_each_other_and_context_rows_are_never_actions() -> None:
    """Hand case: a slate of 3 (step 1) shown after a context view and a bought item (step 0)."""
    ds = Dataset(
        user=np.zeros(5, np.int32),
        item=np.array([0, 1, 2, 3, 4], np.int32),
        behavior=np.array(["view", "buy", "skip", "pv", "skip"], dtype=object),
        reward=np.array([0, 3, 0, 1, 0], np.float32),
        ts=np.arange(5, dtype=np.int64),
        session=np.zeros(5, np.int32),
        is_test=np.zeros(5, bool),
        returns=np.zeros(5, np.float32),
        n_users=1,
        n_items=5,
        step=np.array([0, 0, 1, 1, 1], np.int32),
        context=np.array([True, False, False, False, False]),
    )
    names, _ = ds.event_vocabulary()
    assert names == ("buy", "pv", "skip", "view")
    tr = build_transitions(ds, "train", hist_num=3, history="context_engaged")
    b = tr.batch(torch.arange(len(tr)))
    assert b.action.tolist() == [1, 2, 3, 4]  # the context view is never an action
    assert b.history_event is not None
    # step 0's buy sees nothing (the view shares its step); the slate's rows all see (view, buy) only
    assert b.history.tolist() == [[5, 5, 5], [5, 0, 1], [5, 0, 1], [5, 0, 1]]
    assert b.history_event.tolist() == [[4, 4, 4], [4, 3, 0], [4, 3, 0], [4, 3, 0]]
    engaged = build_transitions(ds, "train", hist_num=3, history="engaged").batch(torch.arange(4))
    assert engaged.history.tolist()[1] == [5, 5, 1]  # the view is not an engagement
    everything = build_transitions(ds, "train", hist_num=3, history="all").batch(torch.arange(4))
    assert everything.history.tolist()[1] == [5, 0, 1]
