"""One metrics logger with namespaced keys (``train/policy_loss``, ``time/samples_per_s``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger("topkrec.metrics")


class MetricsLogger:
    """Logs metric dicts through ``logging`` and optionally appends them as JSONL to a file."""

    def __init__(self, jsonl_path: Path | None = None) -> None:
        self.jsonl_path = Path(jsonl_path) if jsonl_path is not None else None
        self.history: list[dict[str, Any]] = []

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self.history.append(record)
        logger.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        if self.jsonl_path is not None:
            self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
            with self.jsonl_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
