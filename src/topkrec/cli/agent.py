"""CLI of the agent: ``train``, ``evaluate``, ``compare``, ``demo``. Heavy imports live inside the commands."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

CORRECTION_HELP = "none | is | topk: no correction, importance weight π/β̂, or weight × top-K multiplier λ_K."


def _train_config(**kw: Any) -> Any:
    from topkrec.errors import TopkrecError
    from topkrec.policy.config import TrainConfig

    cap = kw.pop("cap")
    if kw.pop("no_cap"):
        cap = None
    elif cap is not None and not cap > 0:
        raise TopkrecError(f"--cap must be positive (or pass --no-cap), got {cap}")
    return TrainConfig(cap=cap, **kw)


def _agent_config(dataset: Any, embeddings: Any, **kw: Any) -> Any:
    from topkrec.policy.config import AgentConfig

    temperature = kw.pop("temperature")
    embed_dim = embeddings.embed_size if embeddings is not None else kw.pop("embed_dim")
    kw.pop("embed_dim", None)
    head_options = {"temperature": temperature} if temperature != 1.0 else {}
    head_options.update(kw.pop("extra_head_options", None) or {})  # --softmax sampled options (topkrec.scale)
    return AgentConfig(
        n_users=dataset.n_users, n_items=dataset.n_items, embed_dim=embed_dim, head_options=head_options, **kw
    )


def _sampled_options(
    softmax: str, negatives: int, sampled_logp: str, proposal: str = "log_uniform"
) -> dict[str, Any] | None:
    """head_options of ``--softmax sampled`` (negatives, proposal and how log π is computed)."""
    if softmax != "sampled":
        return None
    from topkrec.scale.heads import sampled_head_options

    return sampled_head_options(negatives=negatives, proposal=proposal.replace("-", "_"), normaliser=sampled_logp)


def _load_inputs(data: Path, embeddings_dir: Path | None, gamma: float | None) -> tuple[Any, Any]:
    from topkrec.data.dataset import Dataset, discounted_returns

    dataset = Dataset.load(data)
    if gamma is not None and gamma != dataset.meta.get("gamma"):
        # Returns were computed by prepare with meta["gamma"]; recompute for another discount.
        dataset.returns = discounted_returns(dataset.reward, dataset.session, gamma)
    embeddings = None
    if embeddings_dir is not None:
        from topkrec.embeddings import load_embeddings

        embeddings = load_embeddings(embeddings_dir, dataset)
    return dataset, embeddings


def train_command(
    data: Path = typer.Option(..., "--data", help="Dataset directory (`topkrec prepare`)."),
    embeddings: Path | None = typer.Option(
        None, "--embeddings", help="Embeddings directory (`topkrec pretrain`); without it embeddings start random."
    ),
    out: Path = typer.Option(..., "--out", help="Model directory to write (checkpoints go here too)."),
    epochs: int = typer.Option(1, "--epochs", help="Passes over the train transitions."),
    batch_size: int = typer.Option(128, "--batch-size", help="Transitions per step."),
    lr: float = typer.Option(1e-5, "--lr", help="Adam learning rate of π (reference 1e-5)."),
    behavior_lr: float | None = typer.Option(None, "--behavior-lr", help="Adam learning rate of β̂ (default: --lr)."),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    correction: str = typer.Option("topk", "--correction", help=CORRECTION_HELP),
    k: int = typer.Option(10, "--k", help="K of the top-K correction (list length)."),
    cap: float | None = typer.Option(math.exp(3.0), "--cap", help="Importance-weight cap (paper: e^3)."),
    no_cap: bool = typer.Option(False, "--no-cap", help="Do not cap importance weights."),
    snis: bool = typer.Option(False, "--snis", help="Self-normalise importance weights per batch."),
    softmax: str = typer.Option("full", "--softmax", help="Head kind: full (or sampled/adaptive when available)."),
    negatives: int = typer.Option(1024, "--negatives", help="--softmax sampled: shared negatives per batch."),
    sampled_logp: str = typer.Option(
        "exact", "--sampled-logp", help="--softmax sampled: log π for w and λ_K, exact (catalogue pass) | estimate."
    ),
    proposal: str = typer.Option(
        "log-uniform",
        "--proposal",
        help="--softmax sampled: negatives' proposal, log-uniform (over frequency-ordered ids) | popularity | uniform.",
    ),
    encoder: str = typer.Option("concat", "--encoder", help="State encoder: concat | mean | gru | cfn."),
    hidden: int = typer.Option(64, "--hidden", help="State width."),
    hist_num: int = typer.Option(10, "--hist-num", help="Items of history in the state."),
    embed_dim: int = typer.Option(32, "--embed-dim", help="Embedding width when no --embeddings are given."),
    temperature: float = typer.Option(1.0, "--temperature", help="Softmax temperature T of both heads."),
    trainable_embeddings: bool = typer.Option(
        False, "--trainable-embeddings", help="Fine-tune the pretrained embeddings."
    ),
    gamma: float | None = typer.Option(None, "--gamma", help="Discount of returns (default: the dataset's, 0.99)."),
    bias_init: str = typer.Option(
        "popularity", "--bias-init", help="Heads' initial output biases: popularity (log prior) or zero."
    ),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    no_bf16: bool = typer.Option(False, "--no-bf16", help="No bf16 autocast on CUDA."),
    log_every: int = typer.Option(50, "--log-every", help="Log metrics every N steps."),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", help="Checkpoint every N steps (0: per epoch)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after N steps in total."),
    compile_step: bool = typer.Option(
        False, "--compile", help="torch.compile the training step (first step compiles; measure before using)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in --out."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out."),
) -> None:
    """Train the REINFORCE agent (π and β̂) with the chosen off-policy correction."""
    from topkrec.cli.common import STATE
    from topkrec.io import check_no_overlap
    from topkrec.train import train_agent

    dataset, emb = _load_inputs(data, embeddings, gamma)
    check_no_overlap(out, {"--data": data, "--embeddings": embeddings})  # before anything is written
    train_cfg = _train_config(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        behavior_lr=behavior_lr,
        weight_decay=weight_decay,
        correction=correction,
        k=k,
        cap=cap,
        no_cap=no_cap,
        snis=snis,
        bias_init=bias_init,
        seed=seed,
        device=device,
        bf16=not no_bf16,
        log_every=log_every,
        checkpoint_every=checkpoint_every,
        max_steps=max_steps,
        compile=compile_step,
    )
    agent_cfg = _agent_config(
        dataset,
        emb,
        embed_dim=embed_dim,
        hist_num=hist_num,
        hidden=hidden,
        encoder=encoder,
        softmax=softmax,
        temperature=temperature,
        extra_head_options=_sampled_options(softmax, negatives, sampled_logp, proposal),
        trainable_embeddings=trainable_embeddings,
    )
    from topkrec import distributed

    try:
        result = train_agent(
            dataset, out, agent_cfg, train_cfg, embeddings=emb, resume=resume, force=force, progress=STATE.progress
        )
    finally:
        distributed.teardown()
    if distributed.env_rank() != 0:
        return
    last = result.history[-1] if result.history else {}
    typer.echo(
        f"trained {result.state.global_step} steps ({result.state.epoch} epochs) in {result.seconds:.1f} s → {out}"
        + (f"; last policy loss {last['train/policy_loss']:.4g}" if "train/policy_loss" in last else "")
    )


def _table(title: str, results: dict[str, dict[str, Any]], k: int) -> Any:
    from rich.table import Table

    cols = [f"ndcg@{k}", f"recall@{k}", "mrr", f"ndcg_all@{k}", "coverage", "tail_share", "ips", "snips", "ess"]
    table = Table(title=title)
    table.add_column("model")
    for c in cols:
        table.add_column(c, justify="right")
    for name, m in results.items():
        table.add_row(name, *(f"{m[c]:.4f}" if c != "ess" else f"{m[c]:.0f}" for c in cols))
    return table


def print_table(title: str, results: dict[str, dict[str, Any]], k: int, to_stderr: bool = False) -> None:
    from rich.console import Console

    console = Console(stderr=to_stderr)
    if not console.is_terminal:  # logs and pipes: wide enough that no column is cut
        console = Console(stderr=to_stderr, width=140)
    console.print(_table(title, results, k))


def evaluate_command(
    model: Path = typer.Option(..., "--model", help="Model directory (`topkrec train`)."),
    data: Path = typer.Option(..., "--data", help="The dataset directory the model was trained on."),
    k: int = typer.Option(10, "--k", help="Recommendation list length for ndcg/recall."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json to stdout."),
    plots: bool = typer.Option(False, "--plots", help="Write PNG training curves and weight histograms."),
    out: Path | None = typer.Option(None, "--out", help="Where to write metrics.json (default <model>/metrics.json)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="Skip the popularity and β̂ baselines."),
) -> None:
    """Evaluate a model and the baselines (popularity, β̂) on the test split; write metrics.json."""
    import json

    from topkrec.cli.common import STATE
    from topkrec.data.dataset import Dataset
    from topkrec.device import resolve_device
    from topkrec.evaluate.report import evaluate_model_dirs
    from topkrec.io import check_output_file

    # Before any work: --out must be a file name that destroys no input (the model's metrics.json is its place).
    if out is not None:
        check_output_file(out, {"--model": model, "--data": data}, allowed=[model / "metrics.json"])
    dataset = Dataset.load(data)
    doc = evaluate_model_dirs(
        {None: model},
        dataset,
        k=k,
        device=resolve_device(device),
        baselines=not no_baselines,
        out=out or model / "metrics.json",
        plots_dir=(out.parent if out else model) if plots else None,
        progress=STATE.progress,
    )
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        print_table(f"test split of {data} (k={k})", doc["models"], k)
        typer.echo(f"wrote {out or model / 'metrics.json'}")


def compare_command(
    data: Path = typer.Option(..., "--data", help="Dataset directory."),
    embeddings: Path | None = typer.Option(None, "--embeddings", help="Embeddings directory (optional)."),
    out: Path = typer.Option(..., "--out", help="Directory for the three models and metrics.json."),
    corrections: str = typer.Option("none,is,topk", "--corrections", help="Comma-separated variants to compare."),
    epochs: int = typer.Option(1, "--epochs"),
    batch_size: int = typer.Option(128, "--batch-size"),
    lr: float = typer.Option(1e-5, "--lr"),
    behavior_lr: float | None = typer.Option(None, "--behavior-lr"),
    k: int = typer.Option(10, "--k"),
    cap: float | None = typer.Option(math.exp(3.0), "--cap"),
    no_cap: bool = typer.Option(False, "--no-cap"),
    snis: bool = typer.Option(False, "--snis"),
    softmax: str = typer.Option("full", "--softmax"),
    encoder: str = typer.Option("concat", "--encoder"),
    hidden: int = typer.Option(64, "--hidden"),
    hist_num: int = typer.Option(10, "--hist-num"),
    trainable_embeddings: bool = typer.Option(False, "--trainable-embeddings"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    reuse: bool = typer.Option(False, "--reuse", help="Load variants already trained under --out instead of training."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json to stdout."),
    force: bool = typer.Option(False, "--force", help="Retrain variants whose directory exists."),
) -> None:
    """Train (or --reuse) one model per --correction, evaluate all with baselines, print one table."""
    import json

    from topkrec.cli.common import STATE
    from topkrec.device import resolve_device
    from topkrec.errors import TopkrecError
    from topkrec.evaluate.report import evaluate_model_dirs
    from topkrec.io import check_no_overlap, check_output_location
    from topkrec.train import train_agent

    names = [c.strip() for c in corrections.split(",") if c.strip()]
    if not names:
        raise TopkrecError("--corrections is empty")
    check_no_overlap(out, {"--data": data, "--embeddings": embeddings})
    check_output_location(out)
    dataset, emb = _load_inputs(data, embeddings, None)
    dirs: dict[str | None, Path] = {}
    for name in names:
        model_dir = out / name
        dirs[name] = model_dir
        if reuse and (model_dir / "config.json").exists():
            typer.echo(f"{name}: reusing {model_dir}", err=True)
            continue
        train_cfg = _train_config(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            behavior_lr=behavior_lr,
            correction=name,
            k=k,
            cap=cap,
            no_cap=no_cap,
            snis=snis,
            seed=seed,
            device=device,
        )
        agent_cfg = _agent_config(
            dataset,
            emb,
            embed_dim=32,
            hist_num=hist_num,
            hidden=hidden,
            encoder=encoder,
            softmax=softmax,
            temperature=1.0,
            trainable_embeddings=trainable_embeddings,
        )
        result = train_agent(dataset, model_dir, agent_cfg, train_cfg, emb, force=force, progress=STATE.progress)
        typer.echo(f"{name}: {result.state.global_step} steps in {result.seconds:.1f} s", err=True)
    doc = evaluate_model_dirs(
        dirs,
        dataset,
        k=k,
        device=resolve_device(device),
        out=out / "metrics.json",
        plots_dir=out,
        progress=STATE.progress,
    )
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        print_table(f"corrections compared on {data} (k={k})", doc["models"], k)
        typer.echo(f"wrote {out / 'metrics.json'}")


DEMO_TRAIN: dict[str, Any] = {
    "epochs": 2,
    "lr": 3e-3,
    "cap": math.exp(3.0),
    "correction": "topk",
    "batch_size": 128,
    "trainable_embeddings": True,
}
"""The demo's training settings: lr 3e-3 (the reference 1e-5 learns nothing in a short run), 2 epochs, and the
pretrained embeddings fine-tuned (frozen two-tower embeddings blur items of one category together, and on
the synthetic logs the next item depends on the exact previous item); everything else is the default."""


def demo_command(
    out: Path = typer.Option(Path("topkrec-demo"), "--out", help="Directory for data/, embeddings/, model/, report/."),
    users: int = typer.Option(1500, "--users", help="Synthetic users."),
    items: int = typer.Option(3000, "--items", help="Synthetic catalogue size."),
    epochs: int = typer.Option(DEMO_TRAIN["epochs"], "--epochs", help="Agent training epochs."),
    pretrain_epochs: int = typer.Option(2, "--pretrain-epochs", help="Two-tower pretraining epochs."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out."),
) -> None:
    """The whole pipeline on synthetic data: synth → prepare → pretrain → train (topk) → evaluate → recommend."""
    import time

    from rich.console import Console

    from topkrec.cli import app
    from topkrec.cli.common import STATE
    from topkrec.data.dataset import Dataset
    from topkrec.device import resolve_device
    from topkrec.embeddings import load_embeddings
    from topkrec.errors import TopkrecError
    from topkrec.evaluate.report import evaluate_model_dirs
    from topkrec.io import check_output_dir
    from topkrec.policy.config import AgentConfig
    from topkrec.train import train_agent

    check_output_dir(out, force)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    timings: dict[str, float] = {}
    root_flags = [] if STATE.progress else ["--no-progress"]

    def cli(stage: str, args: list[str]) -> None:
        console.rule(f"[bold]{stage}")
        t0 = time.perf_counter()
        try:
            app([*root_flags, *args], standalone_mode=False)
        except SystemExit as e:  # a command that exits non-zero
            if e.code not in (0, None):
                raise TopkrecError(f"demo stage {stage} failed (exit {e.code})") from e
        timings[stage] = time.perf_counter() - t0

    t_start = time.perf_counter()
    raw, data, emb_dir, model, report = (out / n for n in ("raw", "data", "embeddings", "model", "report"))
    cli(
        "synth",
        ["synth", "--out", str(raw), "--users", str(users), "--items", str(items), "--seed", str(seed), "--force"],
    )
    cli(
        "prepare", ["prepare", "--format", "tianchi", "--input", str(raw), "--out", str(data), "--no-sample", "--force"]
    )
    cli(
        "pretrain",
        [
            "pretrain",
            "--data",
            str(data),
            "--out",
            str(emb_dir),
            "--epochs",
            str(pretrain_epochs),
            "--seed",
            str(seed),
            "--device",
            device,
            "--force",
        ],
    )

    console.rule("[bold]train (topk)")
    t0 = time.perf_counter()
    dataset = Dataset.load(data)
    embeddings = load_embeddings(emb_dir, dataset)
    train_cfg = _train_config(
        epochs=epochs,
        batch_size=DEMO_TRAIN["batch_size"],
        lr=DEMO_TRAIN["lr"],
        correction=DEMO_TRAIN["correction"],
        cap=DEMO_TRAIN["cap"],
        no_cap=False,
        seed=seed,
        device=device,
    )
    agent_cfg = AgentConfig(
        dataset.n_users,
        dataset.n_items,
        embed_dim=embeddings.embed_size,
        trainable_embeddings=DEMO_TRAIN["trainable_embeddings"],
    )
    result = train_agent(
        dataset, model, agent_cfg, train_cfg, embeddings=embeddings, force=True, progress=STATE.progress
    )
    timings["train"] = time.perf_counter() - t0
    console.print(f"trained {result.state.global_step} steps in {result.seconds:.1f} s")

    console.rule("[bold]evaluate")
    t0 = time.perf_counter()
    doc = evaluate_model_dirs(
        {None: model},
        dataset,
        k=10,
        device=resolve_device(device),
        out=report / "metrics.json",
        plots_dir=report,
        progress=STATE.progress,
    )
    timings["evaluate"] = time.perf_counter() - t0

    # One user's recommendations through the serving area's `topkrec recommend`.
    user_raw = str(dataset.user_raw[0]) if dataset.user_raw is not None else "0"
    cli("recommend", ["recommend", "--model", str(model), "--user", user_raw, "--k", "10", "--dataset", str(data)])

    total = time.perf_counter() - t_start
    doc["demo"] = {"timings_s": timings, "total_s": total, "train_settings": train_cfg.to_json()}
    from topkrec.io import write_json

    write_json(report / "metrics.json", doc)
    print_table("demo: next-item metrics on the held-out split (k=10)", doc["models"], 10)
    m = doc["models"]
    ratio = m["topk"]["ndcg@10"] / max(m["popularity"]["ndcg@10"], 1e-12)
    typer.echo(
        f"agent (topk) ndcg@10 = {m['topk']['ndcg@10']:.4f}, {ratio:.2f}× popularity; "
        f"stages: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + f"; total {total:.0f}s"
    )
    typer.echo(f"left under {out}/: raw/ data/ embeddings/ model/ report/ (metrics.json, plots)")


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    app.command("compare")(compare_command)
    app.command("demo")(demo_command)
