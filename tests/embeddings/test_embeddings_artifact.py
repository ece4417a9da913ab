"""The embeddings-directory loader: round trip and every kind of bad directory → ArtifactError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from topkrec.data.dataset import Dataset
from topkrec.embeddings import dataset_fingerprint, load_embeddings, write_embeddings
from topkrec.errors import ArtifactError
from topkrec.io import atomic_dir, write_json


def _dataset(n_users: int = 4, n_items: int = 5, item_raw: list[str] | None = None) -> Dataset:
    n = 6
    rng = np.random.default_rng(0)
    return Dataset(
        user=rng.integers(0, n_users, n).astype(np.int32),
        item=rng.integers(0, n_items, n).astype(np.int32),
        behavior=np.array(["pv"] * n, dtype=object),
        reward=np.ones(n, np.float32),
        ts=np.arange(n, dtype=np.int64),
        session=np.arange(n, dtype=np.int32),
        is_test=np.zeros(n, bool),
        returns=np.ones(n, np.float32),
        n_users=n_users,
        n_items=n_items,
        item_raw=None if item_raw is None else np.array(item_raw),
    )


def _write(out: Path, ds: Dataset, d: int = 3, pad_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    user = torch.randn(ds.n_users, d)
    item = torch.randn(ds.n_items + 1, d)
    item[-1] = pad_value
    with atomic_dir(out) as tmp:
        if pad_value == 0.0:
            write_embeddings(tmp, user, item)
        else:
            from safetensors.torch import save_file

            save_file({"embeddings": user}, str(tmp / "user_embeddings.safetensors"))
            save_file({"embeddings": item}, str(tmp / "item_embeddings.safetensors"))
        write_json(
            tmp / "config.json",
            {"dataset": {"n_users": ds.n_users, "n_items": ds.n_items, "fingerprint": dataset_fingerprint(ds)}},
        )
    return user, item


def test_round_trip_and_dataset_check(tmp_path: Path) -> None:
    ds = _dataset()
    user, item = _write(tmp_path / "emb", ds)
    emb = load_embeddings(tmp_path / "emb", ds)
    assert torch.equal(emb.user, user) and torch.equal(emb.item, item)
    assert emb.embed_size == 3 and emb.n_users == 4 and emb.n_items == 5
    assert emb.config["dataset"]["n_items"] == 5
    assert torch.count_nonzero(emb.item[-1]) == 0


def test_missing_dir_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load_embeddings(tmp_path / "nope")
    ds = _dataset()
    _write(tmp_path / "emb", ds)
    (tmp_path / "emb" / "item_embeddings.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_embeddings(tmp_path / "emb")
    (tmp_path / "emb2").mkdir()
    with pytest.raises(ArtifactError, match="config.json"):
        load_embeddings(tmp_path / "emb2")


def test_corrupt_file(tmp_path: Path) -> None:
    ds = _dataset()
    _write(tmp_path / "emb", ds)
    (tmp_path / "emb" / "user_embeddings.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="safetensors"):
        load_embeddings(tmp_path / "emb")
    (tmp_path / "emb" / "config.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="JSON"):
        load_embeddings(tmp_path / "emb")


def test_shape_and_map_mismatch(tmp_path: Path) -> None:
    ds = _dataset()
    _write(tmp_path / "emb", ds)
    with pytest.raises(ArtifactError, match="dataset has"):
        load_embeddings(tmp_path / "emb", _dataset(n_items=6))
    with pytest.raises(ArtifactError, match="fingerprint"):
        load_embeddings(tmp_path / "emb", _dataset(item_raw=["a", "b", "c", "d", "e"]))


def test_nonzero_pad_row_is_refused(tmp_path: Path) -> None:
    ds = _dataset()
    _write(tmp_path / "emb", ds, pad_value=1.0)
    with pytest.raises(ArtifactError, match="pad"):
        load_embeddings(tmp_path / "emb")
