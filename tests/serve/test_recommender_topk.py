"""The run-maxima top-K of deterministic serving (``_topk_by_runs``) gives exactly ``torch.topk``'s answer.

The contract suite's catalogues are too small to take that path, so these tests use 20 000 items.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import topkrec.serve.recommender as recommender_module
from topkrec.serve.recommender import _RUN, Recommender, _topk_by_runs
from topkrec.serve.synthetic import make_random_model


@pytest.mark.parametrize("n", [_RUN * 420, _RUN * 420 + 37, 60_000])
@pytest.mark.parametrize("k", [1, 10, 50])
def test_same_as_torch_topk_on_random_rows(n: int, k: int) -> None:
    g = torch.Generator().manual_seed(n + k)
    logits = torch.randn(33, n, generator=g)
    # Mask a spread of items, and most of one row, as seen-item exclusion does.
    logits[torch.rand(33, n, generator=g) < 0.05] = -math.inf
    logits[3, : n - k // 2] = -math.inf  # fewer finite items than k in row 3: −inf ties must not matter
    got = _topk_by_runs(logits, k)
    assert got is not None
    want = torch.topk(logits, k, dim=1)
    finite = torch.isfinite(want.values)
    assert torch.equal(got[0], want.values)
    assert torch.equal(torch.where(finite, got[1], -1), torch.where(finite, want.indices, -1))
    # Where the best items sit in the tail (n mod _RUN items) or all in one run.
    logits[5, -3:] = 100.0 + torch.arange(3.0)
    logits[6, 256 : 256 + k + 1] = 50.0 + torch.arange(k + 1.0)
    got = _topk_by_runs(logits, k)
    assert got is not None
    want = torch.topk(logits, k, dim=1)
    assert torch.equal(got[0][5:7], want.values[5:7])
    assert torch.equal(got[1][5:7], want.indices[5:7])


def test_ties_nan_inf_and_small_catalogues_defer_to_torch_topk() -> None:
    base = torch.randn(4, 20_000, generator=torch.Generator().manual_seed(0))
    for value_row, cols in [(9.0, [10, 7_000]), (9.0, [10, 11])]:  # a tie inside the slate (two runs / one run)
        logits = base.clone()
        logits[1, cols] = value_row
        assert _topk_by_runs(logits, 5) is None
    logits = base.clone()
    top = torch.topk(logits[2], 6).values
    logits[2, torch.argmax(logits[2])] = top[4]  # the 5th value now also at another item: tie at the k-th place
    assert _topk_by_runs(logits, 4) is None
    logits = base.clone()
    logits[2, 100] = top[5]  # tie between the (k+1)-th values only: the top-K is still unique
    got, want = _topk_by_runs(logits, 5), torch.topk(logits, 5, dim=1)
    assert got is not None and torch.equal(got[1], want.indices)
    for bad in (math.nan, math.inf):
        logits = base.clone()
        logits[0, 5] = bad
        assert _topk_by_runs(logits, 10) is None
    assert _topk_by_runs(torch.randn(3, 8 * 11 * _RUN - 1), 10) is None  # too few runs
    assert _topk_by_runs(torch.randn(3, 4 * _RUN), 10) is None


@pytest.fixture(scope="module")
def big_rec(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    out = tmp_path_factory.mktemp("model") / "big"
    make_random_model(out, n_users=300, n_items=20_000, hist_num=5, seed=11)
    return Recommender.load(out, device="cpu")


def _full_path(rec: Recommender, monkeypatch: pytest.MonkeyPatch, *args: object, **kwargs: object) -> list:
    with monkeypatch.context() as m:
        # The previous code path: whole-matrix addmm in 64-row chunks, torch.topk over every item.
        m.setattr(recommender_module, "_topk_by_runs", lambda logits, k, run_max=None: None)
        m.setattr(Recommender, "_blocked_scoring_applies", lambda self, k, rows, prep: False)
        return rec.recommend_batch(*args, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("k", [1, 10, 100])
def test_recommend_batch_identical_to_full_topk(big_rec: Recommender, monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    users = [f"u{i}" for i in range(300)] + ["nobody", None]
    histories = [None] * 300 + [["i1", "i2", "zzz"], ["i5"]]
    for exclude_seen in (True, False):
        fast = big_rec.recommend_batch(users, histories, k=k, exclude_seen=exclude_seen)
        full = _full_path(big_rec, monkeypatch, users, histories, k=k, exclude_seen=exclude_seen)
        for a, b in zip(fast, full, strict=True):
            assert a == b


def test_blocked_scoring_with_temperature_identical_to_full_topk(
    big_rec: Recommender, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = big_rec.agent.module.policy_head
    assert big_rec._blocked_scoring_applies(10, 100, big_rec._prepare(["u1"], [None], False))
    users = [f"u{i}" for i in range(0, 300, 3)]
    with monkeypatch.context() as m:
        m.setattr(head, "temperature", 0.7)
        fast = big_rec.recommend_batch(users, k=10)
        assert fast == _full_path(big_rec, monkeypatch, users, k=10)
    assert fast != big_rec.recommend_batch(users, k=10)  # the temperature was applied (scores change)


def test_recommend_batch_with_tied_items_identical_to_full_topk(
    big_rec: Recommender, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = big_rec.agent.module.policy_head
    with torch.no_grad():
        weight, bias = head.weight.clone(), head.bias.clone()
        try:
            # Copies of each user's favourite item elsewhere in the catalogue: exact ties at the top.
            best = big_rec.recommend_batch([f"u{i}" for i in range(20)], k=1)
            for j, r in enumerate(best):
                src = int(r.items[0][1:])
                for dst in (src + 1 if src + 1 < 20_000 else src - 1, (src + 9_999) % 20_000, 19_990 - j):
                    head.weight[dst] = head.weight[src]
                    head.bias[dst] = head.bias[src]
            users = [f"u{i}" for i in range(40)]
            fast = big_rec.recommend_batch(users, k=10, exclude_seen=False)
            full = _full_path(big_rec, monkeypatch, users, k=10, exclude_seen=False)
            assert fast == full
            assert any(len(set(r.scores)) < len(r.scores) for r in fast)  # the ties are there
        finally:
            head.weight.copy_(weight)
            head.bias.copy_(bias)


def test_scores_are_the_models_logits(big_rec: Recommender) -> None:
    r = big_rec.recommend(user="u7", k=10)
    hist = np.asarray(big_rec.histories.of(7), dtype=np.int64)
    state = np.full((1, big_rec.hist_num), big_rec.pad_index, dtype=np.int64)
    tail = hist[-big_rec.hist_num :]
    state[0, big_rec.hist_num - tail.size :] = tail
    logits = big_rec.logits(np.array([7]), state)[0].numpy().astype(np.float64)
    logits[hist] = -np.inf
    order = np.argsort(-logits, kind="stable")[:10]
    assert r.items == [big_rec.item_raw[j] for j in order]
    assert r.scores == logits[order].tolist()


@pytest.mark.parametrize("mode", ["add", "replace"])
def test_blocked_scoring_with_repeat_biases_identical_to_full_topk(
    big_rec: Recommender, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """The re-engagement biases are applied inside each block: the same slates as the whole-matrix path."""
    module = big_rec.agent.module
    monkeypatch.setattr(module, "config", dataclasses.replace(module.config, repeat_mode=mode))
    head = module.policy_head
    table = getattr(head, "repeat", None)
    assert table is not None  # the default model has them
    users = [f"u{i}" for i in range(0, 300, 2)]
    old = table.detach().clone()
    try:
        with torch.no_grad():
            table.normal_(0.0, 0.2)  # ×30: several logits, enough to lift seen items into the top 10
        assert big_rec._blocked_scoring_applies(10, len(users), big_rec._prepare(users, [None] * len(users), False))
        fast = big_rec.recommend_batch(users, k=10, exclude_seen=False)
        assert fast == _full_path(big_rec, monkeypatch, users, k=10, exclude_seen=False)
        seen = {int(i) for i in big_rec.histories.of(0)}
        assert any(int(item[1:]) in seen for item in fast[0].items)  # the biases matter here
    finally:
        with torch.no_grad():
            table.copy_(old)
