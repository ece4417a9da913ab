"""A model directory with random weights and random user histories, for serving tests and benchmarks.

It has exactly the layout ``topkrec train`` writes (through ``save_agent``) plus
``user_histories.safetensors``, so serving it exercises the real loading path; only the numbers are
random.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from topkrec.data.histories import HISTORIES_FILE, UserHistories
from topkrec.policy.config import Encoder, SoftmaxKind

__all__ = ["make_random_model"]


def make_random_model(
    out: Path | str,
    n_users: int = 1000,
    n_items: int = 100_000,
    hist_num: int = 10,
    hidden: int = 64,
    embed_size: int = 32,
    encoder: Encoder = "concat",
    softmax: SoftmaxKind = "full",
    mean_events: int = 20,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Write a random model dir to ``out``; user ids are ``u<i>``, item ids ``i<j>``.

    Each user gets 1..2·mean_events random (Zipf-skewed) items as history.
    """
    import torch

    from topkrec.policy.artifact import save_agent
    from topkrec.policy.config import AgentConfig
    from topkrec.policy.model import Agent

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = AgentConfig(
        n_users=n_users,
        n_items=n_items,
        embed_size=embed_size,
        hist_num=hist_num,
        hidden=hidden,
        encoder=encoder,
        softmax=softmax,
    )
    agent = Agent(
        config,
        user_init=torch.randn(n_users, embed_size) / embed_size**0.5,
        item_init=torch.randn(n_items + 1, embed_size) / embed_size**0.5,
    )
    bias = getattr(agent.policy_head, "bias", None)
    if isinstance(bias, torch.Tensor) and bias.shape == (n_items,):
        with torch.no_grad():  # a spread of item biases, like popularity, so top-K is not a coin toss
            bias.copy_(torch.randn(n_items) * 0.5)
    lengths = rng.integers(1, 2 * mean_events + 1, size=n_users)
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    items = (rng.zipf(1.3, size=int(offsets[-1])) - 1) % n_items
    path = save_agent(
        out,
        agent,
        user_raw=[f"u{i}" for i in range(n_users)],
        item_raw=[f"i{j}" for j in range(n_items)],
        data_info={"synthetic": True, "seed": seed},
        force=force,
    )
    UserHistories(items=items.astype(np.int32), offsets=offsets).save(Path(path) / HISTORIES_FILE)
    return Path(path)
