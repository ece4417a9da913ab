"""Evaluation metrics against hand-computed values, and the evaluation of a model dir end to end."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from support.agent_data import synth_dataset
from support.datasets import pv_dataset
from topkrec.data.dataset import Dataset
from topkrec.data.transitions import TransitionBatch, build_transitions
from topkrec.errors import ArtifactError, TopkrecError
from topkrec.evaluate import metrics
from topkrec.evaluate.evaluator import EvalConfig, evaluate_scorer, popularity_scorer, recent_scorer
from topkrec.evaluate.metrics import (
    item_ranks,
    ndcg_all_at_k,
    ndcg_from_rank,
    recall_from_rank,
    reciprocal_rank,
    target_rank,
    topk_indices,
)
from topkrec.evaluate.report import evaluate_model_dirs
from topkrec.policy.config import AgentConfig, TrainConfig
from topkrec.train import train_agent


def test_rank_ndcg_recall_mrr_by_hand() -> None:
    scores = torch.tensor(
        [
            [0.1, 0.9, 0.5, 0.3],  # target 2: one higher (item 1) → rank 1
            [0.5, 0.5, 0.5, 0.1],  # target 2: ties broken by index → rank 2
            [0.9, 0.1, 0.2, 0.3],  # target 0 → rank 0
            [0.9, 0.1, 0.2, 0.3],  # target 1 → rank 3
            [0.9, 0.1, 0.2, 0.3],  # target 4 = OOV → −1
        ]
    )
    target = torch.tensor([2, 2, 0, 1, 4])
    rank = target_rank(scores, target)
    assert rank.tolist() == [1, 2, 0, 3, -1]
    k = 3
    ndcg = ndcg_from_rank(rank, k)
    expected = [1 / math.log2(3), 1 / math.log2(4), 1.0, 0.0, 0.0]
    assert ndcg.tolist() == pytest.approx(expected)
    assert recall_from_rank(rank, k).tolist() == [1, 1, 1, 0, 0]
    assert reciprocal_rank(rank).tolist() == pytest.approx([1 / 2, 1 / 3, 1.0, 1 / 4, 0.0])


def _rank_by_definition(scores: torch.Tensor, target: torch.Tensor) -> list[int]:
    out = []
    for row, t in zip(scores.tolist(), target.tolist(), strict=True):
        if not 0 <= t < len(row):
            out.append(-1)
            continue
        out.append(sum(v > row[t] or (v == row[t] and j < t) for j, v in enumerate(row)))
    return out


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 21])
def test_target_rank_in_row_chunks_matches_the_definition(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """Chunked rows and the tie pass on tied rows only: the same ranks as counting by hand, ties included."""
    monkeypatch.setattr(metrics, "RANK_CHUNK_ELEMENTS", chunk)
    gen = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 4, (37, 11), generator=gen).float()  # many ties
    scores[::5] = torch.randn(8, 11, generator=gen)  # and rows without any
    target = torch.randint(-1, 12, (37,), generator=gen)  # −1 and 11 are outside [0, 11)
    assert target_rank(scores, target).tolist() == _rank_by_definition(scores, target)


def test_item_ranks_equal_target_rank_of_a_shared_score_row() -> None:
    """Popularity's ranks from one sort: what target_rank gives for every row scored by the same vector."""
    gen = torch.Generator().manual_seed(4)
    pop = torch.randint(0, 5, (23,), generator=gen).float()
    every = torch.arange(23)
    assert item_ranks(pop).tolist() == target_rank(pop[None, :].expand(23, -1), every).tolist()


def test_shared_target_rank_equals_target_rank_out_of_range_targets_included() -> None:
    gen = torch.Generator().manual_seed(5)
    pop = torch.randint(0, 5, (23,), generator=gen).float()
    target = torch.randint(-2, 26, (40,), generator=gen)  # some outside [0, 23)
    assert ((target < 0) | (target >= 23)).any()
    want = target_rank(pop[None, :].expand(40, -1), target)
    assert metrics.shared_target_rank(item_ranks(pop), target).tolist() == want.tolist()


def test_ndcg_all_by_hand() -> None:
    top = torch.tensor([[5, 6, 7], [1, 2, 3], [1, 2, 3]])
    relevant = torch.tensor([[False, True, True], [True, False, False], [False, False, False]])
    n_rel = torch.tensor([2, 5, 0])
    got = ndcg_all_at_k(top, relevant, n_rel)
    d = [1 / math.log2(i + 2) for i in range(3)]
    assert got.tolist() == pytest.approx([(d[1] + d[2]) / (d[0] + d[1]), d[0] / sum(d), 0.0])


