"""Resolved settings as TOML: ``config.toml`` beside every run's outputs, read back by ``--config``.

The file has one table per settings group (``[agent]``, ``[train]``, ``[pretrain]``) holding plain
scalars and lists of scalars. TOML has no null: an optional setting that is off is written as the
string ``"none"`` (``cap = "none"``), which every loader of settings accepts. Reading uses the standard
library's ``tomllib``; the writer below covers exactly the values settings can take.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from topkrec.errors import TopkrecError

__all__ = ["CONFIG_TOML", "dumps_toml", "read_toml"]

CONFIG_TOML = "config.toml"
"""File name of the resolved settings written next to a run's outputs."""


def _scalar(value: Any, where: str) -> str:
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: TOML settings must be finite, got {value}")
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    raise TypeError(f"{where}: cannot write {type(value).__name__} {value!r} to TOML")


def dumps_toml(tables: Mapping[str, Mapping[str, Any]], header: str = "") -> str:
    """TOML text of ``{table: {key: scalar | list of scalars}}``, with ``header`` as leading comments."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for name, values in tables.items():
        if lines:
            lines.append("")
        lines.append(f"[{name}]")
        for key, value in values.items():
            where = f"[{name}] {key}"
            if isinstance(value, list | tuple):
                text = "[" + ", ".join(_scalar(v, where) for v in value) + "]"
            else:
                text = _scalar(value, where)
            lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; a missing, unreadable or malformed file is a one-line ``TopkrecError``."""
    path = Path(path)
    if path.is_dir():
        candidate = path / CONFIG_TOML
        if not candidate.is_file():
            raise TopkrecError(f"{path} is a directory without a {CONFIG_TOML}; pass a .toml file")
        path = candidate
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError as e:
        raise TopkrecError(f"config file {path} does not exist") from e
    except OSError as e:
        raise TopkrecError(f"cannot read config file {path}: {e.strerror or e}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise TopkrecError(f"{path} is not valid TOML: {e}") from e
    return doc
