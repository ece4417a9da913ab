"""Property-based tests of ``prepare`` (Hypothesis): on generated event tables, every count, the split (the
reference rule), the ids, the sessions and the discounted returns equal an independent plain-Python
computation written here, row by row."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from topkrec.data.prepare import PrepareConfig, prepare
from topkrec.data.readers import EventColumns

REWARD = {"pv": 1.0, "cart": 2.0, "fav": 2.0, "buy": 3.0}

int_users = st.sampled_from([-3, 0, 1, 2, 7, 10, 11, 10**12])
text_users = st.sampled_from(["u1", "u10", "u2", "alice", "Bob", "z"])
rows = st.tuples(
    st.integers(0, 15),  # item
    st.sampled_from(list(REWARD)),  # behaviour
    st.integers(0, 20_000),  # ts (gaps above and below the session gaps drawn below)
)


@st.composite
def event_tables(draw: st.DrawFn) -> dict[str, Any]:
    text_ids = draw(st.booleans())
    users = draw(st.lists(text_users if text_ids else int_users, min_size=1, max_size=4, unique=True))
    per_user = [draw(st.integers(1, 15)) for _ in users]  # journeys of up to 15 events: every split size occurs
    events = draw(st.permutations([(u, *draw(rows)) for u, n in zip(users, per_user, strict=True) for _ in range(n)]))
    return {
        "events": events,  # (user, item, behaviour, ts) in file order
        "test_size": draw(st.sampled_from([0.0, 0.2, 0.25, 0.3, 0.5])),
        "gamma": draw(st.sampled_from([0.0, 0.5, 0.99, 1.0])),
        "session": draw(st.sampled_from(["interval", "one"])),
        "gap": draw(st.sampled_from([1, 60, 3600])),
        "dedupe": draw(st.booleans()),
    }


def reference(table: dict[str, Any]) -> dict[str, Any]:
    """The DESIGN §1 steps in plain Python, one event at a time."""
    numbered = [(u, i, b, t, line) for line, (u, i, b, t) in enumerate(table["events"])]
    ordered = sorted(numbered, key=lambda r: (r[0], r[3], r[4]))  # user, time, input order
    if table["dedupe"]:
        seen: set[tuple[Any, int, str]] = set()
        kept = []
        for r in ordered:
            if (r[0], r[1], r[2]) not in seen:
                seen.add((r[0], r[1], r[2]))
                kept.append(r)
        ordered = kept
    users = sorted({r[0] for r in ordered})
    # The split: the first round((1 - test_size) * n) events of a user with n > 3 in train (half to even).
    is_test: list[bool] = []
    for u in users:
        n = sum(1 for r in ordered if r[0] == u)
        n_train = round((1 - table["test_size"]) * n) if n > 3 else n
        is_test += [k >= n_train for k in range(n)]
    train_counts: dict[int, int] = {}
    for r, test in zip(ordered, is_test, strict=True):
        if not test:
            train_counts[r[1]] = train_counts.get(r[1], 0) + 1
    item_order = sorted(train_counts, key=lambda i: (-train_counts[i], i))
    item_index = {item: k for k, item in enumerate(item_order)}
    sessions: list[int] = []
    for k, r in enumerate(ordered):
        new = k == 0 or r[0] != ordered[k - 1][0] or (is_test[k] and not is_test[k - 1])
        if table["session"] == "interval" and k > 0 and r[3] - ordered[k - 1][3] > table["gap"]:
            new = True
        sessions.append((sessions[-1] + 1 if new else sessions[-1]) if sessions else 0)
    reward = [REWARD[r[2]] for r in ordered]
    returns = [0.0] * len(ordered)
    for k in range(len(ordered) - 1, -1, -1):
        later = returns[k + 1] if k + 1 < len(ordered) and sessions[k + 1] == sessions[k] else 0.0
        returns[k] = reward[k] + table["gamma"] * later
    n_items = len(item_order)
    return {
        "user": [users.index(r[0]) for r in ordered],
        "user_raw": users,
        "item": [item_index.get(r[1], n_items) for r in ordered],
        "item_raw": item_order,
        "behavior": [r[2] for r in ordered],
        "ts": [r[3] for r in ordered],
        "test": is_test,
        "session": sessions,
        "reward": reward,
        "return": returns,
        "raw_item_of_event": [r[1] for r in ordered],
    }


def run_prepare(table: dict[str, Any]) -> tuple[Any, list[str]]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "log.csv"
        lines = ["user,item,event,ts"] + [f"{u},{i},{b},{t}" for u, i, b, t in table["events"]]
        path.write_text("\n".join(lines) + "\n")
        cfg = PrepareConfig(
            format="events",
            columns=EventColumns(user="user", item="item", time="ts", event="event"),
            test_size=table["test_size"],
            gamma=table["gamma"],
            session=table["session"],
            session_gap=table["gap"],
            dedupe=table["dedupe"],
        )
        return prepare(path, cfg)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_tables())
def test_prepare_equals_an_independent_computation(table: dict[str, Any]) -> None:
    prepared, _ = run_prepare(table)
    ref = reference(table)
    ev = prepared.events
    n_items = len(ref["item_raw"])
    # ids: indices, and the raw id behind every index (identity kept: ints stay ints, text stays text)
    assert ev["user"].to_list() == ref["user"]
    assert ev["item"].to_list() == ref["item"]
    assert prepared.user_raw.to_list() == ref["user_raw"]
    assert prepared.item_raw.to_list() == ref["item_raw"]
    item_raw = prepared.item_raw.to_list()
    for index, raw in zip(ev["item"].to_list(), ref["raw_item_of_event"], strict=True):
        assert index == n_items or item_raw[index] == raw
    # the split, sessions, rewards and returns, row by row
    assert (ev["split"] == "test").to_list() == ref["test"]
    assert ev["session"].to_list() == ref["session"]
    assert ev["behavior"].to_list() == ref["behavior"]
    assert ev["ts"].to_list() == ref["ts"]
    np.testing.assert_allclose(ev["reward"].to_numpy(), ref["reward"], rtol=0, atol=0)
    np.testing.assert_allclose(ev["return"].to_numpy(), ref["return"], rtol=1e-6, atol=1e-6)
    # counts (summary.json, DESIGN §9)
    s = prepared.summary
    n_test = sum(ref["test"])
    assert s["n_users"] == len(ref["user_raw"]) and s["n_items"] == n_items
    assert s["n_events"] == len(ref["user"]) and s["n_raw_events"] == len(table["events"])
    assert s["n_duplicates_dropped"] == len(table["events"]) - len(ref["user"])
    assert (s["n_train_events"], s["n_test_events"]) == (len(ref["user"]) - n_test, n_test)
    assert s["n_oov_test_events"] == sum(1 for i, t in zip(ref["item"], ref["test"], strict=True) if t and i == n_items)
    assert s["n_sessions"] == ref["session"][-1] + 1
    expected_counts: dict[str, int] = {}
    for b in ref["behavior"]:
        expected_counts[b] = expected_counts.get(b, 0) + 1
    assert s["behavior_counts"] == expected_counts
    assert s["n_users_in_test"] == len({u for u, t in zip(ref["user"], ref["test"], strict=True) if t})


@settings(max_examples=200, deadline=None)
@given(st.integers(4, 500), st.sampled_from([0.1, 0.15, 0.2, 0.25, 0.3, 1 / 3, 0.45, 0.5, 0.7]))
def test_split_sizes_follow_python_round(n: int, test_size: float) -> None:
    from topkrec.data.prepare import chronological_split

    user = np.zeros(n, dtype=np.int64)
    is_test, users_in_test = chronological_split(user, test_size)
    n_train = round((1 - test_size) * n)  # Python's round: half to even
    assert is_test.tolist() == [k >= n_train for k in range(n)]
    assert users_in_test == int(n_train < n)