def tiny_dataset() -> Dataset:
    """Two users; items 0..3 (0 most frequent in train); user 0 test items [1, 4 (OOV)], user 1 test [0]."""
    user = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1], dtype=np.int32)
    item = np.array([0, 1, 2, 1, 4, 0, 0, 3, 2, 0], dtype=np.int32)
    is_test = np.array([0, 0, 0, 1, 1, 0, 0, 0, 0, 1], dtype=bool)
    return pv_dataset(user, item, is_test, n_items=4)


def test_popularity_metrics_by_hand() -> None:
    ds = tiny_dataset()
    counts = torch.as_tensor(ds.train_item_counts(), dtype=torch.float64)
    assert counts.tolist() == [3, 1, 2, 1]  # popularity order 0, 2, 1, 3 (ties by index)
    test = build_transitions(ds, "test", 2)
    first = test.first_per_user()
    blp = torch.log(torch.full((len(test),), 0.25))
    m = evaluate_scorer(popularity_scorer(counts), test, first, counts, blp, EvalConfig(k=2, n_boot=20))
    # test targets: 1 (rank 2), 4 (OOV), 0 (rank 0)
    assert m.ndcg == pytest.approx((0 + 0 + 1) / 3)
    assert m.recall == pytest.approx(1 / 3)
    assert m.mrr == pytest.approx((1 / 3 + 0 + 1) / 3)
    # ndcg_all: top-2 = [0, 2]; user 0 relevant {1} → 0; user 1 relevant {0} → 1
    assert m.ndcg_all == pytest.approx(0.5) and m.n_users == 2
    assert m.coverage == pytest.approx(2 / 4)
    assert m.tail_share == pytest.approx(0.5)  # head = 1 item (item 0): half of the recommendations
    # OPE: π_pop(a) = count/7, β = 1/4, reward 1, OOV left out: IPS = mean(w) over targets 1 and 0
    w = np.array([1 / 7, 3 / 7]) / 0.25
    assert m.ips == pytest.approx(w.mean())
    assert m.snips == pytest.approx(1.0)
    assert m.ess == pytest.approx(w.sum() ** 2 / (w**2).sum())


def test_recent_baseline_by_hand() -> None:
    """Recently seen first: the history's items newest first, then popularity; OOV and pad tokens rank nothing."""
    ds = tiny_dataset()
    counts = torch.as_tensor(ds.train_item_counts(), dtype=torch.float64)  # [3, 1, 2, 1]
    test = build_transitions(ds, "test", 2)
    first = test.first_per_user()
    scores = recent_scorer(counts)(test.batch(torch.arange(len(test))))
    above = math.log(3) + 1
    # histories (oldest first): user 0 [1, 2] then [2, 1]; user 1 [3, 2]
    assert scores[0].tolist() == pytest.approx([math.log(3), above, above + 1, 0.0])
    order = torch.argsort(scores, dim=1, descending=True, stable=True).tolist()
    assert order == [[2, 1, 0, 3], [1, 2, 0, 3], [2, 3, 0, 1]]
    oov = dataclasses.replace(test.batch(torch.arange(1)), history=torch.tensor([[4, 4]]))  # OOV/pad tokens
    assert recent_scorer(counts)(oov).tolist() == [pytest.approx([math.log(3), 0.0, math.log(2), 0.0])]
    blp = torch.log(torch.full((len(test),), 0.25))
    m = evaluate_scorer(recent_scorer(counts), test, first, counts, blp, EvalConfig(k=2, n_boot=5))
    # targets: 1 at rank 1 (user 0), 4 OOV, 0 at rank 2 (user 1: its history holds 3 and 2)
    assert m.ndcg == pytest.approx(1 / math.log2(3) / 3)
    assert m.recall == pytest.approx(1 / 3) and m.mrr == pytest.approx((1 / 2 + 0 + 1 / 3) / 3)
    assert m.ndcg_all == pytest.approx(1 / math.log2(3) / 2)  # first states [1, 2] → top [2, 1] ∋ 1; [3, 2] ∌ 0


