"""``prepare --context-events``: context-only rows are history, never actions, and earn no reward.

Through the installed command on a tiny events log: the rows with the label are marked (``Dataset.context``,
``context_mask()``, ``meta.json``), their reward is 0 (returns included), ``build_transitions`` never takes one
as an action in either split, and the ``history`` setting decides whether they are history tokens — checked
against a plain loop over the dataset's rows. The context label needs no --reward entry. An unknown label is a
one-line error with exit status 2.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from topkrec.data.dataset import Dataset
from topkrec.data.transitions import build_transitions

HIST = 5
GAMMA = 0.5
# One user's journey (time order). The last two rows (click, view) are held out by --test-size 0.2, so a
# context row lands in test too. Views are on items 101.., the others on items 1.., so a history token's
# raw id says whether it came from a context row.
PATTERN = ["click", "view", "impression", "click", "view", "click", "impression", "view", "click", "view"]
N_USERS = 6


def write_log(path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for u in range(1, N_USERS + 1):
        plain = iter(rng.permutation(np.arange(1, 13)))  # distinct items per user: dedupe drops nothing
        views = iter(rng.permutation(np.arange(101, 109)))
        for j, event in enumerate(PATTERN):
            item = int(next(views) if event == "view" else next(plain))
            rows.append((u, item, 1_000 + 60 * j, event))
    pl.DataFrame(rows, schema=["user", "item", "ts", "event"], orient="row").write_csv(path)
    return path


def topkrec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "topkrec", *args], capture_output=True, text=True, timeout=300)


def prepare(
    log: Path, out: Path, context: str, reward: str = "impression=0,click=1"
) -> subprocess.CompletedProcess[str]:
    return topkrec(
        "prepare", "--format", "events", "--input", str(log), "--out", str(out), "--event-col", "event",
        "--reward", reward, "--context-events", context, "--gamma", str(GAMMA),
    )  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    d = tmp_path_factory.mktemp("context")
    r = prepare(write_log(d / "log.csv"), d / "ds", "view")
    assert r.returncode == 0, r.stderr
    return Dataset.load(d / "ds")


def test_context_rows_are_marked_and_earn_nothing(dataset: Dataset) -> None:
    ds = dataset
    assert ds.n_events == N_USERS * len(PATTERN)
    view = np.asarray(ds.behavior).astype(str) == "view"
    assert ds.context is not None and ds.context.dtype == bool
    np.testing.assert_array_equal(ds.context, view)
    np.testing.assert_array_equal(ds.context_mask(), view)
    assert ds.meta["context_events"] == ["view"] and ds.meta["config"]["context_events"] == ["view"]
    # the map says view=1, but a context row's reward is 0; the others keep theirs
    assert np.all(ds.reward[view] == 0)
    np.testing.assert_array_equal(ds.reward[~view], (np.asarray(ds.behavior)[~view] == "click").astype(np.float32))
    assert ds.event_vocabulary()[0] == ("click", "impression", "view")
    # context rows stay in the split: each user's last two rows (a click and a view) are test
    assert int(ds.is_test.sum()) == 2 * N_USERS and int((ds.is_test & view).sum()) == N_USERS
    # returns: plain discounted sums within a session, context rows a step with reward 0
    want = np.zeros(ds.n_events)
    for p in range(ds.n_events):
        same = np.flatnonzero((ds.session == ds.session[p]) & (np.arange(ds.n_events) >= p))
        want[p] = sum(GAMMA ** (q - p) * float(ds.reward[q]) for q in same)
    np.testing.assert_allclose(ds.returns, want, rtol=1e-6)
    # by hand, the first row of a user (train: click view impression click view click impression view):
    # 1 + γ³·1 + γ⁵·1 (with view=1 counted it would be more)
    assert ds.returns[0] == pytest.approx(1 + GAMMA**3 + GAMMA**5)


@pytest.mark.parametrize("split", ["train", "test"])
def test_no_context_row_is_ever_an_action(dataset: Dataset, split: str) -> None:
    ds = dataset
    tr = build_transitions(ds, split, HIST)  # type: ignore[arg-type]
    rows = tr.rows.numpy()
    assert rows.size and not ds.context_mask()[rows].any()
    in_split = ds.is_test if split == "test" else ~ds.is_test
    np.testing.assert_array_equal(rows, np.flatnonzero(in_split & ~ds.context_mask()))
    actions = tr.batch(torch.arange(len(tr))).action.numpy()
    np.testing.assert_array_equal(actions, ds.item[rows])
    want = {"click", "impression"} if split == "train" else {"click"}
    assert set(np.asarray(ds.behavior)[rows].astype(str)) == want


def expected_histories(ds: Dataset, rows: np.ndarray, which: str) -> tuple[np.ndarray, np.ndarray]:
    """Plain loop: the last HIST history rows of each row's user strictly before it, oldest first, left-padded."""
    _, codes = ds.event_vocabulary()
    context = ds.context_mask()
    items = np.full((rows.size, HIST), ds.pad_index)
    events = np.full((rows.size, HIST), len(ds.event_vocabulary()[0]))
    for n, p in enumerate(rows):
        kept = []
        for q in range(p):
            if ds.user[q] != ds.user[p] or ds.item[q] == ds.oov_index:
                continue
            engaged = not context[q] and ds.reward[q] != 0
            if which == "all" or engaged or (which == "context_engaged" and context[q]):
                kept.append(q)
        kept = kept[-HIST:]
        if kept:
            items[n, HIST - len(kept) :] = ds.item[kept]
            events[n, HIST - len(kept) :] = codes[kept]
    return items, events


@pytest.mark.parametrize("which", ["context_engaged", "engaged", "all"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_history_setting_decides_whether_context_items_are_tokens(dataset: Dataset, which: str, split: str) -> None:
    ds = dataset
    tr = build_transitions(ds, split, HIST, history=which)  # type: ignore[arg-type]
    rows = tr.rows.numpy()
    items, events = (t.numpy() for t in tr.histories(tr.rows))
    want_items, want_events = expected_histories(ds, rows, which)
    np.testing.assert_array_equal(items, want_items)
    np.testing.assert_array_equal(events, want_events)
    assert ds.item_raw is not None
    raw = np.array([int(ds.item_raw[i]) if i < ds.n_items else 0 for i in items.ravel()]).reshape(items.shape)
    view_code = ds.event_vocabulary()[0].index("view")
    from_context = (raw >= 101) & (items != ds.pad_index)
    if which == "engaged":
        assert not from_context.any() and not (events == view_code).any()
    else:  # context views of earlier rows are tokens of later rows' states, with their own event type
        assert from_context.any() and np.all(events[from_context] == view_code)


def test_unknown_context_label_is_one_line_exit_2(tmp_path: Path) -> None:
    r = prepare(write_log(tmp_path / "log.csv"), tmp_path / "ds", "zap", reward="impression=0,click=1,view=1")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--context-events zap match no behaviour of the log" in r.stderr
    assert "(its behaviours: click, impression, view)" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "ds").exists()
