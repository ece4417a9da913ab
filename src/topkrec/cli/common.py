"""State shared by CLI commands (set by the root callback)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class CliState:
    debug: bool = False
    progress: bool = True
    # TOPKREC_PROGRESS=1 forces bars even when stderr is not a terminal (demos in CI logs).
    force_progress: bool = os.environ.get("TOPKREC_PROGRESS") == "1"


STATE = CliState()


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun in its number: ``counted(1, "epoch")`` → "1 epoch", ``counted(2, "process", "processes")``."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"


def read_item_ids(path: Path, flag: str = "--candidates") -> list[str]:
    """Raw item ids from a text file (one per line) or a .csv/.parquet (column ``item``, else the first)."""
    from topkrec.errors import TopkrecError

    if not path.is_file():
        raise TopkrecError(f"{flag} file {path} not found")
    if path.suffix.lower() in (".txt", ""):
        try:
            ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise TopkrecError(f"cannot read {flag} file {path}: {e}") from e
    else:
        from topkrec.ope.logs import read_table

        df = read_table(path)
        if df.width == 0:
            raise TopkrecError(f"{flag} file {path} has no columns")
        col = "item" if "item" in df.columns else df.columns[0]
        ids = [str(x) for x in df[col].cast(str).drop_nulls().to_list()]
    if not ids:
        raise TopkrecError(f"{flag} file {path} holds no item id")
    return ids
