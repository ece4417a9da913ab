"""The embeddings directory written by ``topkrec pretrain`` and read by ``topkrec train`` (DESIGN §2, §7).

Layout::

    user_embeddings.safetensors   one tensor, key "embeddings", float32 (n_users, d)
    item_embeddings.safetensors   one tensor, key "embeddings", float32 (n_items + 1, d); last row (pad/OOV) zeros
    config.json                   the PretrainConfig, derived shapes, topkrec version, dataset n_users / n_items
                                  and fingerprints
    metrics.json                  DESIGN §9: epochs [{epoch, train_loss, eval_loss, eval_auc}], eval_auc
    maps/                         a copy of the dataset's id maps (raw id of each index)

The dataset fingerprint hashes the id maps (raw id of every user and item index) and the counts: it
identifies what each embedding row means, so embeddings are refused for a dataset whose indices mean
something else even when the shapes happen to agree.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from topkrec.errors import ArtifactError, TopkrecError
from topkrec.io import read_json

if TYPE_CHECKING:
    import torch

    from topkrec.data.dataset import Dataset

logger = logging.getLogger(__name__)

USER_FILE = "user_embeddings.safetensors"
ITEM_FILE = "item_embeddings.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
TENSOR_KEY = "embeddings"
ARTIFACT_VERSION = 1


@dataclass(frozen=True)
class PretrainedEmbeddings:
    """Pretrained two-tower embeddings, row i = index i of the dataset.

    ``item`` has ``n_items + 1`` rows; the last (pad/OOV index ``n_items``) is all zeros.
    """

    user: torch.Tensor  # (n_users, d) float32
    item: torch.Tensor  # (n_items + 1, d) float32
    config: dict[str, Any]

    @property
    def embed_size(self) -> int:
        return int(self.user.shape[1])

    @property
    def n_users(self) -> int:
        return int(self.user.shape[0])

    @property
    def n_items(self) -> int:
        """Number of real items (the pad/OOV row excluded)."""
        return int(self.item.shape[0]) - 1


def dataset_fingerprint(dataset: Dataset) -> str:
    """sha256 over the counts and the raw id of every user and item index (what each row means)."""
    h = hashlib.sha256()
    h.update(f"users={dataset.n_users};items={dataset.n_items};".encode())
    for raw, n in ((dataset.user_raw, dataset.n_users), (dataset.item_raw, dataset.n_items)):
        ids = np.arange(n).astype(str) if raw is None else np.asarray(raw).astype(str)
        h.update("\x1f".join(ids.tolist()).encode())
        h.update(b"\x1e")
    return h.hexdigest()


def meta_fingerprint(meta: dict[str, Any]) -> str:
    """sha256 of the dataset's meta.json content (canonical JSON), recorded for provenance."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()


def _load_tensor(path: Path) -> torch.Tensor:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.exists():
        raise ArtifactError(f"{path} is missing; the embeddings directory is incomplete, re-run `topkrec pretrain`")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ArtifactError(f"{path} is not a readable safetensors file ({e}); re-run `topkrec pretrain`") from e
    if TENSOR_KEY not in tensors:
        raise ArtifactError(f"{path} has no tensor {TENSOR_KEY!r} (found {sorted(tensors)}); re-run `topkrec pretrain`")
    t = tensors[TENSOR_KEY]
    if t.ndim != 2 or not t.is_floating_point():
        raise ArtifactError(f"{path}: expected a 2-D float tensor, got shape {tuple(t.shape)} dtype {t.dtype}")
    return t.float()


