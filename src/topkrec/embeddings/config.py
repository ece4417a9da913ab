"""The pretraining configuration: one frozen dataclass, saved in the embeddings directory's config.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from topkrec.errors import TopkrecError

LOSSES = ("cosine", "bce", "softmax")


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of ``topkrec pretrain``. Defaults follow the reference DSSM (DESIGN, reference settings)."""

    epochs: int = 10
    """Passes over the train (user, item) pairs."""
    batch_size: int = 2048
    """Positive pairs per step (each brings ``neg_items`` sampled negatives for cosine / bce)."""
    lr: float = 5e-4
    """Adam learning rate."""
    embed_size: int = 32
    """Width d of the output embeddings."""
    hidden: tuple[int, ...] = (256, 128)
    """Hidden layer widths of each tower's MLP."""
    loss: str = "cosine"
    """``cosine`` (CosineEmbeddingLoss, labels ±1), ``bce`` (labels 1/0 on the scaled dot product) or
    ``softmax`` (in-batch negatives with log-Q correction, Yi et al., RecSys 2019)."""
    neg_items: int = 1
    """Random unconsumed negatives per positive (cosine, bce; also the eval negatives for AUC)."""
    batch_norm: bool = True
    """Batch norm after each hidden layer."""
    id_dim: int = 64
    """Width of the user-id and item-id embedding tables at the tower inputs."""
    feature_dim: int = 16
    """Width of each side-feature embedding table (sex, age, category, shop, …)."""
    temperature: float = 0.1
    """Logits are cos / temperature for ``bce`` and ``softmax`` (a cosine alone spans only [-1, 1])."""
    weight_decay: float = 0.0
    """Adam weight decay (dense layers only when ``sparse_embeddings``)."""
    sparse_embeddings: bool = True
    """Id and feature tables get sparse gradients updated by ``SparseAdam`` (lazy Adam: only the rows in the
    batch move), so a step costs O(batch), not O(catalogue); False = dense ``nn.Embedding`` + Adam."""
    bf16_on_cpu: bool = False
    """bf16 autocast of the towers on CPU too (always on for CUDA). Measured 1.7x faster per step on an
    AVX512-BF16 CPU; off by default so CPU results stay fp32."""
    seed: int = 0
    """Seeds initialisation, shuffling and negative sampling: same seed, same embeddings (on one device)."""

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"--epochs must be ≥ 1 (got {self.epochs})")
        if self.batch_size < 2:
            problems.append(f"--batch-size must be ≥ 2 (got {self.batch_size}); batch norm needs two rows")
        if not self.lr > 0:
            problems.append(f"--lr must be > 0 (got {self.lr})")
        if self.embed_size < 1:
            problems.append(f"--embed-size must be ≥ 1 (got {self.embed_size})")
        if self.loss not in LOSSES:
            problems.append(f"--loss must be one of {', '.join(LOSSES)} (got {self.loss!r})")
        if self.neg_items < 1:
            problems.append(f"--neg-items must be ≥ 1 (got {self.neg_items})")
        if any(h < 1 for h in self.hidden):
            problems.append(f"hidden widths must be ≥ 1 (got {self.hidden})")
        if self.id_dim < 1 or self.feature_dim < 1:
            problems.append("id_dim and feature_dim must be ≥ 1")
        if not self.temperature > 0:
            problems.append(f"temperature must be > 0 (got {self.temperature})")
        if self.weight_decay < 0:
            problems.append(f"weight decay must be ≥ 0 (got {self.weight_decay})")
        if problems:
            raise TopkrecError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "hidden" in known:
            known["hidden"] = tuple(known["hidden"])
        return cls(**known)
