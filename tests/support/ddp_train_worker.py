"""Trains the agent on a small in-memory dataset and saves the final weights; run alone or under torchrun.

    python ddp_train_worker.py OUT_DIR [--zero-rewards] [--device cuda]

Used by tests/train/test_train_distributed.py to compare one process with two (DDP) on the same global batches.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the support package

from support.agent_data import synth_dataset  # noqa: E402
from topkrec.data.dataset import discounted_returns  # noqa: E402
from topkrec.policy.config import AgentConfig, TrainConfig  # noqa: E402
from topkrec.train import train_agent  # noqa: E402

BATCH = 32
MAX_STEPS = 6


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    out = Path(sys.argv[1])
    ds = synth_dataset(n_users=40, n_items=60, seed=3)
    if "--zero-rewards" in sys.argv:  # impressions without a reward: π trains on part of each batch
        reward = ds.reward.copy()
        reward[np.arange(len(reward)) % 3 == 0] = 0.0
        ds = replace(ds, reward=reward, returns=discounted_returns(reward, ds.session, 0.99))
    acfg = AgentConfig(ds.n_users, ds.n_items, embed_size=8, hidden=16)
    device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
    cfg = TrainConfig(batch_size=BATCH, lr=1e-3, max_steps=MAX_STEPS, epochs=1, log_every=2, device=device)
    train_agent(ds, out, acfg, cfg, force=True)


if __name__ == "__main__":
    main()
