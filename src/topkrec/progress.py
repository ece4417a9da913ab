"""Progress bars for long work (rich). Library code takes a ``progress: bool`` and uses this;
the CLI turns it off with ``--no-progress``. Bars go to stderr so ``--json`` stdout stays clean."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class _NullBar:
    def update(self, advance: float = 1, **fields: Any) -> None:  # noqa: D401 - same shape as the real bar
        pass


class _RichBar:
    def __init__(self, progress: Any, task: Any) -> None:
        self._progress = progress
        self._task = task

    def update(self, advance: float = 1, **fields: Any) -> None:
        self._progress.update(self._task, advance=advance, **fields)


@contextlib.contextmanager
def progress_bar(total: float | None, description: str, enabled: bool = True) -> Iterator[Any]:
    """``with progress_bar(n, "train") as bar: bar.update(1, info="loss=…")``."""
    if not enabled:
        yield _NullBar()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total, info="")
        yield _RichBar(progress, task)
