"""REINFORCE with the top-K off-policy correction (Chen et al., WSDM 2019) in one readable file.

CleanRL style: everything from the dataset directory to the trained policy, top to bottom, with no
topkrec imports (it reads only ``events.parquet`` and ``meta.json``). The library (`topkrec train`)
must agree with this file numerically; ``tests/train/test_example_minimal.py`` checks it step by step.

    python examples/minimal_topk_reinforce.py --data DATASET_DIR [--epochs 1 --lr 1e-3 --correction topk]

The maths (paper §4):
    state        s = ReLU(W [u ; h_1 ; … ; h_H] + b)           (the reference's concat encoder)
    policy       π(a|s) = softmax(s·V_π + c_π)                 over the whole catalogue
    behaviour    β̂(a|s) = softmax(sg(s)·V_β + c_β)             sg = stop-gradient: β̂ never shapes s
    weight       w = min(π(a|s) / β̂(a|s), cap)                 constant in the gradient (§4.2, §4.5)
    top-K        λ_K = K (1 − π(a|s))^(K−1)                    constant in the gradient (§4.4)
    loss         −mean(w · λ_K · R_t · log π(a|s)) − mean(log β̂(a|s))
π learns from logged actions with non-zero reward; β̂ from every logged action.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Args:
    data: str = "topkrec-demo/data"
    """dataset directory written by `topkrec prepare`"""
    epochs: int = 1
    """passes over the train transitions"""
    batch_size: int = 128
    """transitions per step"""
    lr: float = 1e-3
    """Adam learning rate of every module"""
    hist_num: int = 10
    """items of history in the state"""
    embed_dim: int = 32
    """width of the (random, frozen) embeddings"""
    hidden: int = 64
    """width of the state"""
    correction: str = "topk"
    """none | is | topk"""
    k: int = 10
    """K of the top-K correction"""
    cap: float = math.exp(3.0)
    """importance-weight cap"""
    seed: int = 0
    """seed of initialisation and shuffling"""


# ----------------------------------------------------------------------------------------- data
def load_events(data_dir: str) -> dict:
    """The columns we need from the dataset directory, as NumPy arrays (events grouped by user, in time order)."""
    import polars as pl

    ev = pl.read_parquet(Path(data_dir) / "events.parquet")
    meta = json.loads((Path(data_dir) / "meta.json").read_text())
    return {
        "user": ev["user"].to_numpy().astype(np.int64),
        "item": ev["item"].to_numpy().astype(np.int64),
        "reward": ev["reward"].to_numpy().astype(np.float32),
        "returns": ev["return"].to_numpy().astype(np.float32),
        "is_test": (ev["split"] == "test").to_numpy(),
        "n_users": int(meta["n_users"]),
        "n_items": int(meta["n_items"]),
    }


def build_histories(user: np.ndarray, item: np.ndarray, hist_num: int, pad: int) -> np.ndarray:
    """(E, H) the hist_num items before each event in its user's sequence, left-padded with ``pad``.

    Written plainly (a loop over history offsets); the library gathers the same thing per batch.
    """
    n = len(item)
    hist = np.full((n, hist_num), pad, dtype=np.int64)
    for back in range(1, hist_num + 1):  # column H − back holds the item ``back`` events earlier
        src = np.arange(n) - back
        ok = src >= 0
        ok[ok] &= user[src[ok]] == user[ok]
        hist[ok, hist_num - back] = item[src[ok]]
    return hist


# ----------------------------------------------------------------------------------------- model
class Net(nn.Module):
    def __init__(self, n_users: int, n_items: int, args: Args) -> None:
        super().__init__()
        self.user_embedding = nn.Embedding(n_users, args.embed_dim)
        self.item_embedding = nn.Embedding(n_items + 1, args.embed_dim, padding_idx=n_items)
        self.user_embedding.weight.requires_grad_(False)  # frozen, as the reference keeps its pretrained ones
        self.item_embedding.weight.requires_grad_(False)
        self.state = nn.Linear(args.embed_dim * (args.hist_num + 1), args.hidden)
        self.policy = nn.Linear(args.hidden, n_items)
        self.behavior = nn.Linear(args.hidden, n_items)

    def forward(self, user: torch.Tensor, hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(π logits, β̂ logits), each (B, n_items)."""
        x = torch.cat([self.user_embedding(user), self.item_embedding(hist).flatten(1)], dim=1)
        s = torch.relu(self.state(x))
        return self.policy(s), self.behavior(s.detach())


