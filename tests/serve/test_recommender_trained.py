"""End to end: a model dir written by ``train_agent`` carries the users' histories and is served
with their seen items excluded and raw ids in and out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from support.agent_data import synth_dataset
from topkrec.data.histories import HISTORIES_FILE
from topkrec.policy.config import AgentConfig, TrainConfig
from topkrec.serve.recommender import Recommender
from topkrec.train import train_agent


def test_trained_model_dir_serves_known_users_without_their_seen_items(tmp_path: Path) -> None:
    ds = synth_dataset(n_users=60, n_items=120, seed=1)
    cfg = TrainConfig(device="cpu", lr=3e-3, batch_size=64, max_steps=3, log_every=1)
    train_agent(ds, tmp_path / "m", AgentConfig(ds.n_users, ds.n_items, embed_size=8, hidden=16), cfg, force=True)
    assert (tmp_path / "m" / HISTORIES_FILE).exists()
    rec = Recommender.load(tmp_path / "m", device="cpu")
    assert rec.has_histories and rec.info()["n_items"] == ds.n_items
    assert ds.user_raw is not None and ds.item_raw is not None
    for u in range(0, ds.n_users, 10):
        consumed = ds.item[(ds.user == u) & (ds.item != ds.oov_index)]
        seen_raw = {str(ds.item_raw[i]) for i in np.unique(consumed)}
        r = rec.recommend(user=str(ds.user_raw[u]), k=20)
        assert r.user_known and len(r.items) == 20 == len(set(r.items))
        assert not seen_raw & set(r.items)
        assert set(r.items) <= {str(x) for x in ds.item_raw}
