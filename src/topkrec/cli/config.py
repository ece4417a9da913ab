"""``topkrec config show|diff``: the resolved settings of a model or embeddings directory, or a config file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

config_app = typer.Typer(
    help="Show or compare the settings of model / embeddings directories and config files.",
    no_args_is_help=True,
    add_completion=False,
)


def read_settings(path: Path) -> dict[str, dict[str, Any]]:
    """``{table: {setting: value}}`` of a model directory, an embeddings directory or a .toml file.

    A directory's ``config.toml`` is read when present; older directories (written before it existed) are
    read from their ``config.json``.
    """
    from topkrec.config import CONFIG_TOML, read_toml, settings_to_mapping
    from topkrec.errors import TopkrecError

    path = Path(path)
    if path.is_file():
        return read_toml(path)
    if not path.is_dir():
        raise TopkrecError(f"{path} does not exist; pass a model or embeddings directory, or a .toml file")
    if (path / CONFIG_TOML).is_file():
        return read_toml(path / CONFIG_TOML)
    from topkrec.io import read_json

    if not (path / "config.json").is_file():
        raise TopkrecError(f"{path} holds neither {CONFIG_TOML} nor config.json; is it a topkrec output?")
    raw = read_json(path / "config.json")
    if isinstance(raw, dict) and "agent" in raw:
        from topkrec.policy.artifact import read_saved_configs

        agent, train, _ = read_saved_configs(path)
        return {"agent": settings_to_mapping(agent), "train": settings_to_mapping(train)}
    if isinstance(raw, dict) and raw.get("artifact") == "topkrec-embeddings" and isinstance(raw.get("config"), dict):
        from topkrec.embeddings.config import PretrainConfig

        return {"pretrain": settings_to_mapping(PretrainConfig.from_dict(raw["config"]))}
    raise TopkrecError(f"{path / 'config.json'} is not a topkrec model or embeddings config")


@config_app.command("show")
def show(path: Path = typer.Argument(..., help="Model or embeddings directory, or a .toml file.")) -> None:
    """Print the settings as TOML (what `--config` reads)."""
    from topkrec.config import dumps_toml

    typer.echo(dumps_toml(read_settings(path)), nl=False)


@config_app.command("diff")
def diff(
    a: Path = typer.Argument(..., help="First model/embeddings directory or .toml file."),
    b: Path = typer.Argument(..., help="Second model/embeddings directory or .toml file."),
) -> None:
    """Print the settings that differ between two runs, one per line: [table] name: A → B."""
    left, right = read_settings(a), read_settings(b)
    lines = []
    for table in sorted(set(left) | set(right)):
        la, rb = left.get(table, {}), right.get(table, {})
        for name in sorted(set(la) | set(rb)):
            va, vb = la.get(name, "(absent)"), rb.get(name, "(absent)")
            if va != vb:
                lines.append(f"[{table}] {name}: {va!r} → {vb!r}")
    typer.echo("\n".join(lines) if lines else "no differences")


@config_app.command("flags")
def flags(command: str = typer.Argument(..., help="train, compare, demo or pretrain.")) -> None:
    """Print a command's settings as a markdown table (flag, default, meaning), as the docs show them."""
    from topkrec.config.resolve import settings_markdown
    from topkrec.errors import TopkrecError

    functions = _setting_commands()
    if command not in functions:
        raise TopkrecError(f"unknown command {command!r}; settings belong to {', '.join(functions)}")
    typer.echo(settings_markdown(functions[command]), nl=False)


def _setting_commands() -> dict[str, Any]:
    """Each command with generated settings → its settings groups."""
    from topkrec.cli import agent, pretrain

    return {
        name: fn.settings_groups  # type: ignore[attr-defined]
        for name, fn in (
            ("train", agent.train_command),
            ("compare", agent.compare_command),
            ("demo", agent.demo_command),
            ("pretrain", pretrain.pretrain_command),
        )
    }


def register(app: typer.Typer) -> None:
    """Add ``topkrec config`` to ``app``."""
    app.add_typer(config_app, name="config")
