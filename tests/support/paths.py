"""Where the repository and the real data samples are (../shared/data beside the checkout, or
$TOPKREC_SHARED_DATA); tests that need a sample skip cleanly when it is absent."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

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


def load_script(path: Path) -> ModuleType:
    """A script of benchmarks/ or examples/ imported as a module named after its file (registered in
    sys.modules: dataclasses look their module up while the file executes)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
