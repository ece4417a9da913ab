"""Training throughput: our step vs a reference-style implementation, on the same data, in one run.

    python benchmarks/bench_train.py [--items 50000 --users 10000 --events 200000 --steps 20 --rounds 3]
        [--data DATASET_DIR] [--threads N] [--no-real]

- **ours** (the synthetic case): ``topkrec.train.train_step`` — transitions kept as tensors, batches gathered by
  index, the fused linear + log-softmax + gather head (one (B, N) buffer), one fused Adam;
- **reference-style**: what the public pipeline does — a per-sample ``torch.utils.data.Dataset`` returning a
  dict per transition (history sliced per sample), ``DataLoader(batch_size=128, shuffle=True)`` with the
  default collate, ``nn.Linear`` heads, ``log_softmax`` + ``gather`` (the correct maths, not the (B, B)
  bug), and two default Adam optimizers (π and β̂);
- **matmul**: the rate of this machine's float32 GEMM measured in the same process, on a large square
  product and on the exact (B, h) × (h, N) shapes of the heads.

Both trainers use batch 128, full softmax, dense Adam, the reference widths (hist 10, embed 32, hidden 64)
and the same transitions. FLOPs per transition count the matmuls the maths needs: π forward, grad of W and
of the state (3 × 2hN), β̂ forward and grad of W (2 × 2hN; β̂ reads the detached state), plus the encoder.
Rounds alternate the measurements and the best of each is kept: the two cores are shared, so the
best round is the least disturbed one. The last line is one JSON object.

- **real**: what ``topkrec train --data DIR --embeddings EMB --preset seed`` runs, in this process and with
  the same thread settings: ``build_agent`` with frozen pretrained-shaped embeddings (random unit rows; the
  speed does not depend on their values), ``build_optimizer``, ``TrainData.build`` over the dataset's train
  split, and per step ``TrainData.batches`` → ``Transitions.batch`` → ``train_step`` with the loop's objective,
  ``IntervalMeter.add`` and the metrics flush every ``log_every`` steps — the body of ``train_agent`` without
  checkpoint writes. ``--data DIR`` is a prepared dataset directory; without it the reference-scale one is
  made first by the project's own commands: ``topkrec synth --users 100000 --items 52000`` then
  ``topkrec prepare --format tianchi`` (80 000 users after the reference sampling, 49 959 items, 3.27 M
  events; ~20 s), in a temporary directory.
- **allocator**: before importing torch the script sets ``THP_MEM_ALLOC_ENABLE=1`` as the ``topkrec`` command
  does (``topkrec.device.tune_cpu_allocator``: large CPU tensors on transparent huge pages);
  ``--no-malloc-tuning`` leaves it unset (the minor page faults per step are printed).
- **where the real step's time goes**: torch.profiler over ``--profile-steps`` real steps, each op's own CPU
  time put in one bucket — the heads' GEMMs (matmuls with a catalogue-sized operand), the other passes over
  (B, N) buffers (softmax, its gradient), gathers (user table, history, batch columns), the optimizer,
  allocation (``empty``/``zeros``/``fill``), the metrics meter — plus the same five head GEMMs timed alone
  (the floor), each head's forward + backward timed alone (β̂ on all B rows, π on the rewarded rows), the
  share of rewarded rows and the minor page faults per step (allocator). Printed as a table.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from topkrec.device import tune_cpu_allocator

# As the `topkrec` command does, before torch is imported: PyTorch reads the setting at its first allocation.
MALLOC_TUNED = "--no-malloc-tuning" not in sys.argv[1:] and tune_cpu_allocator()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from topkrec.data.dataset import Dataset, discounted_returns  # noqa: E402
from topkrec.data.transitions import build_transitions  # noqa: E402
from topkrec.policy.config import AgentConfig, TrainConfig  # noqa: E402
from topkrec.policy.model import Agent  # noqa: E402
from topkrec.policy.objective import corrected_policy_loss  # noqa: E402
from topkrec.train import TrainObjective, build_optimizer, train_step  # noqa: E402
from topkrec.train.build import build_agent, with_gamma  # noqa: E402
from topkrec.train.loop import IntervalMeter, TrainData, _objective  # noqa: E402


def make_dataset(n_users: int, n_items: int, n_events: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    user = np.sort(rng.integers(0, n_users, n_events)).astype(np.int32)
    ranks = np.arange(1, n_items + 1, dtype=np.float64)
    p = 1.0 / ranks
    item = rng.choice(n_items, size=n_events, p=p / p.sum()).astype(np.int32)
    ts = np.arange(n_events, dtype=np.int64) * 60
    session = (np.cumsum(np.r_[True, (user[1:] != user[:-1]) | (rng.random(n_events - 1) < 0.08)]) - 1).astype(np.int32)
    reward = rng.choice([1.0, 2.0, 3.0], size=n_events, p=[0.9, 0.07, 0.03]).astype(np.float32)
    return Dataset(
        user=user,
        item=item,
        behavior=np.array(["pv"] * n_events, dtype=object),
        reward=reward,
        ts=ts,
        session=session,
        is_test=np.zeros(n_events, dtype=bool),
        returns=discounted_returns(reward, session, 0.99),
        n_users=n_users,
        n_items=n_items,
    )


class ReferenceDataset(torch.utils.data.Dataset):
    """One dict per transition, as the reference's pandas-row datasets produce."""

    def __init__(self, ds: Dataset, hist_num: int) -> None:
        self.user, self.item, self.reward, self.returns = ds.user, ds.item, ds.reward, ds.returns
        starts = np.flatnonzero(np.r_[True, ds.user[1:] != ds.user[:-1]])
        self.start = np.repeat(starts, np.diff(np.r_[starts, len(ds.user)]))
        self.hist_num, self.pad = hist_num, ds.pad_index
        # the training transitions: train rows whose item is in the catalogue (test rows may be OOV = pad)
        self.rows = np.flatnonzero(~np.asarray(ds.is_test, dtype=bool) & (ds.item < ds.n_items))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:
        i = int(self.rows[j])
        past = self.item[max(self.start[i], i - self.hist_num) : i].tolist()
        hist = [self.pad] * (self.hist_num - len(past)) + past
        return {
            "user": torch.tensor(int(self.user[i])),
            "history": torch.tensor(hist),
            "action": torch.tensor(int(self.item[i])),
            "reward": torch.tensor(float(self.reward[i])),
            "return": torch.tensor(float(self.returns[i])),
        }


