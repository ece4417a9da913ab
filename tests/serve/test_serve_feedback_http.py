"""HTTP ``candidates`` and ``history_events`` on a tiny trained model (FastAPI's TestClient, in process).

Each answer is compared with the Python call it stands for (``Recommender.recommend`` / ``recommend_batch``);
candidate sets only ever return candidates (minus seen items); the event types of a given history change the
state, a type outside the model's ``history_events`` keeps the item out of it, and a bad event list is a 400
(unknown name, wrong length) or 422 (wrong JSON type) with an ``error`` line saying what to fix.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from topkrec.data.dataset import Dataset, discounted_returns
from topkrec.policy.config import AgentConfig, TrainConfig
from topkrec.serve import Recommender
from topkrec.serve.app import create_app
from topkrec.train import train_agent

N_USERS, N_ITEMS = 8, 30
REWARD = {"skip": 0.0, "pv": 1.0, "cart": 2.0, "buy": 3.0}


def feedback_dataset(seed: int = 0) -> Dataset:
    """Users with pv/cart/buy rows and zero-reward skips (which are not history under context_engaged)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(6, 14, size=N_USERS)
    user = np.repeat(np.arange(N_USERS), lengths).astype(np.int32)
    n = user.size
    behavior = rng.choice(np.array(list(REWARD), dtype=object), size=n, p=[0.3, 0.4, 0.2, 0.1])
    reward = np.array([REWARD[b] for b in behavior], dtype=np.float32)
    pos = np.concatenate([np.arange(k) for k in lengths])
    return Dataset(
        user=user,
        item=rng.integers(0, N_ITEMS, size=n).astype(np.int32),
        behavior=behavior,
        reward=reward,
        ts=np.arange(n, dtype=np.int64),
        session=user.copy(),
        is_test=pos >= np.repeat(lengths, lengths) - 2,
        returns=discounted_returns(reward, user.copy(), 0.9),
        n_users=N_USERS,
        n_items=N_ITEMS,
        user_raw=np.array([f"u{i}" for i in range(N_USERS)]),
        item_raw=np.array([f"i{i}" for i in range(N_ITEMS)]),
    )


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    out = tmp_path_factory.mktemp("feedback") / "m"
    agent = AgentConfig(embed_size=8, hidden=8, hist_num=4, encoder="gru")
    train_agent(feedback_dataset(), out, agent, TrainConfig(lr=1e-2, max_steps=2, batch_size=16, device="cpu"))
    return Recommender.load(out, device="cpu")


@pytest.fixture(scope="module")
def client(rec: Recommender) -> Iterator[TestClient]:
    with TestClient(create_app(rec)) as c:
        yield c


def as_pairs(body: dict) -> list[tuple[str, float]]:
    return [(x["item"], x["score"]) for x in body["items"]]