# ----------------------------------------------------------------------------------------- loss
def losses(
    policy_logits: torch.Tensor,
    behavior_logits: torch.Tensor,
    action: torch.Tensor,
    reward: torch.Tensor,
    returns: torch.Tensor,
    args: Args,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(policy loss, behaviour loss) of one batch."""
    # one log-probability per row: gather, never logp[:, action] (a (B, B) matrix)
    log_pi = F.log_softmax(policy_logits, dim=1).gather(1, action[:, None]).squeeze(1)  # (B,)
    log_beta = F.log_softmax(behavior_logits, dim=1).gather(1, action[:, None]).squeeze(1)  # (B,)
    behavior_loss = -log_beta.mean()
    rows = reward != 0  # π learns from actions with a non-zero reward
    log_pi, log_beta, returns = log_pi[rows], log_beta[rows], returns[rows]
    if log_pi.numel() == 0:
        return torch.zeros(()), behavior_loss
    w = torch.ones_like(log_pi)
    lam = torch.ones_like(log_pi)
    if args.correction in ("is", "topk"):
        w = torch.exp(torch.clamp(log_pi.detach() - log_beta.detach(), max=math.log(args.cap)))
    if args.correction == "topk" and args.k > 1:
        pi = torch.exp(log_pi.detach())
        lam = args.k * torch.exp((args.k - 1) * torch.log1p(-pi.clamp(max=1 - 1e-7)))
    policy_loss = -(w * lam * returns * log_pi).mean()
    return policy_loss, behavior_loss


# ----------------------------------------------------------------------------------------- train
def train(args: Args, events: dict | None = None, net: Net | None = None, steps: int | None = None) -> dict:
    """Train and return the per-step losses; ``net`` lets a test start from given weights."""
    ev = events if events is not None else load_events(args.data)
    pad = ev["n_items"]
    hist = torch.as_tensor(build_histories(ev["user"], ev["item"], args.hist_num, pad))
    train_rows = torch.as_tensor(np.flatnonzero(~ev["is_test"]))
    user, item = torch.as_tensor(ev["user"]), torch.as_tensor(ev["item"])
    reward, returns = torch.as_tensor(ev["reward"]), torch.as_tensor(ev["returns"])
    torch.manual_seed(args.seed)
    if net is None:
        net = Net(ev["n_users"], ev["n_items"], args)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=args.lr)
    history = []
    step = 0
    for epoch in range(args.epochs):
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + epoch)
        perm = train_rows[torch.randperm(len(train_rows), generator=gen)]
        for start in range(0, len(perm), args.batch_size):
            if steps is not None and step >= steps:
                return {"losses": history, "net": net}
            rows = perm[start : start + args.batch_size]
            policy_logits, behavior_logits = net(user[rows], hist[rows])
            policy_loss, behavior_loss = losses(
                policy_logits, behavior_logits, item[rows], reward[rows], returns[rows], args
            )
            optimizer.zero_grad()
            (policy_loss + behavior_loss).backward()
            optimizer.step()
            history.append((float(policy_loss.detach()), float(behavior_loss.detach())))
            step += 1
        print(f"epoch {epoch + 1}: policy loss {history[-1][0]:.4f}, behaviour loss {history[-1][1]:.4f}")
    return {"losses": history, "net": net}


def next_item_ndcg(net: Net, ev: dict, args: Args, k: int = 10) -> float:
    """Mean ndcg@k of the logged next item over test events (OOV targets count as misses)."""
    hist = torch.as_tensor(build_histories(ev["user"], ev["item"], args.hist_num, ev["n_items"]))
    rows = torch.as_tensor(np.flatnonzero(ev["is_test"]))
    with torch.no_grad():
        logits, _ = net(torch.as_tensor(ev["user"])[rows], hist[rows])
        target = torch.as_tensor(ev["item"])[rows]
        ok = target < ev["n_items"]
        t = target.clamp(max=ev["n_items"] - 1)
        rank = (logits > logits.gather(1, t[:, None])).sum(1)
        gain = torch.where(ok & (rank < k), 1 / torch.log2(rank.double() + 2), torch.zeros(()).double())
    return float(gain.mean())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in vars(Args()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = Args(**vars(parser.parse_args()))
    out = train(args)
    print(f"test ndcg@10: {next_item_ndcg(out['net'], load_events(args.data), args):.4f}")