class ReferenceNet(nn.Module):
    def __init__(self, n_users: int, n_items: int, d: int = 32, hist: int = 10, hidden: int = 64) -> None:
        super().__init__()
        self.user_emb = nn.Embedding(n_users, d)
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=n_items)
        self.user_emb.weight.requires_grad_(False)
        self.item_emb.weight.requires_grad_(False)
        self.fc = nn.Linear(d * (hist + 1), hidden)
        self.pi = nn.Linear(hidden, n_items)
        self.beta = nn.Linear(hidden, n_items)

    def forward(self, user: torch.Tensor, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.relu(self.fc(torch.cat([self.user_emb(user), self.item_emb(history).flatten(1)], 1)))
        return self.pi(s), self.beta(s.detach())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Process CPU time per step of each timed loop (ms): unlike wall time it leaves out the time this process waits
# for a core, so on a shared machine it moves less between rounds (with one thread it is the step's own cost).
CPU_MS_PER_STEP: dict[str, list[float]] = defaultdict(list)


def run_reference(ds: Dataset, steps: int, batch: int, seed: int, device: torch.device) -> float:
    torch.manual_seed(seed)
    net = ReferenceNet(ds.n_users, ds.n_items).to(device)
    opt_pi = torch.optim.Adam(list(net.fc.parameters()) + list(net.pi.parameters()), lr=1e-5)
    opt_beta = torch.optim.Adam(net.beta.parameters(), lr=1e-5)
    loader = torch.utils.data.DataLoader(ReferenceDataset(ds, 10), batch_size=batch, shuffle=True, drop_last=True)
    it = iter(loader)
    done = 0
    t0 = 0.0
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            sync(device)
            t0 = time.perf_counter()
        b = {k: v.to(device) for k, v in next(it).items()}
        pi_logits, beta_logits = net(b["user"], b["history"])
        log_pi = F.log_softmax(pi_logits, 1).gather(1, b["action"][:, None]).squeeze(1)
        log_beta = F.log_softmax(beta_logits, 1).gather(1, b["action"][:, None]).squeeze(1)
        loss, _ = corrected_policy_loss(log_pi, log_beta, b["return"], "topk", 10)
        beta_loss = -log_beta.mean()
        opt_pi.zero_grad()
        opt_beta.zero_grad()
        (loss + beta_loss).backward()
        opt_pi.step()
        opt_beta.step()
        done += batch if i >= 2 else 0
    sync(device)
    return done / (time.perf_counter() - t0)


def run_ours(ds: Dataset, steps: int, batch: int, seed: int, device: torch.device, compile_step: bool = False) -> float:
    from topkrec.policy.config import PRESETS

    torch.manual_seed(seed)  # the reference's model and algorithm (--preset seed), as the reference-style loop
    agent = Agent(AgentConfig(ds.n_users, ds.n_items, **PRESETS["seed"]["agent"])).to(device)
    seed_train = {k: v for k, v in PRESETS["seed"]["train"].items() if k not in ("epochs", "batch_size")}
    cfg = TrainConfig(**{**seed_train, "correction": "topk"}, batch_size=batch, device=device.type)
    opt = build_optimizer(agent, cfg)
    tr = build_transitions(ds, "train", 10, device)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(tr), generator=gen).to(device)
    autocast = torch.bfloat16 if device.type == "cuda" else None
    # As train_agent runs it: the objective module built once, rewards known to be non-zero (no host sync).
    objective: torch.nn.Module = TrainObjective(agent, cfg, autocast)
    if compile_step:
        objective = torch.compile(objective)  # type: ignore[assignment]
    warmup = 3 if compile_step else 2
    t0 = c0 = 0.0
    done = 0
    for i in range(steps + warmup):
        if i == warmup:
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
        train_step(agent, opt, tr.batch(perm[i * batch : (i + 1) * batch]), cfg, autocast, True, objective)
        done += batch if i >= warmup else 0
    sync(device)
    CPU_MS_PER_STEP["ours"].append((time.process_time() - c0) / steps * 1e3)
    return done / (time.perf_counter() - t0)