def same(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> bool:
    """Same items in the same order, scores equal up to float32 rounding (batched scoring may differ there)."""
    return [i for i, _ in got] == [i for i, _ in want] and [s for _, s in got] == pytest.approx(
        [s for _, s in want], rel=1e-5, abs=1e-6
    )


def test_the_model_knows_the_feedback_types(rec: Recommender, client: TestClient) -> None:
    info = client.get("/model").json()
    assert info["event_types"] == ["buy", "cart", "pv", "skip"]
    assert list(rec.config.history_events) == ["buy", "cart", "pv"]  # skips are never history rows


def test_candidates_restrict_the_slate(rec: Recommender, client: TestClient) -> None:
    seen = {rec.item_raw[i] for i in rec.histories.of(rec.user_index["u3"])}
    allowed = [f"i{j}" for j in range(0, N_ITEMS, 3)] + ["not-an-item"]
    fresh = [c for c in allowed[:-1] if c not in seen]
    r = client.post("/recommend", json={"user": "u3", "k": 20, "candidates": allowed})
    assert r.status_code == 200, r.text
    items = [x["item"] for x in r.json()["items"]]
    # only candidates, never a seen one, the unknown id skipped: every fresh candidate once (k is larger)
    assert sorted(items) == sorted(fresh)
    want = rec.recommend(user="u3", k=20, candidates=allowed)
    assert same(as_pairs(r.json()), list(zip(want.items, want.scores, strict=True)))
    # with exclude_seen off the seen candidates come back too, ranked as the policy ranks them
    r = client.post("/recommend", json={"user": "u3", "k": 3, "candidates": allowed, "exclude_seen": False})
    assert r.status_code == 200 and {x["item"] for x in r.json()["items"]} <= set(allowed)
    assert [x["item"] for x in r.json()["items"]] == rec.recommend(
        user="u3", k=3, candidates=allowed, exclude_seen=False
    ).items
    # the batch endpoint applies one set to every row
    r = client.post("/recommend/batch", json={"users": ["u1", "u5", "nobody"], "k": 2, "candidates": allowed})
    assert r.status_code == 200, r.text
    want_rows = rec.recommend_batch(["u1", "u5", "nobody"], k=2, candidates=allowed)
    for row, want in zip(r.json()["results"], want_rows, strict=True):
        assert {x["item"] for x in row["items"]} <= set(allowed) and [x["item"] for x in row["items"]] == want.items
    r = client.post("/recommend", json={"user": "u1", "candidates": ["nope", "nada"]})
    assert r.status_code == 400 and "none of the 2 candidates is in the model's catalogue" in r.json()["error"]


def test_history_events_shape_the_state(rec: Recommender, client: TestClient) -> None:
    history = ["i4", "i9", "i17"]

    def post(events: list[str] | None, **extra: object) -> dict:
        body: dict[str, object] = {"history": history, "k": 5, **extra}
        if events is not None:
            body["history_events"] = events
        r = client.post("/recommend", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    viewed = post(["pv", "pv", "pv"])
    bought = post(["buy", "cart", "buy"])
    for events, got in ((["pv", "pv", "pv"], viewed), (["buy", "cart", "buy"], bought)):
        want = rec.recommend(history=history, history_events=events, k=5)
        assert same(as_pairs(got), list(zip(want.items, want.scores, strict=True)))
    assert [s for _, s in as_pairs(viewed)] != pytest.approx([s for _, s in as_pairs(bought)])
    # without history_events every item counts as the model's default type (the commonest history type)
    default = rec.agent.raw_config["data"]["default_event"]
    assert default in rec.config.history_events
    assert same(as_pairs(post(None)), as_pairs(post([default] * 3)))
    # a skip is not a history type: that item stays out of the state (but still counts as seen)
    skipped = post(["pv", "skip", "pv"], exclude_seen=False)
    without = client.post("/recommend", json={"history": ["i4", "i17"], "history_events": ["pv", "pv"], "k": 5,
                                              "exclude_seen": False}).json()  # fmt: skip
    assert same(as_pairs(skipped), as_pairs(without))
    assert "i9" not in [x["item"] for x in post(["pv", "skip", "pv"])["items"]]
    # the batch endpoint: history_events aligned with histories, null for the default type
    r = client.post(
        "/recommend/batch",
        json={"histories": [history, history], "history_events": [["buy", "cart", "buy"], None], "k": 5},
    )
    assert r.status_code == 200, r.text
    rows = r.json()["results"]
    assert same(as_pairs(rows[0]), as_pairs(bought)) and same(as_pairs(rows[1]), as_pairs(post(None)))


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        (
            "/recommend",
            {"history": ["i1", "i2"], "history_events": ["pv", "zap"]},
            400,
            "unknown history event 'zap'; the model's event types are: buy, cart, pv, skip",
        ),
        (
            "/recommend",
            {"history": ["i1", "i2"], "history_events": ["pv"]},
            400,
            "history_events has 1 entries for a history of 2 items",
        ),
        ("/recommend", {"history": ["i1"], "history_events": [3]}, 422, "history_events.0"),
        ("/recommend", {"history": ["i1"], "history_events": "pv"}, 422, "history_events"),
        ("/recommend", {"history": ["i1"], "history_events": ["x" * 201]}, 422, "history_events.0"),
        (
            "/recommend/batch",
            {"histories": [["i1"], ["i2"]], "history_events": [["pv"]]},
            400,
            "history_events has 1 rows for 2 requests",
        ),
        (
            "/recommend/batch",
            {"histories": [["i1"], ["i2"]], "history_events": [["pv"], ["zap"]]},
            400,
            "unknown history event 'zap'",
        ),
        ("/recommend", {"user": "u1", "candidates": "i1"}, 422, "candidates"),
    ],
)
def test_bad_feedback_is_a_clear_client_error(
    client: TestClient, path: str, body: dict, status: int, message: str
) -> None:
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
