"""Candidate sets and seen-item exclusion in evaluate, recommend and the HTTP app."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from support.agent_data import synth_dataset
from support.datasets import pv_dataset
from topkrec.data.dataset import Dataset
from topkrec.data.transitions import TransitionBatch, build_transitions
from topkrec.evaluate.evaluator import EvalConfig, evaluate_scorer, popularity_scorer
from topkrec.serve import Recommender
from topkrec.serve.app import create_app


def tiny() -> Dataset:
    """user 0: items 0, 1, 0, 2 (the last two are test); user 1: 3, 1 then test 0."""
    user = np.array([0, 0, 0, 0, 1, 1, 1], np.int32)
    item = np.array([0, 1, 0, 2, 3, 1, 0], np.int32)
    return pv_dataset(user, item, np.array([0, 0, 1, 1, 0, 0, 1], bool), n_items=4)


def _scores(values: list[float]):
    def score(b: TransitionBatch) -> torch.Tensor:
        return torch.tensor(values)[None, :].expand(len(b), -1).clone()

    return score


def test_exclude_seen_and_candidates_in_the_metrics() -> None:
    ds = tiny()
    test = build_transitions(ds, "test", 2)
    first = test.first_per_user()
    counts = torch.as_tensor(ds.train_item_counts(), dtype=torch.float64)
    blp = torch.log(torch.full((len(test),), 0.25))
    score = _scores([4.0, 3.0, 2.0, 1.0])  # ranking 0, 1, 2, 3
    plain = evaluate_scorer(score, test, first, counts, blp, EvalConfig(k=1, n_boot=5))
    # targets: 0 (rank 0), 2 (rank 2), 0 (rank 0) → recall@1 = 2/3
    assert plain.recall == pytest.approx(2 / 3)
    seen = evaluate_scorer(score, test, first, counts, blp, EvalConfig(k=1, n_boot=5, exclude_seen=True))
    # seen before each target: {0, 1} → target 0 excluded, ranked after the 2 unseen items; {0, 1, 0} → 2 ranks
    # first; {3, 1} → 0 ranks first
    assert seen.recall == pytest.approx(2 / 3) and seen.mrr == pytest.approx((1 / 3 + 1 + 1) / 3)
    cand = np.array([False, True, True, True])
    only = build_transitions(ds, "test", 2, rows_mask=np.r_[cand[np.minimum(ds.item, 3)]])
    restricted = evaluate_scorer(
        score, only, only.first_per_user(), counts, blp[:1], EvalConfig(k=1, n_boot=5, candidates=cand)
    )
    # only the test event on item 2 is a candidate; among {1, 2, 3} it ranks second
    assert restricted.n_events == 1 and restricted.recall == 0.0 and restricted.mrr == pytest.approx(1 / 2)
    assert restricted.coverage == pytest.approx(1 / 4)  # item 1 only


def test_popularity_with_candidates_never_recommends_outside_them() -> None:
    ds = synth_dataset(n_users=40, n_items=60, seed=1)
    counts = torch.as_tensor(ds.train_item_counts(), dtype=torch.float64)
    cand = np.zeros(ds.n_items, dtype=bool)
    cand[::3] = True
    mask = cand[np.minimum(ds.item, ds.n_items - 1)] & (ds.item < ds.n_items)
    test = build_transitions(ds, "test", 3, rows_mask=mask)
    blp = torch.log(torch.full((len(test),), 0.1))
    m = evaluate_scorer(
        popularity_scorer(counts), test, test.first_per_user(), counts, blp, EvalConfig(candidates=cand)
    )
    assert m.coverage <= cand.mean() + 1e-9 and m.n_events == len(test)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    from topkrec.serve.synthetic import make_random_model

    return make_random_model(tmp_path_factory.mktemp("cand") / "m", n_users=5, n_items=200, hist_num=3, seed=3)


def test_http_and_cli_candidates(model, tmp_path) -> None:
    allowed = [f"i{j}" for j in range(0, 200, 9)]
    with TestClient(create_app(Recommender.load(model, device="cpu"))) as client:
        r = client.post("/recommend", json={"user": "u1", "k": 5, "candidates": allowed})
        assert r.status_code == 200 and {i["item"] for i in r.json()["items"]} <= set(allowed)
        r = client.post("/recommend/batch", json={"users": ["u1", "u2"], "k": 3, "candidates": allowed})
        assert r.status_code == 200 and all(
            {i["item"] for i in row["items"]} <= set(allowed) for row in r.json()["results"]
        )
        r = client.post("/recommend", json={"user": "u1", "k": 5, "candidates": ["nope"]})
        assert r.status_code == 400 and "none of the 1 candidates" in r.json()["error"]
    path = tmp_path / "ads.txt"
    path.write_text("\n".join(allowed) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "topkrec", "recommend", "--model", str(model), "--user", "u2", "--k", "4"]
        + ["--candidates", str(path), "--json", "--device", "cpu"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert {i["item"] for i in json.loads(out.stdout)["items"]} <= set(allowed)
