"""`topkrec ope --model DIR`: the state of each logged row is built as the training pipeline builds it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from topkrec.data.transitions import token_windows
from topkrec.ope.model_target import model_target_prob
from topkrec.simulate.environment import EnvConfig, Environment, LoggingPolicyConfig, logging_policy_probs, rollout
from topkrec.simulate.sequential import prepare_logs


def test_token_windows():
    users = np.array([0, 0, 0, 1, 1])
    items = np.array([5, 6, 7, 8, 9])
    keep = np.array([True, False, True, True, True])
    h, e = token_windows(users, keep, items, items + 10, None, 2, pad=99, event_pad=3)
    assert h.tolist() == [[99, 99], [99, 5], [99, 5], [99, 99], [99, 8]]
    assert e.tolist() == [[3, 3], [3, 15], [3, 15], [3, 3], [3, 18]]
    h, _ = token_windows(users, np.ones(5, bool), items, items, np.array([0, 1, 1, 0, 0]), 2, pad=99, event_pad=3)
    assert h.tolist() == [[99, 99], [99, 5], [99, 5], [99, 99], [99, 99]]  # rows of one step share a state


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from topkrec.policy.config import AgentConfig, TrainConfig
    from topkrec.train import train_agent

    tmp = tmp_path_factory.mktemp("opemodel")
    env = Environment(EnvConfig(n_users=40, n_items=30, slate_size=3, max_len=5, seed=1))
    lp = LoggingPolicyConfig()
    res = rollout(
        env, lambda s: logging_policy_probs(env, lp, s.last_engaged), 2, np.random.default_rng(0), record=True
    )
    assert res.log is not None
    csv = tmp / "logs.csv"
    res.log.write(csv)
    ds = prepare_logs(csv, tmp / "data")
    model = tmp / "model"
    result = train_agent(
        ds,
        model,
        AgentConfig(n_users=ds.n_users, n_items=ds.n_items, embed_size=8, hidden=16, trainable_embeddings=True),
        TrainConfig(epochs=1, batch_size=64, lr=1e-2, max_steps=5, device="cpu", correction="topk", k=3),
    )
    return csv, ds, model, result.agent.eval()


def test_model_target_prob_matches_the_training_transitions(trained):
    from topkrec.data.transitions import build_transitions

    csv, ds, model, module = trained
    cols = {"reward_col": "reward", "event_col": "event", "step_col": "step"}
    probs = model_target_prob(model, csv, "item", "user", "ts", **cols)
    tr = build_transitions(ds, "train", module.config.hist_num, "cpu", module.config.history)
    with torch.no_grad():
        batch = tr.batch(torch.arange(len(tr)))
        state = module.encode(batch.user, batch.history, batch.history_event)
        # the training step's own log π(a | s), re-engagement biases included
        out = module.head_output("policy_head", state, batch.action, batch.history, batch.history_event)
        expected = out.logp.exp().double().numpy()
    assert probs.shape == expected.shape
    assert np.allclose(probs, expected, rtol=1e-5, atol=1e-9)
    slate = model_target_prob(model, csv, "item", "user", "ts", k=3, **cols)
    assert np.allclose(slate, 1 - (1 - expected) ** 3, rtol=1e-5, atol=1e-9)


def test_ope_cli_with_model(trained):
    csv, _, model, _ = trained
    args = ["--logs", str(csv), "--action-col", "item", "--reward-col", "reward", "--propensity-col", "propensity"]
    r = subprocess.run(
        [sys.executable, "-m", "topkrec", "ope", *args, "--model", str(model), "--user-col", "user",
         "--time-col", "ts", "--target-k", "3", "--n-boot", "50", "--json"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n"] > 0 and set(out["estimators"]) >= {"ips", "capped_ips", "snips"}
    r = subprocess.run(
        [sys.executable, "-m", "topkrec", "ope", *args, "--model", str(model)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "--user-col" in r.stderr


def test_ope_cli_with_model_refuses_a_log_outside_its_catalogue_and_warns_on_a_partial_one(trained, tmp_path):
    import polars as pl

    csv, _, model, _ = trained
    df = pl.read_csv(csv)
    df.with_columns(pl.format("x{}", pl.col("item")).alias("item")).write_csv(tmp_path / "foreign.csv")
    args = ["--action-col", "item", "--reward-col", "reward", "--propensity-col", "propensity", "--model", str(model)]
    base = [sys.executable, "-m", "topkrec", "ope", *args, "--user-col", "user", "--n-boot", "20", "--json"]
    r = subprocess.run([*base, "--logs", str(tmp_path / "foreign.csv")], capture_output=True, text=True)
    assert r.returncode == 2 and "none of the" in r.stderr and "catalogue" in r.stderr, r.stderr
    half = df.with_columns(
        pl.when(pl.int_range(pl.len()) % 2 == 0).then(pl.format("x{}", pl.col("item"))).otherwise(pl.col("item"))
        .cast(pl.String).alias("item")
    )  # fmt: skip
    half.write_csv(tmp_path / "half.csv")
    r = subprocess.run([*base, "--logs", str(tmp_path / "half.csv")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert any("not in the model's catalogue" in w for w in out["warnings"]) and "warning:" in r.stderr
