"""Reference SASRec on a prepared topkrec dataset: the next-item bar of issue 12.

    python benchmarks/reference_sasrec.py --data DATASET_DIR [--max-len 50 --blocks 2 --dim 64 --loss ce ...]

An independent implementation of SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation",
ICDM 2018), written from the paper, not from topkrec's agent code:

- input: the user's item sequence (no user id, no event type), item embedding × √d plus a learned
  positional embedding, dropout; left-padded to ``max_len``;
- ``blocks`` × (layer norm → causal multi-head self-attention → dropout → residual; layer norm →
  point-wise feed-forward (Linear, ReLU, dropout, Linear) → dropout → residual), then a final layer norm;
- the score of item i after position t is ⟨h_t, e_i⟩ with the *input* item embedding table (shared, as in
  the paper's prediction layer);
- trained on every position of each user's train sequence: the sequence is cut from its end into windows
  of ``max_len`` targets (input = the items before each target inside the window), so every train event
  but a user's first is a target exactly once;
- loss ``ce`` (default): full-softmax cross-entropy over the catalogue at every position, which measures
  clearly better than the paper's sampled loss on small data (Petrov & Macdonald, RecSys 2023, gSASRec);
  ``bce``: the paper's binary cross-entropy with one uniformly sampled negative per position.

Data and metrics are topkrec's own: the train split of the prepared dataset, minus a validation tail
(the last ``val_size`` share of each user's train events, by the same rule ``prepare`` uses for the test
split) that drives early stopping on val ndcg@10; the best epoch's weights are scored on every test event
from the history before it (train tail and earlier test events, the last ``max_len`` items) through
``topkrec.evaluate.evaluator.evaluate_scorer``, so ndcg@10 / recall@10 / mrr are the numbers ``topkrec
evaluate`` prints for its models on the same events (test items unseen in train count as misses).
Its OPE columns use the popularity policy as the logging propensity and are not meaningful here.

The last line printed is one JSON object with ``dataset``, ``model``, ``ndcg@10``, ``recall@10``, ``mrr``,
``train_s`` and ``settings`` (the keys of a ``bench_quality.py`` result, DESIGN §9).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from topkrec.data.dataset import Dataset
from topkrec.data.transitions import TransitionBatch, Transitions, build_transitions, user_starts
from topkrec.evaluate.evaluator import EvalConfig, evaluate_scorer, popularity_scorer
from topkrec.evaluate.metrics import ndcg_from_rank, target_rank

logger = logging.getLogger("reference_sasrec")

__all__ = [
    "SASRec",
    "SASRecConfig",
    "SASRecResult",
    "fit_mask",
    "run_sasrec",
    "train_windows",
    "validation_mask",
    "window_positions",
]


@dataclass(frozen=True)
class SASRecConfig:
    """Hyper-parameters; the defaults are the paper's for sparse data (d 50→64, 2 blocks, 1 head, dropout 0.2)."""

    max_len: int = 50
    """Longest history the model reads (the paper's n: 200 for ML-1M, 50 for the sparser sets)."""
    dim: int = 64
    """Width of the embeddings and of every block."""
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    loss: str = "ce"
    """ce = full-softmax cross-entropy at every position; bce = the paper's loss, one sampled negative."""
    lr: float = 1e-3
    batch_size: int = 128
    """Windows (sequences of up to ``max_len`` targets) per step."""
    max_epochs: int = 200
    patience: int = 5
    """Stop after this many epochs without a better val ndcg@10."""
    val_size: float = 0.1
    """Share of each user's train events held out (at its end) for early stopping; 0 = train max_epochs."""
    weight_decay: float = 0.0
    seed: int = 0
    k: int = 10


@dataclass
class SASRecResult:
    metrics: dict[str, Any]
    """The ``ModelMetrics.as_dict()`` of the test split (ndcg@K, recall@K, mrr, coverage, …)."""
    train_seconds: float
    """Wall-clock of the training loop, validation passes included."""
    best_epoch: int
    epochs_run: int
    val_ndcg: float


# ------------------------------------------------------------------------------------------------- splits
def validation_mask(dataset: Dataset, val_size: float) -> np.ndarray:
    """(E,) True for the validation events: each user's last train events, by ``prepare``'s test rule.

    A user with n > 3 train events keeps the first round((1 − val_size)·n) of them for fitting (Python's
    half-to-even rounding, as ``np.round``); users with ≤ 3 train events have no validation event.
    """
    train = ~np.asarray(dataset.is_test, dtype=bool)
    val = np.zeros(dataset.n_events, dtype=bool)
    if val_size <= 0:
        return val
    user = np.asarray(dataset.user, dtype=np.int64)
    n_train = np.bincount(user[train], minlength=dataset.n_users)  # (U,)
    # Train events come first in each user's block (the test split is each user's tail).
    rank = np.arange(dataset.n_events) - user_starts(user)  # position within the user's events
    keep = np.round((1.0 - val_size) * n_train).astype(np.int64)
    keep = np.where(n_train > 3, keep, n_train)
    val[train & (rank >= keep[user])] = True
    return val


