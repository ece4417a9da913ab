"""Pretraining throughput: our step (index batches from tensors, vectorised negatives) vs a reference-style
loop (a per-sample torch Dataset returning dicts, negatives drawn per sample, DataLoader + default collate),
with the same model, loss, optimizer and data, in one process, so the ratio is fair on a shared machine.

    python benchmarks/bench_pretrain.py [--size small|reference] [--data DATASET_DIR] [--seconds 30]
        [--batch-size 2048] [--device cpu] [--threads N] [--profile-steps 20]

Four loops, interleaved step by step: ``ours`` (the default step: sparse embedding rows + SparseAdam),
``ours_dense`` (our step with dense embedding gradients + Adam, i.e. only the data path differs from the
reference), ``ours_bf16`` (the default step with ``--bf16-cpu``; on CUDA the same as ``ours``) and
``reference`` (per-sample dict Dataset + DataLoader, dense embeddings + Adam, as a reference pipeline is
written). Without --data a planted-block dataset with side features is built:
``small`` = 10 000 users × 4 000 items, ``reference`` = 80 000 users × 160 000 items (the reference
dataset's size). The last line is one JSON object: samples/s of each loop and the ratios.

Then, for ``ours``: the seconds of one epoch as ``topkrec pretrain`` runs it (the train pairs at the measured
rate plus one ``evaluate``, timed), and where a step's time goes — CPU time per phase (negative sampling,
forward, backward, dense Adam, sparse Adam) and torch.profiler's own-time per op bucket (matmuls, batch norm,
ReLU, gathers/scatters, sorts, copies, the rest), printed as a table and kept in the JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from topkrec.data.dataset import Dataset
from topkrec.device import resolve_device
from topkrec.embeddings.config import PretrainConfig
from topkrec.embeddings.losses import cosine_loss
from topkrec.embeddings.planted import planted_block_dataset
from topkrec.embeddings.train import PretrainTrainer, positive_pairs

logger = logging.getLogger("bench_pretrain")
T = TypeVar("T")


def endless(epoch: Callable[[], Iterable[T]]) -> Iterator[T]:
    """The batches of ``epoch()``, then of a fresh ``epoch()``, forever (small data has few per epoch)."""
    while True:
        yield from epoch()


class ReferenceStyleDataset(torch.utils.data.Dataset):
    """What a per-sample pipeline does: one dict per (user, item) pair, a negative drawn by rejection."""

    def __init__(self, dataset: Dataset, users: np.ndarray, items: np.ndarray, seed: int) -> None:
        self.users, self.items, self.n_items = users, items, dataset.n_items
        self.user_features = {k: v for k, v in sorted(dataset.user_features.items())}
        self.item_features = {k: v for k, v in sorted(dataset.item_features.items())}
        self.consumed: dict[int, set[int]] = {}
        for u, i in zip(users.tolist(), items.tolist(), strict=True):
            self.consumed.setdefault(u, set()).add(i)
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def __getitem__(self, idx: int) -> dict[str, Any]:
        user, item = int(self.users[idx]), int(self.items[idx])
        neg = self.rng.randrange(self.n_items)
        while neg in self.consumed[user]:
            neg = self.rng.randrange(self.n_items)
        sample = {
            "user": torch.tensor(user, dtype=torch.long),
            "item": torch.tensor(item, dtype=torch.long),
            "neg_item": torch.tensor(neg, dtype=torch.long),
        }
        for name, codes in self.user_features.items():
            sample[f"user_{name}"] = torch.tensor(codes[user], dtype=torch.long)
        for name, codes in self.item_features.items():
            sample[f"item_{name}"] = torch.tensor(codes[item], dtype=torch.long)
            sample[f"neg_{name}"] = torch.tensor(codes[neg], dtype=torch.long)
        return sample


def reference_step(trainer: PretrainTrainer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The same model, loss and optimizer as ``trainer.step``, fed from a collated dict batch."""
    model, dev = trainer.model, trainer.device
    model.train()
    ut, it = model.user_tower, model.item_tower
    users = batch["user"].to(dev)
    user_codes = torch.stack([batch[f"user_{n}"] for n in ut.feature_names], 1).to(dev) if ut.feature_names else None
    items = torch.cat([batch["item"], batch["neg_item"]]).to(dev)
    item_codes = None
    if it.feature_names:
        pos_codes = torch.stack([batch[f"item_{n}"] for n in it.feature_names], 1)
        neg_codes = torch.stack([batch[f"neg_{n}"] for n in it.feature_names], 1)
        item_codes = torch.cat([pos_codes, neg_codes]).to(dev)
    u = ut(users, user_codes)
    v = it(items, item_codes)
    b = users.shape[0]
    scores = (u.repeat(2, 1) * v).sum(1)
    loss = cosine_loss(scores[:b], scores[b:, None])
    trainer.zero_grad()
    loss.backward()
    trainer.optimizer_step()
    return loss.detach()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ours_batches(trainer: PretrainTrainer) -> Iterator[int]:
    """Run our training step forever; yield the number of samples after each step."""
    pairs = trainer.train_pairs
    while True:
        for idx in trainer.batches():
            trainer.step(pairs.users[idx], pairs.items[idx])
            yield idx.numel()


