"""One metrics logger with namespaced keys (``train/policy_loss``, ``time/samples_per_s``) and its sinks.

Every record goes to ``logging`` (INFO), into ``history`` (the model directory's ``train_log.jsonl``), and
to the optional sinks: a JSONL file and a TensorBoard event directory (``--tensorboard DIR``; needs the
``tensorboard`` extra), where each key is a scalar tag plotted against the step.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from topkrec.errors import TopkrecError

logger = logging.getLogger("topkrec.metrics")

__all__ = ["MetricsLogger", "TensorBoardSink"]


class TensorBoardSink:
    """Scalars into a TensorBoard event directory (``torch.utils.tensorboard``), one tag per metric key."""

    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise TopkrecError("--tensorboard needs the tensorboard package: pip install 'topkrec[tensorboard]'") from e
        log_dir = Path(log_dir)
        if log_dir.exists() and not log_dir.is_dir():
            raise TopkrecError(f"--tensorboard {log_dir} exists and is not a directory")
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MetricsLogger:
    """Logs metric dicts through ``logging``, keeps them in ``history`` and writes them to its sinks."""

    def __init__(self, jsonl_path: Path | None = None, tensorboard_dir: Path | None = None) -> None:
        self.jsonl_path = Path(jsonl_path) if jsonl_path is not None else None
        self.history: list[dict[str, Any]] = []
        self.tensorboard = TensorBoardSink(tensorboard_dir) if tensorboard_dir is not None else None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self.history.append(record)
        logger.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        if self.jsonl_path is not None:
            self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
            with self.jsonl_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.write(step, {k: float(v) for k, v in metrics.items()})

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
