"""Recommender contract suite: every served model must pass these (shapes, unique items, seen-item
exclusion, determinism, save/load round trip, CPU == GPU), plus checks against direct scoring."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from topkrec.data.histories import HISTORIES_FILE, UserHistories, write_user_histories
from topkrec.errors import ArtifactError, TopkrecError
from topkrec.serve.recommender import Recommender
from topkrec.serve.synthetic import make_random_model

N_USERS, N_ITEMS, HIST = 40, 300, 5


@pytest.fixture(
    scope="module", params=[("concat", "full"), ("gru", "full"), ("mean", "sampled"), ("cfn", "adaptive")], ids=str
)
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    encoder, softmax = request.param
    out = tmp_path_factory.mktemp("model") / f"{encoder}-{softmax}"
    return make_random_model(
        out, n_users=N_USERS, n_items=N_ITEMS, hist_num=HIST, encoder=encoder, softmax=softmax, seed=3
    )


@pytest.fixture(scope="module")
def rec(model_dir: Path) -> Recommender:
    return Recommender.load(model_dir, device="cpu")


def direct_topk(rec: Recommender, user: int, seq: np.ndarray, k: int, exclude: np.ndarray) -> list[str]:
    """Top-k by scoring the model by hand: state from the last hist_num items, seen items removed."""
    hist = np.full((1, HIST), rec.pad_index)
    tail = seq[-HIST:]
    if tail.size:
        hist[0, HIST - tail.size :] = tail
    agent = rec.agent.module
    events = np.where(hist != rec.pad_index, rec.default_event, rec.event_pad)  # serving's stored-history events
    with torch.no_grad():
        h = torch.as_tensor(hist)
        state = agent.encode(torch.tensor([user]), h)
        # the head's logits with the re-engagement biases of the history's items (--repeat-mode)
        logits = agent.head_logits("policy_head", state, h, torch.as_tensor(events))[0].numpy().astype(np.float64)
    logits[exclude] = -np.inf
    return [f"i{j}" for j in np.argsort(-logits, kind="stable")[:k]]


def stored(rec: Recommender, u: int) -> np.ndarray:
    return rec.histories.of(u).astype(np.int64)


def test_shapes_unique_items_scores_sorted(rec: Recommender) -> None:
    for u in range(0, N_USERS, 7):
        r = rec.recommend(user=f"u{u}", k=10)
        assert len(r.items) == len(r.scores) == len(r.propensities) == 10
        assert len(set(r.items)) == 10
        assert all(item in rec.item_index for item in r.items)
        assert r.scores == sorted(r.scores, reverse=True)
        assert r.propensities == [1.0] * 10  # deterministic top-K shows each item for sure
        assert r.user_known and r.unknown_history_items == []


def test_top_k_equals_direct_scoring_with_seen_items_removed(rec: Recommender) -> None:
    for u in (0, 5, 17):
        seq = stored(rec, u)
        assert rec.recommend(user=f"u{u}", k=8).items == direct_topk(rec, u, seq, 8, np.unique(seq))
        no_excl = rec.recommend(user=f"u{u}", k=8, exclude_seen=False).items
        assert no_excl == direct_topk(rec, u, seq, 8, np.zeros(0, dtype=np.int64))
    # a known user's given history is appended after the stored one
    seq = np.concatenate([stored(rec, 2), [7, 9, 11]])
    got = rec.recommend(user="u2", history=["i7", "i9", "i11"], k=6).items
    assert got == direct_topk(rec, 2, seq, 6, np.unique(seq))


def test_seen_items_are_never_recommended(rec: Recommender) -> None:
    for u in range(N_USERS):
        seen = {f"i{j}" for j in stored(rec, u).tolist()}
        r = rec.recommend(user=f"u{u}", k=100)
        assert not seen & set(r.items)
    given = ["i1", "i2", "i3"]
    r = rec.recommend(history=given, k=N_ITEMS)
    assert len(r.items) == N_ITEMS - 3 and not set(given) & set(r.items)
    # with exclusion off, every item is recommendable
    assert len(rec.recommend(history=given, k=N_ITEMS, exclude_seen=False).items) == N_ITEMS


def test_seen_items_excluded_under_exploration(rec: Recommender) -> None:
    for u in range(0, N_USERS, 5):
        seen = {f"i{j}" for j in stored(rec, u).tolist()}
        r = rec.recommend(user=f"u{u}", k=10, explore=True, m=40, seed=u)
        assert len(set(r.items)) == 10 and not seen & set(r.items)


def test_k_beyond_available_items_returns_what_is_left(rec: Recommender) -> None:
    seen = set(stored(rec, 1).tolist())
    r = rec.recommend(user="u1", k=1000)
    assert len(r.items) == N_ITEMS - len(seen) == len(set(r.items))
    r = rec.recommend(user="u1", k=1000, explore=True, m=1000, seed=0)
    assert len(r.items) == N_ITEMS - len(seen) == len(set(r.items))
    assert all(p == pytest.approx(1.0) for p in r.propensities)  # everything available is shown


def test_unknown_user_served_from_history_and_unknown_items_reported(rec: Recommender) -> None:
    anon = rec.recommend(history=["i4", "i8"], k=5)
    r = rec.recommend(user="stranger", history=["i4", "nope", "i8", 12345], k=5)
    assert not r.user_known
    assert r.unknown_history_items == ["nope", "12345"]
    assert r.items == anon.items and r.scores == anon.scores
    assert r.items == direct_topk(rec, -1, np.array([4, 8]), 5, np.array([4, 8]))
    empty = rec.recommend(user="stranger", k=5)  # nothing known at all: still an answer
    assert len(empty.items) == 5 and not empty.user_known


def test_int_raw_ids_are_matched_as_strings(tmp_path: Path) -> None:
    from topkrec.policy.artifact import save_agent
    from topkrec.policy.config import AgentConfig
    from topkrec.policy.model import Agent

    torch.manual_seed(0)
    save_agent(tmp_path / "m", Agent(AgentConfig(n_users=3, n_items=20, hist_num=2)), user_raw=["10", "11", "12"])
    r = Recommender.load(tmp_path / "m", device="cpu")
    assert r.recommend(user=11, history=[3, 4], k=3).items == r.recommend(user="11", history=["3", "4"], k=3).items
    assert r.recommend(user=11, k=3).user_known


def test_exploration_is_seeded_and_propensities_are_probabilities(rec: Recommender) -> None:
    kwargs = dict(k=10, explore=True, m=50, k_prime=4, temperature=0.5)
    a = rec.recommend(user="u3", seed=11, **kwargs)
    b = rec.recommend(user="u3", seed=11, **kwargs)
    assert a == b
    others = [rec.recommend(user="u3", seed=s, **kwargs).items for s in range(12, 20)]
    assert any(o != a.items for o in others)
    top4 = rec.recommend(user="u3", k=4).items
    assert a.items[:4] == top4 and a.propensities[:4] == [1.0] * 4
    assert all(0.0 < p < 1.0 for p in a.propensities[4:])


def test_batch_equals_single_calls(rec: Recommender) -> None:
    users = [f"u{u}" for u in range(N_USERS)] + ["ghost", None]
    histories = [None] * N_USERS + [["i1", "i2"], ["i5"]]
    batch = rec.recommend_batch(users, histories, k=7)
    for user, hist, got in zip(users, histories, batch, strict=True):
        single = rec.recommend(user=user, history=hist, k=7)
        assert got.items == single.items
        np.testing.assert_allclose(got.scores, single.scores, rtol=1e-5, atol=1e-6)
    seeded = rec.recommend_batch(["u4"], k=5, explore=True, seed=9)[0]
    assert seeded == rec.recommend(user="u4", k=5, explore=True, seed=9)


def test_save_load_round_trip_gives_identical_output(rec: Recommender, model_dir: Path, tmp_path: Path) -> None:
    from topkrec.policy.artifact import save_agent

    copy = save_agent(tmp_path / "copy", rec.agent.module, user_raw=rec.agent.user_raw, item_raw=rec.agent.item_raw)
    shutil.copy(model_dir / HISTORIES_FILE, copy / HISTORIES_FILE)
    again = Recommender.load(copy, device="cpu")
    reloaded = Recommender.load(model_dir, device="cpu")
    for other in (again, reloaded):
        for u in range(0, N_USERS, 3):
            assert other.recommend(user=f"u{u}", k=10) == rec.recommend(user=f"u{u}", k=10)
            kw = dict(k=10, explore=True, seed=u, m=60)
            assert other.recommend(user=f"u{u}", **kw) == rec.recommend(user=f"u{u}", **kw)


def test_histories_from_a_dataset_dir(tmp_path: Path) -> None:
    from topkrec.data.dataset import Dataset
    from topkrec.policy.artifact import save_agent
    from topkrec.policy.config import AgentConfig
    from topkrec.policy.model import Agent

    n_items = 30
    user = np.array([0, 0, 0, 1, 1, 2], dtype=np.int32)
    item = np.array([5, 6, n_items, 7, 5, 9], dtype=np.int32)  # one OOV test event
    ds = Dataset(
        user=user,
        item=item,
        behavior=np.array(["pv"] * 6, dtype=object),
        reward=np.ones(6, dtype=np.float32),
        ts=np.arange(6, dtype=np.int64),
        session=np.array([0, 0, 0, 1, 1, 2], dtype=np.int32),
        is_test=np.array([False, False, True, False, True, False]),
        returns=np.ones(6, dtype=np.float32),
        n_users=3,
        n_items=n_items,
    )
    h = UserHistories.from_dataset(ds)
    assert h.of(0).tolist() == [5, 6] and h.of(1).tolist() == [7, 5] and h.of(2).tolist() == [9]
    ds.save(tmp_path / "data")
    torch.manual_seed(0)
    save_agent(tmp_path / "m", Agent(AgentConfig(n_users=3, n_items=n_items, hist_num=3)))
    via_dataset = Recommender.load(tmp_path / "m", device="cpu", dataset=tmp_path / "data")
    assert via_dataset.has_histories
    assert "5" not in via_dataset.recommend(user="0", k=28).items
    write_user_histories(tmp_path / "m", ds)
    via_file = Recommender.load(tmp_path / "m", device="cpu")
    assert via_file.recommend(user="1", k=10) == via_dataset.recommend(user="1", k=10)
    without = Recommender.load(tmp_path / "m", device="cpu", dataset=None)
    assert without.has_histories
    (tmp_path / "m" / HISTORIES_FILE).unlink()
    bare = Recommender.load(tmp_path / "m", device="cpu")
    assert not bare.has_histories and "5" in bare.recommend(user="0", k=30).items


def test_corrupt_or_mismatched_model_dirs_fail_clearly(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        Recommender.load(tmp_path / "absent", device="cpu")
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    (bad / "policy_head.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ArtifactError, match="policy_head"):
        Recommender.load(bad, device="cpu")
    shutil.rmtree(bad)
    shutil.copytree(model_dir, bad)
    UserHistories.empty(N_USERS + 5).save(bad / HISTORIES_FILE)
    with pytest.raises(ArtifactError, match="offsets"):
        Recommender.load(bad, device="cpu")
    (bad / HISTORIES_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ArtifactError, match="user-histories"):
        Recommender.load(bad, device="cpu")
    (bad / "config.json").write_text("{ broken")
    with pytest.raises(ArtifactError):
        Recommender.load(bad, device="cpu")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"k": 0},
        {"k": 1001},
        {"k": True},
        {"explore": True, "m": 5, "k": 10},
        {"explore": True, "k_prime": 11},
        {"explore": True, "temperature": -1.0},
        {"explore": True, "temperature": float("inf")},
        {"explore": True, "seed": -1},
    ],
)
def test_invalid_options_are_user_errors(rec: Recommender, kwargs: dict) -> None:
    with pytest.raises(TopkrecError):
        rec.recommend(user="u0", **kwargs)


def test_batch_argument_errors(rec: Recommender) -> None:
    with pytest.raises(TopkrecError, match="same length"):
        rec.recommend_batch(["u1"], [["i1"], ["i2"]])
    with pytest.raises(TopkrecError, match="give users"):
        rec.recommend_batch()
    with pytest.raises(TopkrecError, match="not a string"):
        rec.recommend_batch("u1")
    with pytest.raises(TopkrecError, match="list of item ids"):
        rec.recommend(history="i1,i2")


@pytest.mark.cuda
def test_cpu_equals_gpu(model_dir: Path) -> None:
    cpu = Recommender.load(model_dir, device="cpu")
    gpu = Recommender.load(model_dir, device="cuda")
    assert gpu.device.type == "cuda"
    users = [f"u{u}" for u in range(N_USERS)]
    same_lists = 0
    for a, b in zip(cpu.recommend_batch(users, k=10), gpu.recommend_batch(users, k=10), strict=True):
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-3, atol=2e-3)
        assert len(set(a.items) & set(b.items)) >= 9  # near-ties may swap at the cut
        same_lists += a.items == b.items
    assert same_lists >= N_USERS - 3
    for u in range(5):
        a = cpu.recommend(user=f"u{u}", k=10, explore=True, m=50, seed=u)
        b = gpu.recommend(user=f"u{u}", k=10, explore=True, m=50, seed=u)
        shared = {i: p for i, p in zip(a.items, a.propensities, strict=True)}
        common = [(shared[i], p) for i, p in zip(b.items, b.propensities, strict=True) if i in shared]
        assert len(common) >= 8
        np.testing.assert_allclose([c[0] for c in common], [c[1] for c in common], rtol=1e-2, atol=1e-4)


def test_recommend_in_chunks_matches_batch_and_ignores_thread_count(rec: Recommender) -> None:
    from topkrec.serve.recommender import recommend_in_chunks

    users = [f"u{u % N_USERS}" for u in range(50)] + ["ghost"]
    whole = rec.recommend_batch(users, k=6)
    one = [r for chunk in recommend_in_chunks(rec, users, chunk_size=7, workers=1, k=6) for r in chunk]
    two = [r for chunk in recommend_in_chunks(rec, users, chunk_size=7, workers=2, k=6) for r in chunk]
    assert [r.items for r in one] == [r.items for r in two] == [r.items for r in whole]
    kw = dict(k=6, explore=True, m=30, seed=4)
    a = [r for c in recommend_in_chunks(rec, users, chunk_size=7, workers=1, **kw) for r in c]
    b = [r for c in recommend_in_chunks(rec, users, chunk_size=7, workers=3, **kw) for r in c]
    assert a == b
    assert a[7:14] == rec.recommend_batch(users[7:14], k=6, explore=True, m=30, seed=4 + 7)