SYNTH_USERS, SYNTH_ITEMS = 100_000, 52_000  # → 80 000 users, 49 959 items, 3.27 M events after prepare


def make_reference_scale_data(directory: Path, users: int, items: int) -> Path:
    """``topkrec synth`` + ``topkrec prepare --format tianchi`` into ``directory`` (the project's own commands)."""
    raw, data = directory / "raw", directory / "data"
    for args in (
        ["synth", "--out", str(raw), "--users", str(users), "--items", str(items)],
        ["prepare", "--format", "tianchi", "--input", str(raw), "--out", str(data)],
    ):
        subprocess.run([sys.executable, "-m", "topkrec", "--no-progress", *args], check=True, capture_output=True)
    return data


def measure_encoders(ds: Dataset, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Transitions/s of each ``--encoders`` entry on the real path with every other setting at train's defaults
    (token windows for all but concat), plus ``attention (rows)``: the attention encoder encoding each row's own
    window, what the windows save."""
    cases: list[tuple[str, AgentConfig, dict[str, Any]]] = []
    for name in (e.strip() for e in args.encoders.split(",") if e.strip()):
        cases.append((name, AgentConfig(encoder=name), {}))  # type: ignore[arg-type]
        if name == "attention":
            cases.append(("attention (rows)", AgentConfig(encoder="attention"), {"batching": "rows"}))
    rates: dict[str, float] = {}
    defaults = TrainConfig()
    for label, agent_config, settings in cases:
        path = RealPath(ds, defaults.batch_size, args.seed, device, False, agent_config, settings)
        rates[label] = path.rate(max(3, args.steps // 10))
        print(f"encoder {label}: {rates[label]:.0f} transitions/s (train's defaults otherwise)", file=sys.stderr)
    return rates


class RealPath:
    """The body of ``train_agent``'s loop on a prepared dataset, without checkpoint writes.

    Built as ``train_agent`` builds it (``build_agent``, ``build_optimizer``, ``TrainData.build``, the loop's
    objective, ``IntervalMeter``); ``step`` is one pass of the loop body. The embeddings are frozen and
    pretrained-shaped (random unit rows), as after ``topkrec pretrain``; ``embeddings=False`` trains without
    them (``train`` without ``--embeddings``: trainable tables).
    """

    def __init__(
        self,
        ds: Dataset,
        batch: int,
        seed: int,
        device: torch.device,
        embeddings: bool = True,
        agent_config: AgentConfig | None = None,
        train_settings: dict[str, Any] | None = None,
    ) -> None:
        from topkrec import distributed
        from topkrec.metrics_log import MetricsLogger
        from topkrec.policy.artifact import TrainerState
        from topkrec.policy.config import PRESETS

        # By default the reference's model and algorithm (--preset seed: concat over 10 bare items, the top-K
        # correction on session returns), the shapes the reference-style loop runs; ``agent_config`` and
        # ``train_settings`` measure others (the encoders' table). epochs: large, so that a long benchmark
        # never runs out of batches.
        seed_train = {k: v for k, v in PRESETS["seed"]["train"].items() if k not in ("epochs", "batch_size")}
        settings = {**seed_train, "correction": "topk"} if agent_config is None else {}
        settings.update(train_settings or {})
        self.config = TrainConfig(batch_size=batch, device=device.type, seed=seed, epochs=1000, **settings)
        agent_config = agent_config or AgentConfig(**PRESETS["seed"]["agent"])
        self.dist, self.device = distributed.setup(device)
        dataset = with_gamma(ds, self.config.gamma)
        pretrained = None
        if embeddings:
            g = torch.Generator().manual_seed(seed)
            item = F.normalize(torch.randn(ds.n_items + 1, 32, generator=g), dim=1)
            item[-1] = 0.0
            pretrained = SimpleNamespace(user=F.normalize(torch.randn(ds.n_users, 32, generator=g), dim=1), item=item)
        self.agent = build_agent(dataset, agent_config, self.config, pretrained).to(device).train()
        self.optimizer = build_optimizer(self.agent, self.config, allow_sparse=not self.dist.enabled)
        self.data = TrainData.build(dataset, self.agent.config, device, self.config, self.dist)
        self.objective = _objective(self.agent, self.config, device, self.dist, self.data.all_rewarded)
        self.meter = IntervalMeter(device, self.config.log_every)
        self.metrics = MetricsLogger(None)
        self.state = TrainerState()
        self.batches = self.data.batches(self.state, self.config)
        rewarded = self.data.transitions.reward[self.data.transitions.rows] != 0
        self.rewarded_share = float(rewarded.float().mean())

    def step(self) -> int:
        from torch.profiler import record_function

        global_idx, epoch_end = next(self.batches)
        with record_function("bench::batch"):
            batch = self.data.batch(self.dist.shard(global_idx))
            scales = self.data.shard_scales(self.dist, global_idx, len(batch))
        step = train_step(
            self.agent, self.optimizer, batch, self.config, None, self.data.all_rewarded, self.objective, scales
        )
        with record_function("bench::meter"):
            self.state.step_in_epoch, self.state.global_step = self.state.step_in_epoch + 1, self.state.global_step + 1
            self.meter.add(step, len(batch), self.state.global_step)
            if self.meter.due(self.state.global_step) or epoch_end:
                epoch = self.state.epoch + self.state.step_in_epoch / self.data.steps_per_epoch
                self.metrics.log(self.state.global_step, self.meter.flush(self.dist, epoch))
        if epoch_end:
            self.state.epoch, self.state.step_in_epoch = self.state.epoch + 1, 0
        return len(batch)

    def rate(self, steps: int) -> float:
        """Transitions/s over ``steps`` steps after two warm-up steps."""
        self.step(), self.step()
        sync(self.device)
        t0, c0, done = time.perf_counter(), time.process_time(), 0
        for _ in range(steps):
            done += self.step()
        sync(self.device)
        CPU_MS_PER_STEP["real"].append((time.process_time() - c0) / steps * 1e3)
        return done / (time.perf_counter() - t0)


_HISTORY_OPS = ("aten::where", "aten::ge", "aten::clamp_min", "aten::full_like", "aten::arange")
_ALLOCATION_OPS = ("aten::empty", "aten::empty_strided", "aten::empty_like", "aten::zeros", "aten::zero_")
_ALLOCATION_OPS += ("aten::fill_",)


def _bucket(event: Any, n_users: int, n_items: int, phase: str) -> str:
    """Which part of the real step an op's own CPU time belongs to."""
    name = event.name
    shapes = [tuple(x) for x in (event.input_shapes or []) if isinstance(x, list | tuple)]
    dims = {d for shape in shapes for d in shape if isinstance(d, int)}
    if phase == "bench::meter":
        return "meter + metrics log"
    if phase == "bench::batch":
        if any(len(shape) == 2 and shape[1] == 10 for shape in shapes) or name in _HISTORY_OPS:
            return "batch: history gather (B, H)"
        return "batch: rows, user, action, reward, return gathers"
    if "adam" in name.lower() or name.startswith("Optimizer."):
        return "optimizer (fused Adam)"
    if name in ("aten::mm", "aten::addmm", "aten::matmul", "aten::linear", "aten::bmm") and n_items in dims:
        return "heads: GEMMs (B×h·h×N and their gradients)"
    if name in ("aten::embedding", "aten::index_select", "aten::index", "aten::gather", "aten::take"):
        if n_users in dims:
            return "user table gather"
        if n_items + 1 in dims:
            return "history: item-embedding gather"
        return "row selection / other gathers"
    if name in ("aten::nonzero", "aten::masked_select", "aten::index_put_"):
        return "row selection / other gathers"
    if n_items in dims:
        return "heads: softmax passes over (B, N)"
    if name in _ALLOCATION_OPS:
        return "allocation (empty / zeros / fill)"
    return "encoder, loss, autograd, small ops"


def _phase(event: Any) -> str:
    parent = event
    while parent is not None:
        if parent.name.startswith("bench::"):
            return str(parent.name)
        parent = parent.cpu_parent
    return ""


def head_gemm_floor_ms(batch: int, policy_rows: int, hidden: int, n_items: int, reps: int) -> float:
    """ms of the five head GEMMs alone: π forward, ∂W, ∂state on the rewarded rows; β̂ forward, ∂W on all rows."""
    w = torch.randn(n_items, hidden)
    s_b, g_b = torch.randn(batch, hidden), torch.randn(batch, n_items)
    s_p, g_p = torch.randn(policy_rows, hidden), torch.randn(policy_rows, n_items)

    def gemms() -> None:
        s_p @ w.t(), g_p.t() @ s_p, g_p @ w  # π
        s_b @ w.t(), g_b.t() @ s_b  # β̂

    gemms()
    t0 = time.perf_counter()
    for _ in range(reps):
        gemms()
    return (time.perf_counter() - t0) / reps * 1e3


def head_alone_ms(real: RealPath, reps: int) -> tuple[float, float]:
    """(β̂ on all B rows, π on the rewarded rows): one head's forward + backward, ms, on a random state."""
    agent, b = real.agent, real.config.batch_size
    idx = torch.arange(b)
    batch = real.data.transitions.batch(idx)
    rows = torch.nonzero(batch.reward != 0).squeeze(1)
    hidden = agent.config.hidden
    out = []
    for head, sel, state_grad in ((agent.behavior_head, None, False), (agent.policy_head, rows, True)):
        state = torch.randn(b, hidden, requires_grad=state_grad)
        actions = batch.action if sel is None else batch.action[sel]
        for rep in range(reps + 1):  # the first is a warm-up
            if rep == 1:
                t0 = time.perf_counter()
            st = state if sel is None else state[sel]
            (-head(st, actions).train_logp.float().mean()).backward()
        out.append((time.perf_counter() - t0) / reps * 1e3)
        for p in head.parameters():
            p.grad = None
    return out[0], out[1]


def profile_real(real: RealPath, steps: int, n_users: int, n_items: int) -> dict[str, Any]:
    """Where the real step's time goes (see the module docstring); figures in ms per step."""
    from torch.profiler import ProfilerActivity, profile

    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    for _ in range(steps):
        real.step()
    step_ms = (time.perf_counter() - t0) / steps * 1e3
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / steps
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            real.step()
    buckets: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.name.startswith("bench::"):
            continue
        buckets[_bucket(event, n_users, n_items, _phase(event))] += event.self_cpu_time_total / 1e3 / steps
    profiled_ms = sum(buckets.values())
    b = real.config.batch_size
    policy_rows = round(b * real.rewarded_share) if not real.data.all_rewarded else b
    floor = head_gemm_floor_ms(b, policy_rows, real.agent.config.hidden, n_items, 5)
    behavior_ms, policy_ms = head_alone_ms(real, 5)
    return {
        "step_ms": step_ms,
        "batch_size": b,
        "profiled_ms": profiled_ms,
        "buckets_ms": dict(sorted(buckets.items(), key=lambda kv: -kv[1])),
        "head_gemm_floor_ms": floor,
        "behavior_head_all_rows_ms": behavior_ms,
        "policy_head_rewarded_rows_ms": policy_ms,
        "rewarded_share": real.rewarded_share,
        "policy_rows_per_step": policy_rows,
        "minor_faults_per_step": faults,
    }


def print_breakdown(prof: dict[str, Any]) -> None:
    """The breakdown as a table on stderr (profiler times are scaled to the unprofiled step time)."""
    scale = prof["step_ms"] / max(prof["profiled_ms"], 1e-9)
    print(f"\nreal step: {prof['step_ms']:.1f} ms (unprofiled); profiler shares scaled to it", file=sys.stderr)
    print("| part | ms / step | share |\n|---|---|---|", file=sys.stderr)
    for name, ms in prof["buckets_ms"].items():
        print(f"| {name} | {ms * scale:.2f} | {100 * ms / prof['profiled_ms']:.1f} % |", file=sys.stderr)
    print(
        f"| (floor) the five head GEMMs alone | {prof['head_gemm_floor_ms']:.2f} | "
        f"{100 * prof['head_gemm_floor_ms'] / prof['step_ms']:.1f} % |\n"
        f"| (alone) β̂ head fwd+bwd, all {prof['batch_size']} rows | "
        f"{prof['behavior_head_all_rows_ms']:.2f} | |\n"
        f"| (alone) π head fwd+bwd, rewarded rows ({100 * prof['rewarded_share']:.1f} % of rows) | "
        f"{prof['policy_head_rewarded_rows_ms']:.2f} | |\n"
        f"minor page faults per step: {prof['minor_faults_per_step']:.1f}",
        file=sys.stderr,
    )


def matmul_rate(shape: tuple[int, int, int], reps: int, device: torch.device) -> float:
    m, k, n = shape
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    torch.mm(a, b)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    sync(device)
    return 2.0 * m * k * n * reps / (time.perf_counter() - t0) / 1e9


def head_matmul_rate(batch: int, hidden: int, n_items: int, reps: int, device: torch.device) -> float:
    """GFLOP/s of the three GEMM shapes a head needs: forward, grad of W, grad of the state."""
    s = torch.randn(batch, hidden, device=device)
    w, g = torch.randn(n_items, hidden, device=device), torch.randn(batch, n_items, device=device)
    s @ w.t()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        s @ w.t()
        g.t() @ s
        g @ w
    sync(device)
    return 3 * 2.0 * batch * hidden * n_items * reps / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (ours uses bf16 autocast on cuda; fp32 matmul rate)")
    ap.add_argument("--compile", action="store_true", help="also time ours with torch.compile (train --compile)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads for every case (0 = torch's default)")
    ap.add_argument("--data", type=Path, default=None, help="prepared dataset for the real path (default: made)")
    ap.add_argument("--no-real", action="store_true", help="only the synthetic case (the benchmark before --data)")
    ap.add_argument("--real-without-embeddings", action="store_true", help="real path as `train` without --embeddings")
    ap.add_argument("--profile-steps", type=int, default=20, help="real steps under the profiler (0: no breakdown)")
    ap.add_argument(
        "--encoders",
        default="concat,gru,attention",
        help="real path: transitions/s of these encoders with train's defaults otherwise ('' to skip)",
    )
    ap.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="no THP_MEM_ALLOC_ENABLE=1 (as the figures before 2026-11-30 22:45 UTC; `topkrec` sets it)",
    )
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ds = make_dataset(args.users, args.items, args.events, args.seed)
    h, n, b = 64, args.items, args.batch_size
    flops = 10 * h * n + 3 * 2 * (32 * 11) * h  # heads (see docstring) + encoder forward/backward
    real: RealPath | None = None
    real_ds: Dataset | None = None
    source = ""
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        if not args.no_real:
            if args.data is None:
                t0 = time.perf_counter()
                data_dir = make_reference_scale_data(Path(tmp), SYNTH_USERS, SYNTH_ITEMS)
                source = f"topkrec synth --users {SYNTH_USERS} --items {SYNTH_ITEMS} + prepare --format tianchi"
                made = f"made the reference-scale dataset in {time.perf_counter() - t0:.0f} s ({source})"
                print(made, file=sys.stderr)
            else:
                data_dir, source = args.data, str(args.data)
            real_ds = Dataset.load(data_dir)
            real = RealPath(real_ds, b, args.seed, device, embeddings=not args.real_without_embeddings)
        ours, ref, square, head, compiled, real_rates, ref_real = [], [], [], [], [], [], []
        for r in range(args.rounds):
            ours.append(run_ours(ds, args.steps, b, args.seed, device))
            if args.compile:
                compiled.append(run_ours(ds, args.steps, b, args.seed, device, compile_step=True))
                print(f"round {r + 1}: ours compiled {compiled[-1]:.0f}/s", file=sys.stderr)
            ref.append(run_reference(ds, args.steps, b, args.seed, device))
            square.append(matmul_rate((1024, 1024, 1024), 5, device))
            head.append(head_matmul_rate(b, h, n, 5, device))
            line = (
                f"round {r + 1}: ours {ours[-1]:.0f}/s, reference {ref[-1]:.0f}/s, "
                f"matmul {square[-1]:.1f} GFLOP/s (square), {head[-1]:.1f} GFLOP/s (head shapes)"
            )
            if real is not None and real_ds is not None:
                real_rates.append(real.rate(args.steps))
                ref_real.append(run_reference(real_ds, args.steps, b, args.seed, device))
                line += f"; real path {real_rates[-1]:.0f}/s, reference on the same data {ref_real[-1]:.0f}/s"
            print(line, file=sys.stderr)
        encoder_rates: dict[str, float] = {}
        if real_ds is not None and args.encoders:
            encoder_rates = measure_encoders(real_ds, args, device)
        breakdown = None
        if real is not None and real_ds is not None and args.profile_steps > 0 and device.type == "cpu":
            breakdown = profile_real(real, args.profile_steps, real_ds.n_users, real_ds.n_items)
            print_breakdown(breakdown)
    best_ours, best_ref, best_square, best_head = max(ours), max(ref), max(square), max(head)
    result = {
        "benchmark": "train",
        "n_items": n,
        "batch_size": b,
        "device": device.type,
        "threads": torch.get_num_threads(),
        "malloc_tuned": bool(MALLOC_TUNED),
        "flops_per_transition": flops,
        "ours_transitions_per_s": round(best_ours, 1),
        "reference_transitions_per_s": round(best_ref, 1),
        "speedup": round(best_ours / best_ref, 3),
        "ours_gflops": round(best_ours * flops / 1e9, 2),
        "reference_gflops": round(best_ref * flops / 1e9, 2),
        "matmul_gflops_square": round(best_square, 2),
        "matmul_gflops_head_shapes": round(best_head, 2),
        "ours_fraction_of_matmul_square": round(best_ours * flops / 1e9 / best_square, 3),
        "ours_fraction_of_matmul_head_shapes": round(best_ours * flops / 1e9 / best_head, 3),
        "reference_fraction_of_matmul_square": round(best_ref * flops / 1e9 / best_square, 3),
        "goal_speedup": 1.5,
        "goal_fraction_of_matmul": 0.7,
        "meets_speedup": bool(best_ours / best_ref >= 1.5),
        "meets_fraction_square": bool(best_ours * flops / 1e9 / best_square >= 0.7),
        "rounds": {"ours": ours, "reference": ref, "matmul_square": square, "matmul_head": head},
    }
    if encoder_rates:
        result["encoder_transitions_per_s"] = {k: round(v, 1) for k, v in encoder_rates.items()}
        if "concat" in encoder_rates:
            result["encoder_vs_concat"] = {k: round(v / encoder_rates["concat"], 3) for k, v in encoder_rates.items()}
    if compiled:
        result["ours_compiled_transitions_per_s"] = round(max(compiled), 1)
        result["compiled_vs_eager"] = round(max(compiled) / best_ours, 3)
        result["rounds"]["ours_compiled"] = compiled
    if real is not None and real_ds is not None:
        real_flops = 10 * h * real_ds.n_items + 3 * 2 * (32 * 11) * h
        best_real, best_ref_real = max(real_rates), max(ref_real)
        real_head = max(best_head, head_matmul_rate(b, h, real_ds.n_items, 5, device))
        result.update(
            {
                "real_data": source,
                "real_n_users": real_ds.n_users,
                "real_n_items": real_ds.n_items,
                "real_n_events": real_ds.n_events,
                "real_embeddings": "frozen pretrained-shaped" if not args.real_without_embeddings else "trainable",
                "real_transitions_per_s": round(best_real, 1),
                "real_reference_transitions_per_s": round(best_ref_real, 1),
                "real_speedup": round(best_real / best_ref_real, 3),
                "real_vs_synthetic": round(best_real / best_ours, 3),
                "real_flops_per_transition": real_flops,
                "real_fraction_of_matmul_head_shapes": round(best_real * real_flops / 1e9 / real_head, 3),
                "real_goal_transitions_per_s": 2400,
                "real_meets_goal": bool(best_real >= 2400),
            }
        )
        result["rounds"]["real"] = real_rates
        result["rounds"]["reference_real"] = ref_real
        result["ours_cpu_ms_per_step"] = round(min(CPU_MS_PER_STEP["ours"]), 2)
        result["real_cpu_ms_per_step"] = round(min(CPU_MS_PER_STEP["real"]), 2)
        result["real_vs_synthetic_cpu"] = round(min(CPU_MS_PER_STEP["ours"]) / min(CPU_MS_PER_STEP["real"]), 3)
        if breakdown is not None:
            result["real_breakdown"] = {
                k: (round(v, 3) if isinstance(v, float) else v) for k, v in breakdown.items() if k != "buckets_ms"
            }
            result["real_breakdown"]["buckets_ms"] = {k: round(v, 3) for k, v in breakdown["buckets_ms"].items()}
    assert math.isfinite(result["speedup"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
