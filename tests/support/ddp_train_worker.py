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
    device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
    if "--windows" in sys.argv:
        # token windows (4 windows of 8 tokens per global batch): the first step's (all-reduced) gradients are
        # saved, since Adam turns last-bit differences of near-zero gradients into lr-sized steps
        import os

        import torch
        from safetensors.torch import save_file

        from topkrec.train import build_agent

        acfg = AgentConfig(ds.n_users, ds.n_items, embed_size=8, hidden=16, hist_num=8, encoder="gru", dropout=0.0)
        cfg = TrainConfig(batch_size=BATCH, lr=1e-3, max_steps=1, epochs=1, device=device, batching="windows")
        agent = build_agent(ds, acfg, cfg)
        grads: dict[str, torch.Tensor] = {}

        def keep(step: int, _: object) -> None:
            grads.update({n: p.grad.detach().cpu().clone() for n, p in agent.named_parameters() if p.grad is not None})

        train_agent(ds, out, config=cfg, initial_agent=agent, force=True, on_step=keep)
        if os.environ.get("RANK", "0") == "0":
            save_file(grads, str(out.parent / f"{out.name}_grads.safetensors"))
        return
    # the reference's concat encoder over rows, no dropout: one process and two train the same weights
    acfg = AgentConfig(ds.n_users, ds.n_items, embed_size=8, hidden=16, hist_num=10, encoder="concat", dropout=0.0)
    cfg = TrainConfig(batch_size=BATCH, lr=1e-3, max_steps=MAX_STEPS, epochs=1, log_every=2, device=device)
    train_agent(ds, out, acfg, cfg, force=True)


if __name__ == "__main__":
    main()