def load_embeddings(directory: Path | str, dataset: Dataset | None = None) -> PretrainedEmbeddings:
    """Load an embeddings directory; check it is complete and, given ``dataset``, that it belongs to it.

    Raises ``ArtifactError`` with a message saying what is wrong when the directory is missing or corrupt,
    the two tables disagree, or their shapes (or id maps) do not match ``dataset``.
    """
    import torch

    d = Path(directory)
    if not d.is_dir():
        raise ArtifactError(f"embeddings directory {d} does not exist; create it with `topkrec pretrain`")
    try:
        config = read_json(d / CONFIG_FILE)
    except TopkrecError as e:
        raise ArtifactError(f"{d} is not a valid embeddings directory: {e}") from e
    if not isinstance(config, dict) or "dataset" not in config:
        raise ArtifactError(f"{d / CONFIG_FILE} lacks the 'dataset' section; re-run `topkrec pretrain`")
    user = _load_tensor(d / USER_FILE)
    item = _load_tensor(d / ITEM_FILE)
    if user.shape[1] != item.shape[1]:
        raise ArtifactError(
            f"{d}: user embeddings have width {user.shape[1]} but item embeddings {item.shape[1]}; "
            "the directory is corrupt, re-run `topkrec pretrain`"
        )
    if not (torch.isfinite(user).all() and torch.isfinite(item).all()):
        raise ArtifactError(f"{d}: embeddings contain NaN or inf; re-run `topkrec pretrain`")
    if item.shape[0] < 1 or bool(item[-1].abs().max() > 0):
        raise ArtifactError(f"{d}: the last item row (pad/OOV) must be all zeros; re-run `topkrec pretrain`")
    saved = config["dataset"]
    if (int(saved.get("n_users", -1)), int(saved.get("n_items", -1)) + 1) != (user.shape[0], item.shape[0]):
        raise ArtifactError(
            f"{d}: tables have shapes {tuple(user.shape)} and {tuple(item.shape)} but config.json records "
            f"n_users={saved.get('n_users')} n_items={saved.get('n_items')}; the directory is corrupt"
        )
    if dataset is not None:
        if user.shape[0] != dataset.n_users or item.shape[0] != dataset.n_items + 1:
            raise ArtifactError(
                f"embeddings in {d} are for {user.shape[0]} users / {item.shape[0] - 1} items but the dataset has "
                f"{dataset.n_users} users / {dataset.n_items} items; re-run `topkrec pretrain --data` on this dataset"
            )
        expected = saved.get("fingerprint")
        if expected is not None and expected != dataset_fingerprint(dataset):
            raise ArtifactError(
                f"embeddings in {d} were trained on a dataset with other id maps (fingerprint mismatch) although "
                "the shapes agree; re-run `topkrec pretrain --data` on this dataset"
            )
    return PretrainedEmbeddings(user=user, item=item, config=config)


def write_embeddings(directory: Path, user: torch.Tensor, item: torch.Tensor) -> None:
    """Write the two tables into ``directory`` (a fresh temporary dir from ``io.atomic_dir``).

    ``item`` must already carry the zero pad/OOV row as its last row.
    """
    from safetensors.torch import save_file

    if bool(item[-1].abs().max() > 0):
        raise ValueError("the last item row (pad/OOV) must be all zeros")
    d = Path(directory)
    save_file({TENSOR_KEY: user.detach().float().cpu().contiguous()}, str(d / USER_FILE))
    save_file({TENSOR_KEY: item.detach().float().cpu().contiguous()}, str(d / ITEM_FILE))


def build_config_json(
    config: dict[str, Any], user_shape: tuple[int, ...], item_shape: tuple[int, ...], dataset: Dataset, **extra: Any
) -> dict[str, Any]:
    """config.json content: the pretraining config, derived shapes, library version, dataset identity."""
    from topkrec import __version__

    return {
        "artifact": "topkrec-embeddings",
        "artifact_version": ARTIFACT_VERSION,
        "topkrec_version": __version__,
        "config": config,
        "shapes": {"user_embeddings": list(user_shape), "item_embeddings": list(item_shape)},
        "pad_index": dataset.n_items,
        "dataset": {
            "n_users": dataset.n_users,
            "n_items": dataset.n_items,
            "fingerprint": dataset_fingerprint(dataset),
            "meta_sha256": meta_fingerprint(dataset.meta),
            "user_features": sorted(dataset.user_features),
            "item_features": sorted(dataset.item_features),
        },
        **extra,
    }


def export_npy(directory: Path, user: torch.Tensor, item: torch.Tensor, dataset: Dataset, prefix: str) -> list[Path]:
    """The reference pipeline's files: ``<prefix>_user_embeddings.npy``, ``<prefix>_item_embeddings.npy`` and
    ``user_map.json`` / ``item_map.json`` ({raw id: index}), for users migrating from it."""
    from topkrec.io import atomic_write_bytes, write_json

    d = Path(directory)
    paths = []
    for name, table in (("user", user), ("item", item)):
        path = d / f"{prefix}_{name}_embeddings.npy"
        buf = _npy_bytes(table.detach().float().cpu().numpy())
        atomic_write_bytes(path, buf)
        paths.append(path)
    for name, raw, n in (("user", dataset.user_raw, dataset.n_users), ("item", dataset.item_raw, dataset.n_items)):
        ids = np.arange(n).astype(str) if raw is None else np.asarray(raw).astype(str)
        path = d / f"{name}_map.json"
        write_json(path, {str(r): i for i, r in enumerate(ids.tolist())})
        paths.append(path)
    return paths


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()