def test_reward_weighted_ndcg_and_ndcg_by_event_by_hand() -> None:
    ds = tiny_dataset()
    counts = torch.as_tensor(ds.train_item_counts(), dtype=torch.float64)
    test = build_transitions(ds, "test", 2)
    test.reward[test.rows] = torch.tensor([1.0, 1.0, 2.0])  # targets 1 (ndcg@2 0), 4 (OOV: 0), 0 (ndcg 1)
    blp = torch.log(torch.full((len(test),), 0.25))
    behavior = np.array(["pv", "cart", "pv"])
    m = evaluate_scorer(
        popularity_scorer(counts), test, test.first_per_user(), counts, blp, EvalConfig(k=2, n_boot=5),
        row_behavior=behavior,
    )  # fmt: skip
    assert m.ndcg == pytest.approx(1 / 3)
    assert m.reward_ndcg == pytest.approx((1 * 0 + 1 * 0 + 2 * 1) / 4)  # the hit is worth 2 of the 4 reward units
    assert m.ndcg_by_event == {"cart": {"ndcg@2": 0.0, "n_events": 1}, "pv": {"ndcg@2": 0.5, "n_events": 2}}
    doc = m.as_dict()
    assert doc["reward_ndcg@2"] == pytest.approx(0.5) and doc["ndcg_by_event"]["pv"]["n_events"] == 2
    test.reward[test.rows] = 0.0  # no positive reward: no reward-weighted figure (None in the JSON)
    m = evaluate_scorer(popularity_scorer(counts), test, test.first_per_user(), counts, blp, EvalConfig(k=2, n_boot=5))
    assert math.isnan(m.reward_ndcg) and m.as_dict()["reward_ndcg@2"] is None and m.ndcg_by_event == {}


def _reference_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Top k per row by (score descending, item index ascending), by NumPy's lexsort."""
    index = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    return np.lexsort((index, -scores), axis=1)[:, :k]


@pytest.mark.parametrize("n_values", [1, 2, 3, 50])
def test_topk_and_rank_share_one_tie_convention_on_integer_scores(n_values: int) -> None:
    g = torch.Generator().manual_seed(n_values)
    scores = torch.randint(0, n_values, (300, 40), generator=g).float()
    for k in (1, 5, 40):
        top = topk_indices(scores, k)
        assert np.array_equal(top.numpy(), _reference_topk(scores.numpy(), k))
        # "rank < k" ⇔ "in the top-k list", for every (state, item)
        in_list = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top, True)
        for item in range(scores.shape[1]):
            rank = target_rank(scores, torch.full((scores.shape[0],), item))
            assert torch.equal(rank < k, in_list[:, item])
            # and the rank is the position in the full list
            pos = (top == item).nonzero()
            assert torch.equal(rank[pos[:, 0]], pos[:, 1])


def test_all_equal_scores_recommend_the_lowest_indices_in_order() -> None:
    scores = torch.zeros(3, 1000)  # torch.topk returns these ties in no particular order on CPU
    assert topk_indices(scores, 10).tolist() == [list(range(10))] * 3


def test_coverage_tail_share_ndcg_all_follow_the_tie_convention() -> None:
    ds = tiny_dataset()
    counts = torch.as_tensor(ds.train_item_counts(), dtype=torch.float64)  # [3, 1, 2, 1]: items 1 and 3 tie
    test = build_transitions(ds, "test", 2)
    first = test.first_per_user()
    blp = torch.log(torch.full((len(test),), 0.25))
    m = evaluate_scorer(popularity_scorer(counts), test, first, counts, blp, EvalConfig(k=3, n_boot=20))
    # top-3 = [0, 2, 1] (1 before 3 by index) for every state
    assert m.coverage == pytest.approx(3 / 4)
    assert m.tail_share == pytest.approx(2 / 3)  # head = item 0
    # user 0 relevant {1} at position 2 → 1/log2(4) = 0.5; user 1 relevant {0} at position 0 → 1
    assert m.ndcg_all == pytest.approx(0.75)

    def flat(batch: TransitionBatch) -> torch.Tensor:
        return torch.zeros(batch.user.shape[0], 4)  # every item ties: the list is items 0, 1, 2

    m = evaluate_scorer(flat, test, first, counts, blp, EvalConfig(k=3, n_boot=20))
    assert m.coverage == pytest.approx(3 / 4) and m.tail_share == pytest.approx(2 / 3)
    assert m.ndcg_all == pytest.approx((1 / math.log2(3) + 1.0) / 2)
    assert m.recall == pytest.approx(2 / 3)  # targets 1 (rank 1), 4 (OOV), 0 (rank 0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scores_are_refused_naming_the_model(bad: float) -> None:
    ds = tiny_dataset()
    counts = torch.as_tensor(ds.train_item_counts(), dtype=torch.float64)
    test = build_transitions(ds, "test", 2)
    blp = torch.log(torch.full((len(test),), 0.25))

    def broken(batch: TransitionBatch) -> torch.Tensor:
        out = torch.zeros(batch.user.shape[0], 4)
        out[:, 2] = bad
        return out

    with pytest.raises(TopkrecError, match="model 'diverged'.*(NaN|infinite) scores"):
        evaluate_scorer(broken, test, test.first_per_user(), counts, blp, EvalConfig(k=2, n_boot=5), name="diverged")