def reference_batches(trainer: PretrainTrainer, loader: Any) -> Iterator[int]:
    """Run the reference-style loop forever; yield the number of samples after each step."""
    while True:
        for batch in loader:
            reference_step(trainer, batch)
            yield int(batch["user"].shape[0])


def timed(steps: Iterator[int], seconds: float, device: torch.device) -> tuple[int, float, int]:
    """Run steps for about ``seconds``: (samples, elapsed seconds, steps), at least one step."""
    _sync(device)
    t0 = time.perf_counter()
    samples = n_steps = 0
    while n_steps == 0 or time.perf_counter() - t0 < seconds:
        samples += next(steps)
        n_steps += 1
    _sync(device)
    return samples, time.perf_counter() - t0, n_steps


def time_data_paths(
    trainer: PretrainTrainer, reference: ReferenceStyleDataset, batch_size: int, device: torch.device, n: int = 20
) -> tuple[float, float]:
    """Samples/s of producing batches alone (no model): our index batch + vectorised negatives vs
    the per-sample DataLoader (moved to the device), interleaved batch by batch."""
    loader = endless(lambda: torch.utils.data.DataLoader(reference, batch_size=batch_size, shuffle=True, num_workers=0))
    pairs = trainer.train_pairs
    idx_batches = endless(trainer.batches)
    t_ours = t_ref = 0.0
    samples_ours = samples_ref = 0
    for _ in range(n):
        t0 = time.perf_counter()
        idx = next(idx_batches)
        users, items = pairs.users[idx], pairs.items[idx]
        trainer.sampler.sample(users, trainer.config.neg_items)
        _sync(device)
        t1 = time.perf_counter()
        batch = next(loader)
        _ = {k: v.to(device) for k, v in batch.items()}
        _sync(device)
        t2 = time.perf_counter()
        t_ours, t_ref = t_ours + t1 - t0, t_ref + t2 - t1
        samples_ours, samples_ref = samples_ours + int(items.shape[0]), samples_ref + int(batch["user"].shape[0])
    return samples_ours / t_ours, samples_ref / t_ref


_BUCKETS = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm")),
    ("batch norm", ("aten::native_batch_norm", "aten::native_batch_norm_backward")),
    ("ReLU", ("aten::clamp_min", "aten::clamp_min_", "aten::threshold_backward", "aten::relu", "aten::relu_")),
    ("gathers / scatters", ("aten::index_select", "aten::index_add_", "aten::index", "aten::embedding")),
    ("sorts (coalescing rows)", ("aten::sort", "aten::unique_consecutive", "aten::_unique2")),
    ("copies / cat", ("aten::copy_", "aten::clone", "aten::cat", "aten::_to_copy")),
)


