"""CLI commands of this area. Import heavy libraries inside the command functions."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
