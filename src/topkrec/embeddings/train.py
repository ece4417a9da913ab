"""Two-tower pretraining loop (DESIGN §2): batches by index from device tensors, no per-sample Dataset.

``pretrain(dataset, config, device)`` returns the embeddings and per-epoch metrics; the CLI
(``topkrec pretrain``) writes them with ``topkrec.embeddings.artifact``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from topkrec.data.dataset import Dataset
from topkrec.embeddings.config import PretrainConfig
from topkrec.embeddings.losses import bce_loss, cosine_loss, in_batch_softmax_loss
from topkrec.embeddings.model import TwoTower
from topkrec.embeddings.sampling import NegativeSampler, consumed_keys, pair_keys
from topkrec.errors import DataError
from topkrec.metrics_log import MetricsLogger
from topkrec.progress import progress_bar

logger = logging.getLogger(__name__)


def roc_auc(pos_scores: np.ndarray, neg_scores: np.ndarray) -> float:
    """Area under the ROC curve of positives vs negatives (Mann–Whitney U, ties counted half)."""
    pos = np.asarray(pos_scores, dtype=np.float64).ravel()
    neg = np.asarray(neg_scores, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError("AUC needs at least one positive and one negative score")
    scores = np.concatenate([pos, neg])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # 1-based average rank of each distinct value: ranks of a tie group are averaged.
    group_rank = np.cumsum(counts) - (counts - 1) / 2.0
    pos_rank_sum = group_rank[inverse[: pos.size]].sum()
    return float((pos_rank_sum - pos.size * (pos.size + 1) / 2.0) / (pos.size * neg.size))


@dataclass(frozen=True)
class PairTensors:
    """Positive (user, item) pairs on the training device."""

    users: torch.Tensor  # (N,) int64
    items: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return int(self.users.shape[0])


def positive_pairs(dataset: Dataset, test: bool) -> tuple[np.ndarray, np.ndarray]:
    """Unique (user, item) pairs of one split, OOV items dropped (they have no embedding to learn)."""
    mask = (dataset.is_test == test) & (dataset.item < dataset.n_items) & (dataset.item >= 0)
    keys = np.unique(dataset.user[mask].astype(np.int64) * (dataset.n_items + 1) + dataset.item[mask])
    return keys // (dataset.n_items + 1), keys % (dataset.n_items + 1)


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float
    eval_loss: float | None
    eval_auc: float | None
    samples_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "eval_loss": self.eval_loss,
            "eval_auc": self.eval_auc,
            "samples_per_s": self.samples_per_s,
        }


@dataclass(frozen=True)
class PretrainResult:
    user: torch.Tensor  # (n_users, d) float32, CPU
    item: torch.Tensor  # (n_items + 1, d) float32, CPU, last row zeros
    epochs: list[EpochMetrics]
    config: PretrainConfig
    n_train_pairs: int
    n_eval_pairs: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def eval_auc(self) -> float | None:
        return self.epochs[-1].eval_auc if self.epochs else None

    def metrics(self) -> dict[str, Any]:
        """metrics.json content: DESIGN §9 keys ``epochs`` and ``eval_auc`` plus context."""
        return {
            "epochs": [e.to_dict() for e in self.epochs],
            "eval_auc": self.eval_auc,
            "eval_loss": self.epochs[-1].eval_loss if self.epochs else None,
            "train_loss": self.epochs[-1].train_loss if self.epochs else None,
            "loss": self.config.loss,
            "n_train_pairs": self.n_train_pairs,
            "n_eval_pairs": self.n_eval_pairs,
            **self.extra,
        }


def make_optimizers(model: torch.nn.Module, config: PretrainConfig) -> list[torch.optim.Optimizer]:
    """Adam for the dense layers; SparseAdam for the embedding tables when they have sparse gradients."""
    sparse = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse]
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    optimizers: list[torch.optim.Optimizer] = [torch.optim.Adam(dense, lr=config.lr, weight_decay=config.weight_decay)]
    if sparse:
        optimizers.append(torch.optim.SparseAdam(sparse, lr=config.lr))
    return optimizers


class PretrainTrainer:
    """Owns the model, optimizer, data tensors and samplers; ``step`` is one training step on a batch.

    Everything lives on ``device``: the pair tensors, the consumed-key array, the feature-code buffers and
    the random generator, so a step does no host↔device copies (the loss is synced once per epoch).
    """

    def __init__(self, dataset: Dataset, config: PretrainConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.n_items = dataset.n_items
        if dataset.n_items < 2 or dataset.n_users < 1:
            raise DataError(f"pretraining needs ≥ 1 user and ≥ 2 items (got {dataset.n_users} / {dataset.n_items})")
        tr_u, tr_i = positive_pairs(dataset, test=False)
        ev_u, ev_i = positive_pairs(dataset, test=True)
        if tr_u.size < 2:
            raise DataError("the dataset has fewer than 2 train (user, item) pairs; nothing to pretrain on")
        dev = self.device
        self.train_pairs = PairTensors(torch.from_numpy(tr_u).to(dev), torch.from_numpy(tr_i).to(dev))
        self.eval_pairs = PairTensors(torch.from_numpy(ev_u).to(dev), torch.from_numpy(ev_i).to(dev))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = TwoTower(
                dataset.n_users, dataset.n_items, dataset.user_features, dataset.item_features, config
            ).to(dev)
        self.optimizers = make_optimizers(self.model, config)
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(config.seed)
        self.sampler = NegativeSampler(
            consumed_keys(self.train_pairs.users, self.train_pairs.items, self.n_items), self.n_items, self.generator
        )
        # log q of each item for the in-batch softmax: its share of the train positives (Yi et al. 2019).
        counts = torch.bincount(self.train_pairs.items, minlength=self.n_items).clamp(min=1).double()
        self.item_log_q = (counts / counts.sum()).log().float()
        # Eval negatives are drawn once (excluding every consumed item, train and test) so epochs compare.
        self.eval_negatives = torch.empty((0, config.neg_items), dtype=torch.long, device=dev)
        if len(self.eval_pairs):
            all_keys = torch.unique(
                torch.cat(
                    [
                        pair_keys(self.train_pairs.users, self.train_pairs.items, self.n_items),
                        pair_keys(self.eval_pairs.users, self.eval_pairs.items, self.n_items),
                    ]
                )
            )
            eval_gen = torch.Generator(device=dev)
            eval_gen.manual_seed(config.seed + 1)
            self.eval_negatives = NegativeSampler(all_keys, self.n_items, eval_gen).sample(
                self.eval_pairs.users, config.neg_items
            )
        self.amp = self.device.type == "cuda" or config.bf16_on_cpu

    # ------------------------------------------------------------------ maths
    def batch_loss(self, users: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor | None) -> torch.Tensor:
        """Loss of (B,) positive pairs; ``negatives`` (B, k) for cosine / bce, unused by softmax."""
        cfg = self.config
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            if cfg.loss == "softmax":
                u = self.model.user_tower(users)
                v = self.model.item_tower(items)
                return in_batch_softmax_loss(u, v, items, self.item_log_q[items], cfg.temperature)
            assert negatives is not None
            scores = self.model(users, torch.cat([items[:, None], negatives], dim=1))  # (B, 1 + k)
        pos, neg = scores[:, 0].float(), scores[:, 1:].float()
        if cfg.loss == "cosine":
            return cosine_loss(pos, neg)
        return bce_loss(pos, neg, cfg.temperature)

    def step(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """One optimizer step on (B,) positive pairs; returns the detached loss (no host sync)."""
        self.model.train()
        negatives = None if self.config.loss == "softmax" else self.sampler.sample(users, self.config.neg_items)
        loss = self.batch_loss(users, items, negatives)
        self.zero_grad()
        loss.backward()
        self.optimizer_step()
        return loss.detach()

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def optimizer_step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def batches(self) -> list[torch.Tensor]:
        """Index tensors of one shuffled epoch; a trailing batch of one row is dropped (batch norm)."""
        n = len(self.train_pairs)
        perm = torch.randperm(n, generator=self.generator, device=self.device)
        out = list(perm.split(self.config.batch_size))
        if out and out[-1].numel() < 2:
            out.pop()
        return out

    def steps_per_epoch(self) -> int:
        n, b = len(self.train_pairs), self.config.batch_size
        return n // b + (1 if n % b >= 2 else 0)

    @torch.no_grad()
    def evaluate(self) -> tuple[float | None, float | None]:
        """(eval loss, eval AUC) on the held-out pairs with the fixed eval negatives; (None, None) if none."""
        if len(self.eval_pairs) == 0:
            return None, None
        self.model.eval()
        cfg = self.config
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        n_rows = 0
        pos_all, neg_all = [], []
        for s in range(0, len(self.eval_pairs), cfg.batch_size):
            users = self.eval_pairs.users[s : s + cfg.batch_size]
            items = self.eval_pairs.items[s : s + cfg.batch_size]
            negs = self.eval_negatives[s : s + cfg.batch_size]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                scores = self.model(users, torch.cat([items[:, None], negs], dim=1)).float()
            pos_all.append(scores[:, 0])
            neg_all.append(scores[:, 1:])
            if cfg.loss == "softmax":
                if users.shape[0] < 2:
                    continue
                batch_loss = self.batch_loss(users, items, None)
            elif cfg.loss == "cosine":
                batch_loss = cosine_loss(scores[:, 0], scores[:, 1:])
            else:
                batch_loss = bce_loss(scores[:, 0], scores[:, 1:], cfg.temperature)
            loss_sum += batch_loss.double() * users.shape[0]
            n_rows += users.shape[0]
        auc = roc_auc(torch.cat(pos_all).cpu().numpy(), torch.cat(neg_all).cpu().numpy())
        return (float(loss_sum) / n_rows if n_rows else None), auc

    def popularity_auc(self) -> float | None:
        """Eval AUC of the popularity baseline (score = the item's train count) on the same eval pairs and
        negatives: what the towers must beat to have learned more than popularity."""
        if len(self.eval_pairs) == 0:
            return None
        counts = torch.bincount(self.train_pairs.items, minlength=self.n_items).double()
        pos = counts[self.eval_pairs.items].cpu().numpy()
        neg = counts[self.eval_negatives].cpu().numpy()
        return roc_auc(pos, neg)

    # ------------------------------------------------------------------ loop
    def fit(self, progress: bool = False, metrics_logger: MetricsLogger | None = None) -> PretrainResult:
        cfg = self.config
        history: list[EpochMetrics] = []
        total_steps = cfg.epochs * self.steps_per_epoch()
        step = 0
        with progress_bar(total_steps, "pretrain", enabled=progress) as bar:
            for epoch in range(1, cfg.epochs + 1):
                t0 = time.perf_counter()
                loss_sum = torch.zeros((), device=self.device)
                n_samples = 0
                for idx in self.batches():
                    loss = self.step(self.train_pairs.users[idx], self.train_pairs.items[idx])
                    loss_sum += loss * idx.numel()
                    n_samples += idx.numel()
                    step += 1
                    bar.update(1, info=f"epoch {epoch}/{cfg.epochs}")
                train_loss = float(loss_sum) / max(n_samples, 1)  # one host sync per epoch
                elapsed = time.perf_counter() - t0
                if not math.isfinite(train_loss):
                    raise FloatingPointError(f"train loss became {train_loss} in epoch {epoch}; lower --lr")
                eval_loss, eval_auc = self.evaluate()
                m = EpochMetrics(epoch, train_loss, eval_loss, eval_auc, n_samples / max(elapsed, 1e-9))
                history.append(m)
                bar.update(0, info=f"epoch {epoch}/{cfg.epochs} loss {train_loss:.4f} auc {_fmt(eval_auc)}")
                line = {"pretrain/train_loss": train_loss, "time/samples_per_s": m.samples_per_s}
                if eval_loss is not None and eval_auc is not None:
                    line.update({"eval/loss": eval_loss, "eval/auc": eval_auc})
                if metrics_logger is not None:
                    metrics_logger.log(step, {"epoch": epoch, **line})
                else:
                    logger.info("epoch %d %s", epoch, " ".join(f"{k}={v:.4g}" for k, v in line.items()))
        user, item = self.model.export()
        if self.sampler.n_unresolved:
            logger.warning(
                "%d sampled negatives were consumed items (users who consumed nearly every item)",
                self.sampler.n_unresolved,
            )
        return PretrainResult(
            user=user,
            item=item,
            epochs=history,
            config=cfg,
            n_train_pairs=len(self.train_pairs),
            n_eval_pairs=len(self.eval_pairs),
            extra={
                "popularity_eval_auc": self.popularity_auc(),
                "unresolved_negatives": self.sampler.n_unresolved,
                "device": self.device.type,
            },
        )


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def pretrain(
    dataset: Dataset,
    config: PretrainConfig,
    device: torch.device | str = "cpu",
    progress: bool = False,
    metrics_logger: MetricsLogger | None = None,
) -> PretrainResult:
    """Train the two towers on ``dataset``'s train split; evaluate each epoch on its test split."""
    return PretrainTrainer(dataset, config, device).fit(progress=progress, metrics_logger=metrics_logger)
