#!/usr/bin/env python3
"""Training throughput at catalogue scale: transitions/s, peak memory and roofline fraction.

Every figure is the agent's real optimizer step (``topkrec.train.train_step``: state encoder, π and β̂
heads, the corrected REINFORCE objective with w and λ_K, β̂'s cross-entropy, ``build_optimizer``'s
update: fused Adam, plus the lazy row-wise Adam over the sampled heads' touched rows) on synthetic
transitions gathered by index from device-resident tensors.

Cases (each runs in its own subprocess, so its peak memory is its own):
- ``baseline``: the reference-style step — batch 128, fp32, full softmax computed the plain way
  (logits → log_softmax → gather, autograd through the (B × N) matrix);
- ``full``: the library's full softmax (on CUDA: the tiled Triton kernels, bf16 autocast, batch 4096;
  on CPU: the fused one-buffer backward);
- ``full_torch`` (CUDA only): the same step without Triton (one (B × N) buffer), to show what the
  kernels buy in the same run; ``full_b16k`` (CUDA only): ``full`` at batch 16 384;
- ``sampled`` with ``normaliser=exact`` (log π of the logged action exact: a no-grad pass over the
  catalogue per head) and ``normaliser=estimate`` (importance-sampled normaliser, no extra pass).

Roofline: model FLOPs per transition (forward 2·N·d + backward 4·N·d per full-softmax head; 6·S·d per
sampled head plus 2·N·d for an exact normaliser; the encoder's linear layers), times transitions/s,
divided by the peak matmul rate measured in the same run on the same device and dtype (a large
matmul). ``--device cpu`` finishes within 10 minutes on 2 cores; the last line printed is one JSON
object with ``results`` (DESIGN §9).

Usage::

    python benchmarks/bench_scale.py --device cpu
    python benchmarks/bench_scale.py --device cuda --items 160000,1000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HIDDEN = 64
EMBED = 32
HIST = 10


@dataclass(frozen=True)
class Case:
    """One benchmark configuration, run in a worker subprocess."""

    name: str  # baseline | full | full_torch | sampled_exact | sampled_estimate
    device: str
    softmax: str  # full | sampled
    n_items: int
    batch_size: int
    dtype: str  # fp32 | bf16
    baseline: bool = False
    head_options: dict[str, Any] = field(default_factory=dict)
    no_triton: bool = False
    seconds: float = 10.0  # measuring time (after warm-up)
    min_steps: int = 3
    max_steps: int = 10_000
    warmup: int = 1
    threads: int = 0  # CPU intra-op threads; 0 = torch default


def plan(
    device: str, items: list[int], quick: bool, negatives: int, estimate_batch: int = 0, seconds: float = 0.0
) -> list[Case]:
    cases: list[Case] = []
    est_b = estimate_batch or (32768 if device == "cpu" else 16384)
    secs = seconds or (3.0 if quick else (6.0 if device == "cpu" else 5.0))
    for n in items:
        sampled_exact = {"negatives": negatives, "normaliser": "exact"}
        sampled_est = {"negatives": negatives, "normaliser": "estimate"}
        plain = {"fused": False}
        if device == "cpu":
            cases += [
                Case("baseline", device, "full", n, 128, "fp32", True, plain, seconds=secs, min_steps=2),
                Case("full", device, "full", n, 256, "fp32", seconds=secs, min_steps=2),
                Case("sampled_exact", device, "sampled", n, 512, "fp32", head_options=sampled_exact, seconds=secs),
                Case("sampled_estimate", device, "sampled", n, est_b, "fp32", head_options=sampled_est, seconds=secs),
            ]
        else:
            warm = 3
            cases += [
                Case("baseline", device, "full", n, 128, "fp32", True, plain, seconds=secs, warmup=warm),
                Case("full", device, "full", n, 4096, "bf16", seconds=secs, warmup=warm),
                Case("full_b16k", device, "full", n, 16384, "bf16", seconds=secs, warmup=warm),
                Case("full_torch", device, "full", n, 4096, "bf16", no_triton=True, seconds=secs, warmup=warm),
                Case(
                    "sampled_exact",
                    device,
                    "sampled",
                    n,
                    4096,
                    "bf16",
                    head_options=sampled_exact,
                    seconds=secs,
                    warmup=warm,
                ),
                Case(
                    "sampled_estimate",
                    device,
                    "sampled",
                    n,
                    est_b,
                    "bf16",
                    head_options=sampled_est,
                    seconds=secs,
                    warmup=warm,
                ),
            ]
    if device == "cuda":
        # Most important first, so a time budget drops the least important: the goal figures (full, both
        # sizes), their baselines, then the PyTorch comparison and the sampled variants.
        order = ["full", "baseline", "full_torch", "full_b16k", "sampled_estimate", "sampled_exact"]
        cases.sort(key=lambda c: (order.index(c.name), c.n_items))
    return cases


# ------------------------------------------------------------------------------------------ worker side
def reference_agent_config(**overrides: Any) -> Any:
    """The reference's agent (``--preset seed``: concat over bare item ids, user embedding, no re-engagement
    bias) at this benchmark's widths — the shape its figures were measured on."""
    from topkrec.policy.config import PRESETS, AgentConfig

    fields = {**PRESETS["seed"]["agent"], "embed_size": EMBED, "hist_num": HIST, "hidden": HIDDEN}
    return AgentConfig(**{**fields, **overrides})


