"""Training and serving build identical states; the step-wise session API; candidate sets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from topkrec.data.dataset import Dataset, discounted_returns
from topkrec.data.transitions import build_transitions
from topkrec.errors import TopkrecError
from topkrec.policy.config import AgentConfig, TrainConfig
from topkrec.serve import Recommender, Sessions
from topkrec.train import train_agent

HIST = 4


def slate_dataset(seed: int = 0, n_users: int = 9, n_items: int = 15) -> Dataset:
    """Users with slates (a step column), skipped impressions, context-only views and OOV test items."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 30, size=n_users)
    user = np.repeat(np.arange(n_users), lengths).astype(np.int32)
    n = user.shape[0]
    new_step = np.r_[True, user[1:] != user[:-1]] | (rng.random(n) < 0.4)
    step = (np.cumsum(new_step) - 1).astype(np.int32)
    behavior = rng.choice(np.array(["skip", "pv", "cart", "view"], dtype=object), size=n, p=[0.4, 0.3, 0.1, 0.2])
    reward = np.select([behavior == "pv", behavior == "cart"], [1.0, 2.0], 0.0).astype(np.float32)
    pos = np.concatenate([np.arange(k) for k in lengths])
    is_test = pos >= np.repeat(lengths, lengths) - 3
    item = rng.integers(0, n_items, size=n).astype(np.int32)
    item[is_test & (rng.random(n) < 0.2)] = n_items  # OOV test items
    session = user.copy()
    return Dataset(
        user=user,
        item=item,
        behavior=behavior,
        reward=reward,
        ts=np.arange(n, dtype=np.int64),
        session=session,
        is_test=is_test,
        returns=discounted_returns(reward, session, 0.9, step=step),
        n_users=n_users,
        n_items=n_items,
        user_raw=np.array([f"u{i}" for i in range(n_users)]),
        item_raw=np.array([f"i{i}" for i in range(n_items)]),
        step=step,
        context=behavior == "view",
    )


@pytest.fixture(scope="module", params=["context_engaged", "engaged", "all"])
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Recommender]:
    ds = slate_dataset()
    out = tmp_path_factory.mktemp("sessions") / "m"
    agent = AgentConfig(embed_size=8, hidden=8, hist_num=HIST, history=request.param, encoder="gru")
    train_agent(ds, out, agent, TrainConfig(lr=1e-2, max_steps=2, batch_size=16, device="cpu"))
    return ds, Recommender.load(out, device="cpu")


def test_a_known_users_serving_state_is_the_training_state_of_their_next_event(trained) -> None:
    ds, rec = trained
    # training's state of one more event per user, after everything the dataset holds (a new step)
    rows, new_user, new_step = [], [], []
    for u in range(ds.n_users):
        last = np.flatnonzero(ds.user == u)[-1]
        rows.append(last)
        new_user.append(u)
        new_step.append(ds.step[last] + 1)
    insert_at = np.array(rows) + 1

    def extended(a: np.ndarray, value: np.ndarray) -> np.ndarray:
        return np.insert(a, insert_at, value)

    names, _ = ds.event_vocabulary()
    more = Dataset(
        user=extended(ds.user, np.array(new_user)),
        item=extended(ds.item, np.zeros(ds.n_users, np.int32)),
        behavior=extended(ds.behavior, np.array(["pv"] * ds.n_users, dtype=object)),
        reward=extended(ds.reward, np.ones(ds.n_users, np.float32)),
        ts=np.arange(ds.n_events + ds.n_users, dtype=np.int64),
        session=extended(ds.session, np.array(new_user)),
        is_test=extended(ds.is_test, np.ones(ds.n_users, bool)),
        returns=extended(ds.returns, np.ones(ds.n_users, np.float32)),
        n_users=ds.n_users,
        n_items=ds.n_items,
        step=extended(ds.step, np.array(new_step)),
        context=extended(ds.context, np.zeros(ds.n_users, bool)),
    )
    assert more.event_vocabulary()[0] == names
    tr = build_transitions(more, "test", HIST, history=rec.config.history)
    positions = torch.as_tensor(insert_at + np.arange(ds.n_users))
    want_items, want_events = tr.histories(positions)
    sessions = rec.sessions([f"u{u}" for u in range(ds.n_users)])
    np.testing.assert_array_equal(sessions.history, want_items.numpy())
    np.testing.assert_array_equal(sessions.history_event, want_events.numpy())
    # and the stateless API scores that same state
    for u in (0, 3):
        assert rec.recommend(user=f"u{u}", k=5) == sessions.recommend(k=5, rows=[u])[0]


