"""``topkrec pretrain``: two-tower embeddings from a dataset directory (DESIGN §2).

Heavy libraries (torch, polars) are imported inside the command so ``topkrec --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from topkrec.cli.settings import settings_command
from topkrec.config import SettingsGroup
from topkrec.embeddings.config import PretrainConfig
from topkrec.policy.config import PRESETS


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("pretrain")(pretrain_command)


@settings_command([SettingsGroup("pretrain", PretrainConfig)], PRESETS)
def pretrain_command(
    data: Path = typer.Option(..., "--data", help="Dataset directory written by `topkrec prepare`."),
    out: Path = typer.Option(..., "--out", help="Embeddings directory to write."),
    export_npy: bool = typer.Option(
        False, "--export-npy", help="Also write <prefix>_user/item_embeddings.npy and user/item_map.json."
    ),
    npy_prefix: str = typer.Option("dssm", "--npy-prefix", help="File-name prefix of the --export-npy files."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out directory."),
    tensorboard: Path | None = typer.Option(
        None, "--tensorboard", help="Also write the metrics as TensorBoard scalars here (extra `tensorboard`)."
    ),
    *,
    settings: dict[str, Any],
) -> None:
    """Pretrain user and item embeddings with a two-tower model; report eval loss and AUC per epoch.

    Data-parallel on several processes when launched by torchrun (`--batch-size` stays the global batch).
    """

    from topkrec.cli.common import STATE, counted
    from topkrec.errors import TopkrecError
    from topkrec.io import check_output_dir

    if not npy_prefix or any(c in npy_prefix for c in "/\\"):
        raise TopkrecError(f"--npy-prefix must be a plain file-name prefix (got {npy_prefix!r})")
    config: PretrainConfig = settings["pretrain"]
    if not data.is_dir():
        raise TopkrecError(f"--data {data} is not a directory; create a dataset with `topkrec prepare`")
    # Fail before training, not after. Under torchrun every rank checks, before any collective work, so a
    # bad --out ends every rank with the same one-line error instead of leaving the others waiting.
    check_output_dir(out, force, {"--data": data})

    from topkrec import distributed
    from topkrec.data.dataset import Dataset
    from topkrec.device import resolve_device

    ctx, torch_device = distributed.setup(resolve_device(config.device))
    try:
        from topkrec.embeddings.train import pretrain
        from topkrec.metrics_log import MetricsLogger

        dataset = Dataset.load(data)
        progress = STATE.progress and ctx.is_main
        metrics = MetricsLogger(tensorboard_dir=tensorboard if ctx.is_main else None)
        try:
            result = pretrain(dataset, config, torch_device, progress=progress, metrics_logger=metrics)
        finally:
            metrics.close()
        if ctx.is_main:  # result.config: what was trained (several CUDA processes turn sparse embeddings off)
            _write(out, force, result, dataset, data, torch_device.type, ctx.world_size, export_npy, npy_prefix)
        ctx.barrier()  # every rank waits for rank 0's write before the group is torn down
    finally:
        distributed.teardown()
    if not ctx.is_main:
        return
    auc = result.eval_auc
    auc_text = "n/a (no test pairs)" if auc is None else f"{auc:.4f}"
    processes = f" on {counted(ctx.world_size, 'process', 'processes')}" if ctx.enabled else ""
    typer.echo(
        f"wrote {out}: {result.user.shape[0]} users × {result.item.shape[0]} item rows × {config.embed_size} dims; "
        f"{counted(config.epochs, 'epoch')}{processes}, train loss {result.epochs[-1].train_loss:.4f}, "
        f"eval AUC {auc_text}"
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

    from topkrec.config import CONFIG_TOML, settings_toml
    from topkrec.embeddings import artifact
    from topkrec.io import atomic_dir, atomic_write_bytes, write_json

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
        header = "Settings of this two-tower pretraining; `topkrec pretrain --config config.toml` reproduces it."
        atomic_write_bytes(tmp / CONFIG_TOML, settings_toml({"pretrain": result.config}, header).encode())
        if (data / "maps").is_dir():
            shutil.copytree(data / "maps", tmp / "maps")
        if export_npy:
            artifact.export_npy(tmp, result.user, result.item, dataset, npy_prefix)
