"""Shared fixtures. ``tests/`` mirrors ``src/topkrec/``; helpers live in the ``support`` package.
Real data lives in ../shared/data beside the checkout (or $TOPKREC_SHARED_DATA); tests that need it skip
cleanly when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.paths import REPO, SHARED_DATA, shared_path  # noqa: F401  (REPO, SHARED_DATA: for tests)


@pytest.fixture
def taobao4k() -> Path:
    return shared_path("taobao-head4k", "UserBehavior_head.csv")


@pytest.fixture
def taobao84k() -> Path:
    return shared_path("taobao-head84k", "UserBehavior_head.csv")


@pytest.fixture
def movielens_small() -> Path:
    return shared_path("movielens-latest-small")


@pytest.fixture
def planted_dataset_dir(tmp_path: Path) -> Path:
    """A dataset dir of ``topkrec.embeddings.planted.planted_block_dataset`` (pretraining's known answer)."""
    from topkrec.embeddings.planted import planted_block_dataset
    from topkrec.io import atomic_dir

    d = tmp_path / "data"
    with atomic_dir(d) as tmp:
        planted_block_dataset().save(tmp)
    return d


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