def test_replaying_the_log_through_observe_gives_every_training_state(trained) -> None:
    """A session started empty and fed each step's rows sees, before each step, the state training gave it."""
    ds, rec = trained
    tr = build_transitions(ds, "train", HIST, history=rec.config.history)
    names, codes = ds.event_vocabulary()
    assert names == rec.config.event_types
    want_items, want_events = tr.histories(torch.arange(ds.n_events))
    for u in range(ds.n_users):
        rows = np.flatnonzero(ds.user == u)
        session = Sessions(rec, np.array([u]), stored_history=False)
        for s in np.unique(ds.step[rows]):
            step_rows = rows[ds.step[rows] == s]
            for r in step_rows:
                assert session.history[0].tolist() == want_items[r].tolist(), (u, s)
                assert session.history_event[0].tolist() == want_events[r].tolist(), (u, s)
            session.observe_indices(np.zeros(step_rows.size, np.int64), ds.item[step_rows], codes[step_rows])


def test_session_api_filters_feedback_like_training_and_respects_candidates(trained) -> None:
    ds, rec = trained
    session = rec.session(user=None)
    empty = session.history[0].copy()
    assert session.observe("i3", "skip") is True
    skipped = session.history[0].copy()
    assert (skipped == empty).all() == (rec.config.history != "all")
    assert session.observe("not-an-item", "pv") is False  # outside the catalogue: never in the state, reported
    assert (session.history[0] == skipped).all()
    session.observe("i5", "cart")
    assert session.history[0][-1] == 5
    r = session.recommend(k=3, candidates=["i1", "i2", "i5", "i7", "unknown"])
    assert set(r.items) <= {"i1", "i2", "i7"}  # i5 was seen
    assert len(session.recommend(k=3, candidates=["i5"], exclude_seen=False).items) == 1
    with pytest.raises(TopkrecError, match="unknown history event 'clicked'"):
        session.observe("i1", "clicked")
    with pytest.raises(TopkrecError, match="none of the 1 candidates"):
        session.recommend(k=3, candidates=["zzz"])
    stateless = rec.recommend(history=["i3", "i5"], history_events=["skip", "cart"], k=4, exclude_seen=False)
    replay = rec.session(None)
    replay.observe("i3", "skip")
    replay.observe("i5", "cart")
    assert replay.recommend(k=4, exclude_seen=False) == stateless


def test_many_sessions_are_one_batch_and_rows_are_independent(trained) -> None:
    _, rec = trained
    many = rec.sessions(["u0", "u1", None])
    assert many.observe([2, 2, 0, 1], ["i4", "i6", "i9", "nope"], ["pv", "cart", "pv", "pv"]) == ["nope"]
    batch = many.recommend(k=5)
    for row, user in ((0, "u0"), (1, "u1"), (2, None)):
        one = rec.sessions([user])
        if row == 2:
            one.observe([0, 0], ["i4", "i6"], ["pv", "cart"])
        if row == 0:
            one.observe([0], ["i9"], ["pv"])
        alone = one.recommend(k=5)[0]
        assert alone.items == batch[row].items  # scores may differ in the last float bits across batch sizes
        assert alone.scores == pytest.approx(batch[row].scores, rel=1e-5, abs=1e-6)
    logits = many.logits()
    assert logits.shape == (3, rec.n_items) and torch.isfinite(logits).all()


def test_recommender_candidates(tmp_path: Path) -> None:
    from topkrec.serve.synthetic import make_random_model

    model = make_random_model(tmp_path / "m", n_users=5, n_items=300, hist_num=3, seed=2)
    rec = Recommender.load(model, device="cpu")
    allowed = [f"i{j}" for j in range(0, 300, 7)]
    rows = rec.recommend_batch([f"u{u}" for u in range(5)], k=10, candidates=allowed, exclude_seen=False)
    for r in rows:
        assert len(r.items) == 10 and set(r.items) <= set(allowed)
    full = rec.recommend(user="u1", k=300, exclude_seen=False)
    ranked = [i for i in full.items if i in set(allowed)][:10]
    assert rows[1].items == ranked  # the candidate set only removes items: the order is the policy's
    explored = rec.recommend(user="u1", k=5, candidates=allowed, explore=True, m=20, seed=0)
    assert set(explored.items) <= set(allowed)


def test_history_without_events_is_never_dropped_when_the_model_lacks_a_default_event(trained) -> None:
    """A model dir without data.default_event (no history rows at training): event-less histories still count."""
    _, rec = trained
    raw = {
        **rec.agent.raw_config,
        "data": {k: v for k, v in rec.agent.raw_config.get("data", {}).items() if k != "default_event"},
    }
    bare = Recommender(dataclasses.replace(rec.agent, raw_config=raw), histories=rec.histories)
    first = rec.config.history_events[0] if rec.config.history_events else rec.config.event_types[0]
    with_events = bare.recommend(history=["i3", "i5"], history_events=[first, first], k=4, exclude_seen=False)
    without = bare.recommend(history=["i3", "i5"], k=4, exclude_seen=False)
    empty = bare.recommend(k=4, exclude_seen=False)
    assert without == with_events and without.scores != empty.scores
