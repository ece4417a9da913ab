"""``topkrec pretrain``: two-tower embeddings from a dataset directory (DESIGN §2).

Heavy libraries (torch, polars) are imported inside the command so ``topkrec --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("pretrain")(pretrain_command)


def pretrain_command(
    data: Path = typer.Option(..., "--data", help="Dataset directory written by `topkrec prepare`."),
    out: Path = typer.Option(..., "--out", help="Embeddings directory to write."),
    epochs: int = typer.Option(10, "--epochs", help="Passes over the train (user, item) pairs."),
    batch_size: int = typer.Option(2048, "--batch-size", help="Positive pairs per step."),
    lr: float = typer.Option(5e-4, "--lr", help="Adam learning rate."),
    embed_size: int = typer.Option(32, "--embed-size", help="Width of the output embeddings."),
    hidden: str = typer.Option("256,128", "--hidden", help="Hidden widths of each tower's MLP, comma-separated."),
    loss: str = typer.Option("cosine", "--loss", help="cosine | bce | softmax (in-batch negatives, log-Q)."),
    neg_items: int = typer.Option(1, "--neg-items", help="Random unconsumed negatives per positive."),
    temperature: float = typer.Option(0.1, "--temperature", help="Logit = cos / temperature (bce, softmax)."),
    no_batch_norm: bool = typer.Option(False, "--no-batch-norm", help="Turn batch norm in the towers off."),
    dense_embeddings: bool = typer.Option(
        False, "--dense-embeddings", help="Dense embedding gradients + Adam instead of sparse rows + SparseAdam."
    ),
    bf16_on_cpu: bool = typer.Option(False, "--bf16-cpu", help="bf16 autocast on CPU too (always on CUDA)."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, shuffling and negative sampling."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    export_npy: bool = typer.Option(
        False, "--export-npy", help="Also write <prefix>_user/item_embeddings.npy and user/item_map.json."
    ),
    npy_prefix: str = typer.Option("dssm", "--npy-prefix", help="File-name prefix of the --export-npy files."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out directory."),
) -> None:
    """Pretrain user and item embeddings with a two-tower model; report eval loss and AUC per epoch.

    Data-parallel on several processes when launched by torchrun (`--batch-size` stays the global batch).
    """

    from topkrec.cli.common import STATE
    from topkrec.errors import TopkrecError
    from topkrec.io import check_output_dir

    try:
        hidden_widths = tuple(int(h) for h in hidden.split(",") if h.strip())
    except ValueError as e:
        raise TopkrecError(f"--hidden must be comma-separated integers like 256,128 (got {hidden!r})") from e
    if not npy_prefix or any(c in npy_prefix for c in "/\\"):
        raise TopkrecError(f"--npy-prefix must be a plain file-name prefix (got {npy_prefix!r})")
    from topkrec.embeddings.config import PretrainConfig

    config = PretrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        embed_size=embed_size,
        hidden=hidden_widths,
        loss=loss,
        neg_items=neg_items,
        batch_norm=not no_batch_norm,
        sparse_embeddings=not dense_embeddings,
        bf16_on_cpu=bf16_on_cpu,
        temperature=temperature,
        seed=seed,
    )
    if not data.is_dir():
        raise TopkrecError(f"--data {data} is not a directory; create a dataset with `topkrec prepare`")
    # Fail before training, not after. Under torchrun every rank checks, before any collective work, so a
    # bad --out ends every rank with the same one-line error instead of leaving the others waiting.
    check_output_dir(out, force, {"--data": data})

    from topkrec import distributed
    from topkrec.data.dataset import Dataset
    from topkrec.device import resolve_device

    ctx, torch_device = distributed.setup(resolve_device(device))
    try:
        from topkrec.embeddings.train import pretrain
        from topkrec.metrics_log import MetricsLogger

        dataset = Dataset.load(data)
        progress = STATE.progress and ctx.is_main
        result = pretrain(dataset, config, torch_device, progress=progress, metrics_logger=MetricsLogger())
        if ctx.is_main:  # result.config: what was trained (several CUDA processes turn sparse embeddings off)
            _write(out, force, result, dataset, data, torch_device.type, ctx.world_size, export_npy, npy_prefix)
        ctx.barrier()  # every rank waits for rank 0's write before the group is torn down
    finally:
        distributed.teardown()
    if not ctx.is_main:
        return
    auc = result.eval_auc
    auc_text = "n/a (no test pairs)" if auc is None else f"{auc:.4f}"
    processes = f" on {ctx.world_size} process{'es' if ctx.world_size > 1 else ''}" if ctx.enabled else ""
    typer.echo(
        f"wrote {out}: {result.user.shape[0]} users × {result.item.shape[0]} item rows × {config.embed_size} dims; "
        f"{config.epochs} epochs{processes}, train loss {result.epochs[-1].train_loss:.4f}, eval AUC {auc_text}"
    )


def _write(
    out: Path,
    force: bool,
    result: Any,
    dataset: Any,
    data: Path,
    device_type: str,
    world_size: int,
    export_npy: bool,
    npy_prefix: str,
) -> None:
    """The embeddings directory, written atomically (rank 0 only under torchrun)."""
    import shutil

    from topkrec.embeddings import artifact
    from topkrec.io import atomic_dir, write_json

    with atomic_dir(out, force=force) as tmp:
        artifact.write_embeddings(tmp, result.user, result.item)
        write_json(
            tmp / artifact.CONFIG_FILE,
            artifact.build_config_json(
                result.config.to_dict(),
                tuple(result.user.shape),
                tuple(result.item.shape),
                dataset,
                dataset_path=str(data.resolve()),
                device=device_type,
                world_size=world_size,
            ),
        )
        write_json(tmp / artifact.METRICS_FILE, result.metrics())
        if (data / "maps").is_dir():
            shutil.copytree(data / "maps", tmp / "maps")
        if export_npy:
            artifact.export_npy(tmp, result.user, result.item, dataset, npy_prefix)