def fit_mask(dataset: Dataset, val: np.ndarray) -> np.ndarray:
    """(E,) True for the events the model is fitted on: train split minus validation."""
    return ~np.asarray(dataset.is_test, dtype=bool) & ~val


def window_positions(dataset: Dataset, fit: np.ndarray, max_len: int) -> torch.Tensor:
    """(W, max_len) event positions of the targets of each training window, −1 where the window is empty.

    Each user's fitted events (the leading ``fit`` events of the user's block) are cut from their end into
    windows of ``max_len`` targets; the input of the target at position p is the item at p − 1. Every
    fitted event except a user's first is a target exactly once; a user's first window is left-padded.
    """
    user = np.asarray(dataset.user, dtype=np.int64)
    start = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])  # first event of each user block
    n_fit = np.add.reduceat(fit.astype(np.int64), start) if start.size else np.zeros(0, dtype=np.int64)
    n_win = -(-np.maximum(n_fit - 1, 0) // max_len)  # ceil(targets / max_len)
    owner = np.repeat(np.arange(start.size), n_win)  # user block of each window
    w = np.arange(owner.size) - np.repeat(np.cumsum(n_win) - n_win, n_win)  # 0 = the block's last window
    target_end = start[owner] + n_fit[owner] - w * max_len  # exclusive end (global position)
    target_pos = target_end[:, None] - max_len + np.arange(max_len)[None, :]  # (W, L)
    return torch.as_tensor(np.where(target_pos >= (start[owner] + 1)[:, None], target_pos, -1))


def train_windows(dataset: Dataset, fit: np.ndarray, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, max_len) input and target item windows (``window_positions``); pads are the index ``n_items``."""
    target_pos = window_positions(dataset, fit, max_len)
    items = torch.as_tensor(np.asarray(dataset.item, dtype=np.int64))
    valid = target_pos >= 0
    pad = torch.full_like(target_pos, dataset.pad_index)
    inputs = torch.where(valid, items[(target_pos - 1).clamp_min(0)], pad)
    targets = torch.where(valid, items[target_pos.clamp_min(0)], pad)
    return inputs, targets


# ------------------------------------------------------------------------------------------------- model
class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, n, d/h)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed[:, None], dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + FFN(LN(x)) (the paper's §III-B/C, eq. 4–5)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), allowed))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


def attention_mask(real: torch.Tensor) -> torch.Tensor:
    """(B, L, L) bool: query i may attend key j when j ≤ i and j is a real item — and always to itself,
    so a pad query (whose output is never used) does not produce NaNs from an all-masked row."""
    n = real.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=real.device).tril()
    eye = torch.eye(n, dtype=torch.bool, device=real.device)
    return (causal[None] & real[:, None, :]) | eye[None]


class SASRec(nn.Module):
    def __init__(self, n_items: int, config: SASRecConfig) -> None:
        super().__init__()
        self.n_items = n_items
        self.config = config
        d = config.dim
        self.item_embedding = nn.Embedding(n_items + 1, d, padding_idx=n_items)  # last row = pad/OOV
        self.position_embedding = nn.Embedding(config.max_len, d)
        self.input_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(d, config.heads, config.dropout) for _ in range(config.blocks))
        self.final_norm = nn.LayerNorm(d)
        nn.init.normal_(self.item_embedding.weight, std=d**-0.5)
        nn.init.normal_(self.position_embedding.weight, std=d**-0.5)
        with torch.no_grad():
            self.item_embedding.weight[n_items].zero_()

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded item windows → (B, L, d) hidden state after each position."""
        real = items != self.n_items
        length = items.shape[1]
        pos = torch.arange(self.config.max_len - length, self.config.max_len, device=items.device)
        x = self.item_embedding(items) * math.sqrt(self.config.dim) + self.position_embedding(pos)[None]
        x = self.input_dropout(x) * real[..., None]
        allowed = attention_mask(real)
        for block in self.blocks:
            x = block(x, allowed) * real[..., None]
        return self.final_norm(x)

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(…, d) → (…, n_items) scores against the shared item embeddings (pad row excluded)."""
        return hidden @ self.item_embedding.weight[: self.n_items].t()

    def score(self, batch: TransitionBatch) -> torch.Tensor:
        """``evaluate_scorer``'s interface: the (B, n_items) scores after the last history position (no user
        embedding, no event types: the item history is the whole state)."""
        return self.item_logits(self(batch.history[:, -self.config.max_len :])[:, -1])


def sequence_loss(model: SASRec, inputs: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    hidden = model(inputs)  # (B, L, d)
    real = targets != model.n_items
    h, t = hidden[real], targets[real]  # (P, d), (P,)
    if loss == "ce":
        return F.cross_entropy(model.item_logits(h), t)
    if loss == "bce":
        negative = torch.randint(0, model.n_items - 1, t.shape, device=t.device)
        negative = negative + (negative >= t).long()  # uniform over the items ≠ target
        pos = (h * model.item_embedding(t)).sum(-1)
        neg = (h * model.item_embedding(negative)).sum(-1)
        return F.binary_cross_entropy_with_logits(
            torch.cat([pos, neg]), torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])
        )
    raise ValueError(f"unknown loss {loss!r}; use ce or bce")


# ------------------------------------------------------------------------------------------------- run
@torch.no_grad()
def ndcg_at_k(model: SASRec, events: Transitions, k: int, chunk: int = 512) -> float:
    """Mean next-item ndcg@k of ``model`` on ``events`` (the validation pass; test uses evaluate_scorer)."""
    model.eval()
    total = 0.0
    for s in range(0, len(events), chunk):
        b = events.batch(torch.arange(s, min(s + chunk, len(events))))
        total += float(ndcg_from_rank(target_rank(model.score(b), b.action), k).sum())
    model.train()
    return total / max(len(events), 1)


def run_sasrec(data: Path | str, config: SASRecConfig = SASRecConfig()) -> SASRecResult:
    """Train SASRec on the prepared dataset's train split and score its test split with topkrec's evaluator."""
    dataset = Dataset.load(Path(data))
    torch.manual_seed(config.seed)
    val = validation_mask(dataset, config.val_size)
    inputs, targets = train_windows(dataset, fit_mask(dataset, val), config.max_len)
    all_train = build_transitions(dataset, "train", config.max_len, history="all")  # its own state: every item
    val_events = dataclasses.replace(all_train, rows=torch.as_tensor(np.flatnonzero(val)))
    model = SASRec(dataset.n_items, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.98), weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    best_ndcg, best_epoch, best_state = -1.0, 0, {k: v.clone() for k, v in model.state_dict().items()}
    epoch = 0
    t0 = time.perf_counter()
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        perm = torch.randperm(inputs.shape[0], generator=generator)
        total = 0.0
        for s in range(0, perm.numel(), config.batch_size):
            idx = perm[s : s + config.batch_size]
            loss = sequence_loss(model, inputs[idx], targets[idx], config.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.item_embedding.weight[dataset.n_items].zero_()
            total += float(loss.detach()) * idx.numel()
        if len(val_events) == 0:
            best_epoch, best_state = epoch, {k: v.clone() for k, v in model.state_dict().items()}
            logger.info("epoch %d loss %.4f", epoch, total / perm.numel())
            continue
        ndcg = ndcg_at_k(model, val_events, config.k)
        logger.info("epoch %d loss %.4f val ndcg@%d %.4f", epoch, total / perm.numel(), config.k, ndcg)
        if ndcg > best_ndcg:
            best_ndcg, best_epoch = ndcg, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= config.patience:
            break
    train_seconds = time.perf_counter() - t0
    model.load_state_dict(best_state)
    model.eval()
    test = build_transitions(dataset, "test", config.max_len, history="all")
    counts = torch.as_tensor(dataset.train_item_counts(), dtype=torch.float64)
    chunk = 512
    with torch.no_grad():  # the popularity policy stands in as the logging propensity of the OPE columns
        pop = popularity_scorer(counts)
        logp = []
        for s in range(0, len(test), chunk):
            b = test.batch(torch.arange(s, min(s + chunk, len(test))))
            lp = torch.log_softmax(pop(b), 1).gather(1, b.action.clamp(max=dataset.n_items - 1)[:, None])
            logp.append(torch.where(b.action[:, None] < dataset.n_items, lp, torch.full_like(lp, -math.inf))[:, 0])
        behavior_logp = torch.cat(logp)
        metrics = evaluate_scorer(
            model.score, test, test.first_per_user(), counts, behavior_logp, EvalConfig(k=config.k), name="sasrec"
        )
    return SASRecResult(metrics.as_dict(), train_seconds, best_epoch, epoch, best_ndcg)


def main(argv: list[str] | None = None) -> None:
    defaults = SASRecConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="prepared dataset directory (`topkrec prepare`)")
    for f in dataclasses.fields(SASRecConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)), default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the dev machine is shared)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    overrides = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(SASRecConfig) if getattr(args, f.name) is not None
    }
    config = dataclasses.replace(defaults, **overrides)
    result = run_sasrec(args.data, config)
    m = result.metrics
    k = config.k
    print(
        f"SASRec ({config.loss}) on {args.data}: ndcg@{k} {m[f'ndcg@{k}']:.4f}  recall@{k} {m[f'recall@{k}']:.4f}  "
        f"mrr {m['mrr']:.4f}  (best epoch {result.best_epoch}/{result.epochs_run}, val ndcg@{k} "
        f"{result.val_ndcg:.4f}, {result.train_seconds:.0f} s)"
    )
    line = {
        "dataset": str(args.data),
        "model": "sasrec",
        f"ndcg@{k}": m[f"ndcg@{k}"],
        f"recall@{k}": m[f"recall@{k}"],
        "mrr": m["mrr"],
        "coverage": m["coverage"],
        "tail_share": m["tail_share"],
        "train_s": round(result.train_seconds, 2),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "val_ndcg@10": result.val_ndcg,
        "settings": dataclasses.asdict(config),
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
