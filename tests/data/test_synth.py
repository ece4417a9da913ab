"""Synthetic logs: format, realism (mix, lengths, sessions, window) and learnability, checked with pandas."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from topkrec.data.synth import T0, SynthConfig, generate, write_tianchi


@pytest.fixture(scope="module")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("synth")
    write_tianchi(generate(SynthConfig(n_users=1200, n_items=2500, seed=3)), d)
    return d


def read(d: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    users = pd.read_csv(d / "user.csv", header=None, names=["user", "sex", "age", "pur_power"])
    items = pd.read_csv(d / "item.csv", header=None, names=["item", "category", "shop", "brand"])
    ev = pd.read_csv(d / "user_behavior.csv", header=None, names=["user", "item", "behavior", "time"])
    return users, items, ev


def test_tables_are_consistent(logs_dir: Path) -> None:
    users, items, ev = read(logs_dir)
    assert len(users) == 1200 and users.user.is_unique
    assert len(items) == 2500 and items.item.is_unique
    assert set(ev.user) <= set(users.user) and set(ev.item) <= set(items.item)
    assert set(ev.behavior) == {"pv", "cart", "fav", "buy"}
    assert ev.time.dtype.kind == "i"
    # Sorted by user then time, as real logs are grouped.
    assert (ev.groupby("user", sort=False).time.apply(lambda t: t.is_monotonic_increasing)).all()
    # Hierarchy: most shops sell a single category.
    cats_per_shop = items.groupby("shop").category.nunique()
    assert (cats_per_shop == 1).mean() > 0.7


def test_behavior_mix_and_buy_after_cart(logs_dir: Path) -> None:
    _, _, ev = read(logs_dir)
    share = ev.behavior.value_counts(normalize=True)
    assert abs(share["pv"] - 0.88) < 0.02
    assert abs(share["cart"] - 0.06) < 0.015
    assert abs(share["fav"] - 0.03) < 0.01
    assert abs(share["buy"] - 0.03) < 0.01
    carted = set(zip(ev.user[ev.behavior == "cart"], ev.item[ev.behavior == "cart"], strict=True))
    viewed = set(zip(ev.user[ev.behavior == "pv"], ev.item[ev.behavior == "pv"], strict=True))
    bought = set(zip(ev.user[ev.behavior == "buy"], ev.item[ev.behavior == "buy"], strict=True))
    p_buy_after_cart = len(bought & carted) / len(carted)
    p_buy_after_view_only = len(bought & (viewed - carted)) / len(viewed - carted)
    assert p_buy_after_cart > 5 * p_buy_after_view_only


def test_journeys_sessions_and_window(logs_dir: Path) -> None:
    _, _, ev = read(logs_dir)
    dedup = ev.drop_duplicates(["user", "item", "behavior"])
    n = dedup.groupby("user").size()
    short, long_ = ((n > 5) & (n <= 50)).sum(), ((n > 50) & (n <= 200)).sum()
    assert short > 0.4 * len(n) and long_ > 0.2 * len(n)
    assert n.max() <= 200 and (n <= 5).mean() < 0.08
    assert ev.time.min() >= T0 and ev.time.max() - ev.time.min() <= 14 * 86400
    gaps = np.diff(ev.time.to_numpy())[ev.user.to_numpy()[1:] == ev.user.to_numpy()[:-1]]
    inside, between = gaps[gaps <= 3600], gaps[gaps > 3600]
    assert 0.03 < len(between) / len(gaps) < 0.15  # sessions of about a dozen views
    assert np.median(inside) < 120 and np.quantile(inside, 0.9) > 60  # seconds to minutes
    assert between.min() > 3600


def test_power_law_popularity(logs_dir: Path) -> None:
    _, _, ev = read(logs_dir)
    counts = ev.item.value_counts().to_numpy()
    top1 = counts[: max(1, len(counts) // 100)].sum() / counts.sum()
    assert top1 > 0.08  # the head 1 % of items draws far more than 1 % of events
    assert counts[-1] <= 3  # and a long tail


def test_next_item_beats_popularity(logs_dir: Path) -> None:
    """A first-order model learned on the first 80 % of each journey predicts the rest far better
    than popularity: the hidden item-to-item structure is there to learn."""
    _, _, ev = read(logs_dir)
    ev = ev[ev.behavior == "pv"]
    hits_pop = hits_bigram = total = 0
    follow: dict[int, Counter[int]] = defaultdict(Counter)
    popularity: Counter[int] = Counter()
    test_pairs = []
    for _, g in ev.groupby("user", sort=False):
        seq = g.item.tolist()
        cut = int(len(seq) * 0.8)
        popularity.update(seq[:cut])
        for a, b in zip(seq[: cut - 1], seq[1:cut], strict=True):
            follow[a][b] += 1
        test_pairs += list(zip(seq[cut - 1 : -1], seq[cut:], strict=True))
    top10 = [i for i, _ in popularity.most_common(10)]
    for prev, nxt in test_pairs:
        total += 1
        hits_pop += nxt in top10
        hits_bigram += nxt in [i for i, _ in follow[prev].most_common(10)]
    assert total > 3000
    assert hits_bigram / total > 3 * hits_pop / total


def test_same_seed_same_logs() -> None:
    a = generate(SynthConfig(n_users=300, n_items=500, seed=7))
    b = generate(SynthConfig(n_users=300, n_items=500, seed=7))
    c = generate(SynthConfig(n_users=300, n_items=500, seed=8))
    assert np.array_equal(a.ev_item, b.ev_item) and np.array_equal(a.ev_time, b.ev_time)
    assert not np.array_equal(a.ev_item[:100], c.ev_item[:100])


def test_cli_synth_writes_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    cmd = [sys.executable, "-m", "topkrec", "synth", "--out", str(out), "--users", "50", "--items", "100"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "50 users" in r.stdout
    assert {p.name for p in out.iterdir()} >= {"user.csv", "item.csv", "user_behavior.csv"}
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and "--force" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([*cmd, "--force", "--seed", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    bad = [sys.executable, "-m", "topkrec", "synth", "--out", str(tmp_path / "x"), "--users", "0"]
    r = subprocess.run(bad, capture_output=True, text=True)
    assert r.returncode == 2 and "--users" in r.stderr and not (tmp_path / "x").exists()