def test_metrics_json_has_no_nan() -> None:
    import json

    from topkrec.evaluate.evaluator import ModelMetrics

    m = ModelMetrics(
        k=5, ndcg=0.1, recall=0.2, mrr=0.1, ndcg_all=0.0, coverage=0.5, tail_share=0.5,
        ips=math.nan, capped_ips=math.nan, snips=math.nan, ess=0.0, n_events=3, n_users=1,
    )  # fmt: skip
    doc = m.as_dict()
    assert doc["ips"] is None and doc["snips"] is None and doc["capped_ips"] is None and doc["ess"] == 0.0
    json.dumps(doc, allow_nan=False)


def test_evaluate_model_dir_document_and_mismatch(tmp_path) -> None:
    ds = synth_dataset(n_users=40, n_items=60, seed=1)
    cfg = TrainConfig(device="cpu", lr=3e-3, batch_size=64, epochs=1, correction="is")
    train_agent(ds, tmp_path / "m", AgentConfig(ds.n_users, ds.n_items, embed_size=8, hidden=16), cfg)
    doc = evaluate_model_dirs({None: tmp_path / "m"}, ds, k=5, out=tmp_path / "metrics.json", plots_dir=tmp_path)
    assert doc["k"] == 5 and set(doc["models"]) == {"is", "popularity", "recent", "behavior"}
    for m in doc["models"].values():
        for key in ("ndcg@5", "recall@5", "mrr", "ndcg_all@5", "coverage", "tail_share", "ips", "snips", "ess"):
            assert key in m and np.isfinite(m[key])
        assert 0.0 <= m["reward_ndcg@5"] <= 1.0
        by_event = m["ndcg_by_event"]  # one entry per behaviour of the test events, counts adding up
        assert sum(e["n_events"] for e in by_event.values()) == m["n_events"]
        assert set(by_event) <= set(np.asarray(ds.behavior).astype(str))
    # β̂ evaluated against itself: every weight is 1, so IPS = SNIPS = the mean logged reward, ESS = n
    logged = ds.reward[ds.is_test & (ds.item < ds.n_items)]
    beh = doc["models"]["behavior"]
    assert beh["ips"] == pytest.approx(logged.mean(), rel=1e-5) and beh["snips"] == pytest.approx(logged.mean())
    assert beh["ess"] == pytest.approx(len(logged), rel=1e-5)
    assert (tmp_path / "metrics.json").exists()
    assert (tmp_path / "training_curves.png").stat().st_size > 0 and (tmp_path / "weight_histogram.png").exists()
    other = synth_dataset(n_users=41, n_items=60, seed=2)
    with pytest.raises(ArtifactError, match="trained on"):
        evaluate_model_dirs({None: tmp_path / "m"}, other, k=5)


def test_chunk_rows_defaults_by_device_and_rejects_bad_sizes() -> None:
    from topkrec.evaluate.evaluator import CPU_CHUNK_ELEMENTS, EvalConfig, chunk_rows, default_chunk_elements

    assert default_chunk_elements("cpu") == CPU_CHUNK_ELEMENTS == 1 << 22
    assert chunk_rows(EvalConfig(), 160_000, "cpu") == (1 << 22) // 160_000 == 26
    assert chunk_rows(EvalConfig(chunk_elements=1 << 32), 160_000, "cpu") == 4096  # clipped to 4096 rows
    assert chunk_rows(EvalConfig(chunk_elements=10), 160_000, "cpu") == 1  # at least one row
    with pytest.raises(TopkrecError):
        chunk_rows(EvalConfig(chunk_elements=0), 100, "cpu")


@pytest.mark.cuda
def test_cuda_default_chunk_is_larger_and_fits_free_memory() -> None:
    from topkrec.evaluate.evaluator import CPU_CHUNK_ELEMENTS, CUDA_CHUNK_ELEMENTS, default_chunk_elements

    free, _ = torch.cuda.mem_get_info()
    elements = default_chunk_elements("cuda")
    assert CPU_CHUNK_ELEMENTS <= elements <= CUDA_CHUNK_ELEMENTS and elements * 16 <= max(free, 16 * CPU_CHUNK_ELEMENTS)
