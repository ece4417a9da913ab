"""Where the repository and the real data samples are (../shared/data beside the checkout, or
$TOPKREC_SHARED_DATA); tests that need a sample skip cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("TOPKREC_SHARED_DATA", REPO.parent / "shared" / "data"))
SUPPORT = Path(__file__).resolve().parent


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test when it is not there."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real sample {p} not present")
    return p