def reference_train_config(**overrides: Any) -> Any:
    """The reference's training step (``--preset seed``) with ``overrides`` (batch size, lr)."""
    from topkrec.policy.config import PRESETS, TrainConfig

    return TrainConfig(**{**PRESETS["seed"]["train"], **overrides})


def synthetic_transitions(n_items: int, n_events: int, device: Any, seed: int = 0) -> Any:
    """Zipf-popular items over frequency-ordered ids, users of ~50 events, every reward non-zero."""
    import numpy as np
    import torch

    from topkrec.data.transitions import Transitions, user_starts

    rng = np.random.default_rng(seed)
    # Log-uniform (Zipf-like) ids: P(k) ∝ log((k+2)/(k+1)), id 0 the most frequent.
    items = np.floor(np.exp(rng.random(n_events) * math.log(n_items + 1.0))).astype(np.int64) - 1
    items = np.clip(items, 0, n_items - 1)
    users = np.repeat(np.arange(n_events // 50 + 1), 50)[:n_events].astype(np.int64)
    reward = rng.choice(np.array([1.0, 2.0, 3.0], dtype=np.float32), size=n_events, p=[0.9, 0.07, 0.03])

    def t(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

    first = user_starts(users)  # per event: its user's first event
    tr = Transitions(
        items=t(items, torch.int64),
        users=t(users, torch.int64),
        reward=t(reward, torch.float32),
        returns=t(reward * 3.0, torch.float32),
        propensity=t(np.full(n_events, np.nan, np.float32), torch.float32),
        hist_items=t(items, torch.int64),  # every event is a history row: history = the events before it
        hist_events=t(np.zeros(n_events, np.int64), torch.int64),
        hist_end=t(np.arange(n_events), torch.int64),
        hist_start=t(first, torch.int64),
        rows=t(np.arange(n_events), torch.int64),
        hist_num=HIST,
        pad_index=n_items,
        event_pad=1,
    )
    return tr, int(users.max()) + 1


def flops_per_transition(case: Case, encoder_linear_params: int) -> float:
    """Model FLOPs of one transition's forward + backward (no recomputation counted)."""
    d = HIDDEN
    if case.softmax == "full":
        heads = 2 * 6.0 * case.n_items * d
    else:
        s = int(case.head_options.get("negatives", 1024))
        heads = 2 * 6.0 * s * d
        if case.head_options.get("normaliser", "exact") == "exact":
            heads += 2 * 2.0 * case.n_items * d
    return heads + 6.0 * encoder_linear_params


def _peak_rss_gb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def run_case(case: Case) -> dict[str, Any]:
    if case.no_triton:
        os.environ["TOPKREC_NO_TRITON"] = "1"
    import torch

    from topkrec.policy.model import Agent
    from topkrec.train import build_optimizer, train_step

    if case.threads:
        torch.set_num_threads(case.threads)
    device = torch.device(case.device)
    torch.manual_seed(0)
    n_events = max(200_000, 8 * case.batch_size)
    tr, n_users = synthetic_transitions(case.n_items, n_events, device)
    agent_cfg = reference_agent_config(
        n_users=n_users, n_items=case.n_items, softmax=case.softmax, extra_head_options=dict(case.head_options)
    )
    agent = Agent(agent_cfg).to(device)
    train_cfg = reference_train_config(batch_size=case.batch_size, lr=1e-4)
    optimizer = build_optimizer(agent, train_cfg)
    autocast = torch.bfloat16 if case.dtype == "bf16" else None
    encoder_params = sum(m.weight.numel() for m in agent.encoder.modules() if isinstance(m, torch.nn.Linear))
    perm = torch.randperm(n_events, device=device)
    n_batches = n_events // case.batch_size

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(i: int) -> None:
        j = i % n_batches
        batch = tr.batch(perm[j * case.batch_size : (j + 1) * case.batch_size])
        train_step(agent, optimizer, batch, train_cfg, autocast)

    for i in range(case.warmup):
        step(i)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps = 0
    t0 = time.perf_counter()
    while steps < case.max_steps and (steps < case.min_steps or time.perf_counter() - t0 < case.seconds):
        step(case.warmup + steps)
        steps += 1
    sync()
    elapsed = time.perf_counter() - t0
    tps = steps * case.batch_size / elapsed
    peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else _peak_rss_gb()
    uses_triton = False
    if device.type == "cuda" and case.softmax == "full" and not case.baseline:
        from topkrec.kernels import triton_available

        uses_triton = triton_available()
    return {
        "case": case.name,
        "device": case.device,
        "softmax": case.softmax,
        "n_items": case.n_items,
        "batch_size": case.batch_size,
        "dtype": case.dtype,
        "head_options": case.head_options,
        "triton": uses_triton,
        "steps": steps,
        "seconds": round(elapsed, 3),
        "transitions_per_s": tps,
        "peak_mem_gb": round(peak, 3),
        "flops_per_transition": flops_per_transition(case, encoder_params),
        "baseline": case.baseline,
    }


def estimate_error(device: str, n_items: int, negatives: int, train_steps: int, batch: int) -> dict[str, Any]:
    """Error of the estimated log π against the exact one, after a few sampled-softmax training steps."""
    import torch

    from topkrec.policy.model import Agent
    from topkrec.train import build_optimizer, train_step

    dev = torch.device(device)
    torch.manual_seed(1)
    tr, n_users = synthetic_transitions(n_items, max(100_000, 4 * batch), dev, seed=1)
    cfg = reference_agent_config(
        n_users=n_users, n_items=n_items, softmax="sampled", negatives=negatives, sampled_logp="estimate"
    )
    agent = Agent(cfg).to(dev)
    tcfg = reference_train_config(batch_size=batch, lr=1e-2)
    opt = build_optimizer(agent, tcfg)
    autocast = torch.bfloat16 if dev.type == "cuda" else None
    perm = torch.randperm(len(tr), device=dev)
    for i in range(train_steps):  # move the heads away from their initialisation
        train_step(agent, opt, tr.batch(perm[i * batch : (i + 1) * batch]), tcfg, autocast)
    agent.eval()
    out: dict[str, Any] = {"n_items": n_items, "negatives": negatives, "train_steps": train_steps}
    with torch.no_grad():
        b = tr.batch(perm[-batch:])
        state = agent.encode(b.user, b.history)
        for name, head in (("policy", agent.policy_head), ("behavior", agent.behavior_head)):
            est = head(state, b.action).logp.double()
            exact = head.exact_log_prob(state, b.action).double()  # type: ignore[operator]
            err = est - exact
            out[name] = {
                "mean_abs_error": float(err.abs().mean()),
                "mean_error": float(err.mean()),
                "max_abs_error": float(err.abs().max()),
                "mean_exact_logp": float(exact.mean()),
                "rel_error_pi": float((err.exp() - 1.0).abs().mean()),  # |π̂/π − 1|
            }
    return out


def synthetic_dataset(n_events: int, n_items: int, events_per_user: int = 50, seed: int = 2) -> Any:
    """An in-memory prepared ``Dataset``: Zipf items, users of ``events_per_user`` events, last 20 % test."""
    import numpy as np

    from topkrec.data.dataset import Dataset

    rng = np.random.default_rng(seed)
    n_users = -(-n_events // events_per_user)
    user = np.repeat(np.arange(n_users, dtype=np.int32), events_per_user)[:n_events]
    pos = np.arange(n_events) - np.repeat(np.arange(n_users) * events_per_user, events_per_user)[:n_events]
    item = np.floor(np.exp(rng.random(n_events) * math.log(n_items + 1.0))).astype(np.int32) - 1
    item = np.clip(item, 0, n_items - 1)
    reward = rng.choice(np.array([1.0, 2.0, 3.0], dtype=np.float32), size=n_events, p=[0.9, 0.07, 0.03])
    return Dataset(
        user=user,
        item=item,
        behavior=np.where(reward > 1.0, "buy", "pv").astype(object),
        reward=reward,
        ts=(pos * 60).astype(np.int64),
        session=user.astype(np.int32),
        is_test=pos >= int(0.8 * events_per_user),
        returns=reward * 3.0,
        n_users=n_users,
        n_items=n_items,
    )


def eval_timing(device: str, n_events: int, n_items: int, chunk_elements: int, n_boot: int) -> dict[str, Any]:
    """Seconds of ``evaluate_agents`` (one agent + popularity + β̂ baselines) on a synthetic held-out split."""
    import torch

    from topkrec.evaluate.evaluator import EvalConfig, chunk_rows, evaluate_agents
    from topkrec.policy.artifact import LoadedAgent
    from topkrec.policy.config import AgentConfig, TrainConfig
    from topkrec.policy.model import Agent

    t0 = time.perf_counter()
    ds = synthetic_dataset(n_events, n_items)
    build_s = time.perf_counter() - t0
    dev = torch.device(device)
    cfg = AgentConfig(n_users=ds.n_users, n_items=n_items, embed_size=EMBED, hist_num=HIST, hidden=HIDDEN)
    torch.manual_seed(0)
    agent = LoadedAgent(
        module=Agent(cfg).to(dev),
        config=cfg,
        train_config=TrainConfig(),
        directory=Path("."),
        user_raw=[str(i) for i in range(ds.n_users)],
        item_raw=[str(i) for i in range(n_items)],
    )
    econf = EvalConfig(chunk_elements=chunk_elements, n_boot=n_boot)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    metrics = evaluate_agents({"topk": agent}, ds, econf, baselines=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {
        "device": device,
        "n_events": n_events,
        "n_test_events": int(ds.is_test.sum()),
        "n_items": n_items,
        "chunk_elements": chunk_elements,
        "rows_per_chunk": chunk_rows(econf, n_items, dev),
        "n_boot": n_boot,
        "models": sorted(metrics),
        "seconds": round(seconds, 2),
        "dataset_build_s": round(build_s, 2),
        "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3) if dev.type == "cuda" else _peak_rss_gb(),
    }


def measure_peak_flops(device: str, dtype: str) -> float:
    """Best achieved FLOP/s of a large matmul in ``dtype`` on ``device`` (TF32 off for fp32)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        n, reps = (8192, 20) if dtype == "bf16" else (4096, 5)
    else:
        n, reps = 1536, 4
    tdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(n, n, device=dev, dtype=tdtype)
    b = torch.randn(n, n, device=dev, dtype=tdtype)
    best = math.inf
    for _ in range(reps + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def worker_main(spec: str) -> None:
    payload = json.loads(spec)
    kind = payload.pop("kind")
    if kind == "case":
        print(json.dumps(run_case(Case(**payload))))
    elif kind == "error":
        print(json.dumps(estimate_error(**payload)))
    elif kind == "eval":
        print(json.dumps(eval_timing(**payload)))
    elif kind == "peak":
        print(json.dumps({"peak_flops": measure_peak_flops(**payload)}))
    else:
        raise SystemExit(f"unknown worker kind {kind}")


# ------------------------------------------------------------------------------------------ driver side
def run_worker(payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(payload)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda (unavailable)"
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--items", default="160000,1000000", help="comma-separated catalogue sizes")
    p.add_argument("--negatives", type=int, default=1024, help="shared negatives of the sampled softmax")
    p.add_argument(
        "--estimate-batch", type=int, default=0, help="batch of sampled_estimate (default 32768 on cpu, 16384 on cuda)"
    )
    p.add_argument("--error-items", type=int, default=100_000, help="catalogue of the estimate-error check (0: skip)")
    p.add_argument("--quick", action="store_true", help="shorter measurements (smoke test)")
    p.add_argument(
        "--seconds",
        type=float,
        default=0.0,
        help="seconds measured per case (default: 3 with --quick, else 6 on cpu, 5 on cuda)",
    )
    p.add_argument("--only", default="", help="comma-separated case names to run (default: all)")
    p.add_argument("--budget", type=float, default=540.0, help="stop starting new cases after this many seconds")
    p.add_argument("--json-out", default="", help="also write the final JSON object to this file")
    p.add_argument(
        "--eval-events",
        type=int,
        default=0,
        help="only time `evaluate` on a synthetic log of this many events (20 %% held out), then exit",
    )
    p.add_argument("--eval-items", type=int, default=160_000, help="catalogue of the evaluation timing")
    p.add_argument(
        "--eval-chunk-elements",
        default="",
        help="comma-separated EvalConfig.chunk_elements to time (default: 2^32 and 2^30 on cuda, 2^22 on cpu)",
    )
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return 0

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print(json.dumps({"benchmark": "scale", "error": "--device cuda but CUDA is not available", "results": []}))
            return 2
    if args.eval_events:
        return eval_main(args)
    start = time.perf_counter()
    items = [int(x) for x in args.items.split(",") if x]
    cases = plan(args.device, items, args.quick, args.negatives, args.estimate_batch, args.seconds)
    if args.only:
        keep = set(args.only.split(","))
        cases = [c for c in cases if c.name in keep]
    per_case_timeout = 240.0 if args.device == "cuda" else 180.0

    peaks: dict[str, float] = {}
    for dtype in ("fp32", "bf16") if args.device == "cuda" else ("fp32",):
        r = run_worker({"kind": "peak", "device": args.device, "dtype": dtype}, timeout=120)
        peaks[dtype] = float(r.get("peak_flops", float("nan")))
        print(f"peak matmul {dtype}: {peaks[dtype] / 1e12:.3f} TFLOP/s", flush=True)

    results: list[dict[str, Any]] = []
    skipped: list[str] = []
    header = (
        f"{'case':<17}{'softmax':<9}{'n_items':>9}{'batch':>7}{'dtype':>6}{'trans/s':>12}{'peak GB':>9}{'roofline':>10}"
    )
    print(header, flush=True)
    for case in cases:
        elapsed = time.perf_counter() - start
        if elapsed > args.budget:
            skipped.append(f"{case.name}@{case.n_items}")
            continue
        timeout = min(per_case_timeout, max(20.0, args.budget + 45.0 - elapsed))
        r = run_worker({"kind": "case", **asdict(case)}, timeout=timeout)
        if "error" in r:
            print(f"{case.name:<17}{case.softmax:<9}{case.n_items:>9}  FAILED: {r['error']}", flush=True)
            results.append({**_case_keys(case), "error": r["error"]})
            continue
        peak = peaks.get(case.dtype, float("nan"))
        r["roofline_fraction"] = r["transitions_per_s"] * r["flops_per_transition"] / peak if peak > 0 else None
        r["peak_flops"] = peak
        results.append(r)
        if args.json_out:  # partial results survive an outer timeout
            partial = {"benchmark": "scale", "partial": True, "results": results}
            Path(args.json_out).write_text(json.dumps(partial) + "\n")
        roof = r["roofline_fraction"] if r["roofline_fraction"] is not None else float("nan")
        print(
            f"{case.name:<17}{case.softmax:<9}{case.n_items:>9}{case.batch_size:>7}{case.dtype:>6}"
            f"{r['transitions_per_s']:>12.0f}{r['peak_mem_gb']:>9.2f}{roof:>10.2%}",
            flush=True,
        )

    error: dict[str, Any] | None = None
    if args.error_items and time.perf_counter() - start < args.budget:
        batch = 4096 if args.device == "cuda" else 1024
        steps = 50 if args.device == "cuda" else 15
        error = run_worker(
            {
                "kind": "error",
                "device": args.device,
                "n_items": args.error_items,
                "negatives": args.negatives,
                "train_steps": steps,
                "batch": batch,
            },
            timeout=per_case_timeout,
        )
        if "error" not in error:
            pol = error["policy"]
            print(
                f"estimated vs exact log π at {args.error_items} items ({args.negatives} negatives, after {steps} "
                f"training steps): mean |err| {pol['mean_abs_error']:.4f}, mean err {pol['mean_error']:+.4f}, "
                f"max |err| {pol['max_abs_error']:.4f} (mean exact log π {pol['mean_exact_logp']:.2f})",
                flush=True,
            )
    elif args.error_items:
        skipped.append("estimate_error")

    ratios: dict[str, float] = {}
    for r in results:
        if "error" in r or r["baseline"]:
            continue
        base = next(
            (b for b in results if b.get("baseline") and "error" not in b and b["n_items"] == r["n_items"]),
            None,
        )
        if base:
            ratios[f"{r['case']}@{r['n_items']}"] = r["transitions_per_s"] / base["transitions_per_s"]
    for k, v in ratios.items():
        print(f"speed-up over the baseline step: {k}: {v:.1f}x", flush=True)
    out = {
        "benchmark": "scale",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device_name": device_name(args.device),
        "peak_flops": peaks,
        "hidden": HIDDEN,
        "negatives": args.negatives,
        "results": results,
        "speedup_vs_baseline": ratios,
        "estimate_error": error,
        "skipped_over_budget": skipped,
        "wall_s": round(time.perf_counter() - start, 1),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    line = json.dumps(out)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n")
    print(line, flush=True)
    return 0


def eval_main(args: argparse.Namespace) -> int:
    """Time ``evaluate_agents`` on the held-out split of a synthetic log; last line JSON."""
    from topkrec.evaluate.evaluator import CPU_CHUNK_ELEMENTS, CUDA_CHUNK_ELEMENTS, EvalConfig

    if args.eval_chunk_elements:
        chunks = [int(x) for x in args.eval_chunk_elements.split(",") if x]
    else:  # 2^32 (4096 rows at 160 000 items) against the library's default for the device
        chunks = [1 << 32, CUDA_CHUNK_ELEMENTS] if args.device == "cuda" else [CPU_CHUNK_ELEMENTS]
    runs = []
    for chunk in chunks:
        payload = {
            "kind": "eval",
            "device": args.device,
            "n_events": args.eval_events,
            "n_items": args.eval_items,
            "chunk_elements": chunk,
            "n_boot": EvalConfig().n_boot,
        }
        r = run_worker(payload, timeout=args.budget)
        r.setdefault("chunk_elements", chunk)
        runs.append(r)
        if "error" in r:
            print(f"evaluate, chunk_elements {chunk}: FAILED {r['error']}", flush=True)
        else:
            print(
                f"evaluate {r['n_test_events']} held-out events of a {r['n_events']}-event log, {r['n_items']} items, "
                f"{r['rows_per_chunk']} rows per chunk: {r['seconds']:.1f} s (peak {r['peak_mem_gb']:.2f} GB)",
                flush=True,
            )
    out = {
        "benchmark": "scale_eval",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device_name": device_name(args.device),
        "results": runs,
    }
    line = json.dumps(out)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n")
    print(line, flush=True)
    return 0


def _case_keys(case: Case) -> dict[str, Any]:
    return {
        "case": case.name,
        "device": case.device,
        "softmax": case.softmax,
        "n_items": case.n_items,
        "batch_size": case.batch_size,
        "transitions_per_s": None,
        "peak_mem_gb": None,
        "roofline_fraction": None,
        "baseline": case.baseline,
    }


if __name__ == "__main__":
    sys.exit(main())