def profile_ours(trainer: PretrainTrainer, steps: int) -> dict[str, Any]:
    """Where our step's time goes: CPU ms per phase (median over ``steps``) and per op bucket (profiler)."""
    from torch.profiler import ProfilerActivity, profile

    pairs, cfg = trainer.train_pairs, trainer.config
    batches = endless(trainer.batches)
    phases: dict[str, list[float]] = defaultdict(list)
    for _ in range(steps):
        idx = next(batches)
        users, items = pairs.users[idx], pairs.items[idx]
        t0 = time.process_time()
        negatives = trainer.sampler.sample(users, cfg.neg_items) if cfg.loss != "softmax" else None
        t1 = time.process_time()
        loss = trainer.train_module(users, items, negatives)
        t2 = time.process_time()
        trainer.zero_grad()
        loss.backward()
        t3 = time.process_time()
        trainer.optimizers[0].step()
        t4 = time.process_time()
        for opt in trainer.optimizers[1:]:
            opt.step()
        t5 = time.process_time()
        for name, dt in zip(
            ("negative sampling", "forward", "backward", "dense Adam", "sparse Adam"),
            (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4),
            strict=True,
        ):
            phases[name].append(dt * 1e3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            idx = next(batches)
            trainer.step(pairs.users[idx], pairs.items[idx])
    buckets: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        name = next((b for b, ops in _BUCKETS if event.key in ops), "other (elementwise, autograd, Python)")
        buckets[name] += event.self_cpu_time_total / 1e3 / steps
    return {
        "phases_cpu_ms": {k: float(np.median(v)) for k, v in phases.items()},
        "buckets_ms": dict(sorted(buckets.items(), key=lambda kv: -kv[1])),
    }


def print_profile(prof: dict[str, Any]) -> None:
    phases, buckets = prof["phases_cpu_ms"], prof["buckets_ms"]
    total_p, total_b = sum(phases.values()), sum(buckets.values())
    lines = [
        f"\nours, one step: {total_p:.1f} CPU ms (median per phase)",
        "| phase | CPU ms | share |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v:.2f} | {100 * v / total_p:.1f} % |" for k, v in phases.items()]
    lines += ["", "| op bucket (profiler, own time) | share |", "|---|---|"]
    lines += [f"| {k} | {100 * v / total_b:.1f} % |" for k, v in buckets.items()]
    logger.info("%s", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="dataset directory (default: planted blocks)")
    parser.add_argument("--size", choices=("small", "reference"), default="small", help="planted data size")
    parser.add_argument("--seconds", type=float, default=30.0, help="timed seconds per loop (about)")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--profile-steps", type=int, default=20, help="steps of ours profiled (0: no breakdown)")
    args = parser.parse_args()
    if args.threads > 0:
        # On an oversubscribed machine OpenMP regions spin: 1 thread measured 40x faster for batch norm.
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = resolve_device(args.device)  # fail fast, before building the data

    if args.data is not None:
        dataset = Dataset.load(args.data)
        source = str(args.data)
    elif args.size == "small":
        dataset = planted_block_dataset(n_groups=50, users_per_group=200, items_per_group=80, events_per_user=30)
        source = "planted_block_dataset(50 groups × 200 users × 80 items, 30 events/user)"
    else:
        dataset = planted_block_dataset(n_groups=2000, users_per_group=40, items_per_group=80, events_per_user=20)
        source = "planted_block_dataset(2000 groups × 40 users × 80 items, 20 events/user)"
    config = PretrainConfig(batch_size=args.batch_size)  # reference defaults: cosine, 1 negative, lr 5e-4
    dense_config = PretrainConfig(batch_size=args.batch_size, sparse_embeddings=False)
    bf16_config = PretrainConfig(batch_size=args.batch_size, bf16_on_cpu=True)
    users, items = positive_pairs(dataset, test=False)
    logger.info("data %s: %d train pairs, %d users, %d items", source, users.size, dataset.n_users, dataset.n_items)

    loaders_dataset = ReferenceStyleDataset(dataset, users, items, seed=0)
    loops = {
        "ours": ours_batches(PretrainTrainer(dataset, config, device)),
        "ours_dense": ours_batches(PretrainTrainer(dataset, dense_config, device)),
        "ours_bf16": ours_batches(PretrainTrainer(dataset, bf16_config, device)),
        "reference": reference_batches(
            PretrainTrainer(dataset, dense_config, device),
            torch.utils.data.DataLoader(
                loaders_dataset,
                batch_size=args.batch_size,
                shuffle=True,
                num_workers=0,
            ),
        ),
    }
    for steps in loops.values():  # warm-up: allocator, optimizer state, first DataLoader iterator
        next(steps), next(steps)
    # Step-by-step interleaving (one step of each loop per cycle), so load from other processes on a
    # shared machine hits every loop alike; the speed-up is also given as the median of per-cycle ratios.
    totals = {name: [0, 0.0, 0] for name in loops}
    cycle_ratios: list[float] = []
    deadline = time.perf_counter() + 3 * args.seconds
    while time.perf_counter() < deadline or not cycle_ratios:
        cycle = {}
        for name, steps in loops.items():
            samples, elapsed, n = timed(steps, 0.0, device)  # exactly one step
            totals[name] = [totals[name][0] + samples, totals[name][1] + elapsed, totals[name][2] + n]
            cycle[name] = samples / elapsed
        cycle_ratios.append(cycle["ours"] / cycle["reference"])
        logger.info("cycle %d  %s", len(cycle_ratios), "  ".join(f"{k} {v:.0f}/s" for k, v in cycle.items()))
    rate = {name: t[0] / t[1] for name, t in totals.items()}
    data_rate = time_data_paths(PretrainTrainer(dataset, config, device), loaders_dataset, args.batch_size, device)
    logger.info("data path only: ours %.0f samples/s, reference %.0f samples/s", *data_rate)
    # One epoch as `topkrec pretrain` runs it: every train pair at the measured rate, then one evaluation.
    eval_trainer = PretrainTrainer(dataset, config, device)
    t0 = time.perf_counter()
    eval_trainer.evaluate()
    _sync(device)
    eval_seconds = time.perf_counter() - t0
    n_pairs = int(users.size)
    epoch_ours = n_pairs / rate["ours"] + eval_seconds
    epoch_reference = n_pairs / rate["reference"]
    logger.info(
        "one epoch (%d pairs): ours %.1f s (eval %.1f s), reference-style loop %.1f s (train steps only)",
        n_pairs,
        epoch_ours,
        eval_seconds,
        epoch_reference,
    )
    profile = None
    if args.profile_steps > 0 and device.type == "cpu":
        profile = profile_ours(eval_trainer, args.profile_steps)
        print_profile(profile)

    print(
        json.dumps(
            {
                "benchmark": "pretrain_step",
                "device": device.type,
                "data": source,
                "batch_size": args.batch_size,
                "torch_threads": torch.get_num_threads(),
                "n_users": dataset.n_users,
                "n_items": dataset.n_items,
                "ours_samples_per_s": round(rate["ours"], 1),
                "ours_dense_samples_per_s": round(rate["ours_dense"], 1),
                "reference_samples_per_s": round(rate["reference"], 1),
                "ours_bf16_samples_per_s": round(rate["ours_bf16"], 1),
                "speedup": round(rate["ours"] / rate["reference"], 2),
                "speedup_bf16": round(rate["ours_bf16"] / rate["reference"], 2),
                "speedup_data_path_only": round(rate["ours_dense"] / rate["reference"], 2),
                "speedup_median_per_cycle": round(float(np.median(cycle_ratios)), 2),
                "steps": {name: t[2] for name, t in totals.items()},
                "data_path_ours_samples_per_s": round(data_rate[0], 1),
                "data_path_reference_samples_per_s": round(data_rate[1], 1),
                "data_path_speedup": round(data_rate[0] / data_rate[1], 2),
                "seconds_per_loop": args.seconds,
                "n_train_pairs": n_pairs,
                "eval_seconds": round(eval_seconds, 2),
                "epoch_seconds_ours": round(epoch_ours, 1),
                "epoch_seconds_reference_train_only": round(epoch_reference, 1),
                "epoch_speedup": round(epoch_reference / epoch_ours, 2),
                "profile": profile,
            }
        )
    )


if __name__ == "__main__":
    main()
