"""State shared by CLI commands (set by the root callback)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class CliState:
    debug: bool = False
    progress: bool = True
    # TOPKREC_PROGRESS=1 forces bars even when stderr is not a terminal (demos in CI logs).
    force_progress: bool = os.environ.get("TOPKREC_PROGRESS") == "1"


STATE = CliState()
