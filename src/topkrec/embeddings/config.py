"""The pretraining configuration: one frozen dataclass, saved in the embeddings directory's config.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from topkrec.config import check_settings, setting
from topkrec.device import check_device_name

LOSSES: tuple[str, ...] = ("cosine", "bce", "softmax")


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of ``topkrec pretrain``, declared once (:func:`topkrec.config.setting`).

    Defaults follow the reference DSSM (DESIGN, reference settings) except the width, 64 (the agent's own;
    DESIGN §2 has the reference's 32, which cost the agent that fine-tunes the vectors 18 % on MovieLens);
    ``--preset seed`` gives the seed notebook's run (4 epochs at lr 1e-3, width 32).
    """

    epochs: int = setting(10, "Passes over the train (user, item) pairs.", ge=1)
    batch_size: int = setting(
        2048, "Positive pairs per step (the global batch under torchrun); batch norm needs >= 2.", ge=2
    )
    lr: float = setting(5e-4, "Adam learning rate.", gt=0)
    embed_size: int = setting(
        64,
        "Width d of the output embeddings: 64, the agent's width (the reference DSSM's 32 is --preset seed's; "
        "narrower vectors narrow the agent that starts from them).",
        ge=1,
    )
    hidden: tuple[int, ...] = setting((256, 128), "Hidden widths of each tower's MLP, comma-separated.", ge=1)
    loss: Literal["cosine", "bce", "softmax"] = setting(
        "cosine",
        "cosine (CosineEmbeddingLoss, labels ±1), bce (labels 1/0 on the scaled dot product) or softmax "
        "(in-batch negatives with log-Q correction, Yi et al., RecSys 2019).",
    )
    neg_items: int = setting(
        1, "Random unconsumed negatives per positive (cosine, bce; also the AUC's negatives).", ge=1
    )
    batch_norm: bool = setting(True, "Batch norm after each hidden layer of the towers.")
    id_dim: int = setting(64, "Width of the user-id and item-id tables at the tower inputs.", ge=1)
    feature_dim: int = setting(16, "Width of each side-feature table (sex, age, category, shop, ...).", ge=1)
    temperature: float = setting(
        0.1, "Logit = cos / temperature (bce, softmax): a cosine alone spans only [-1, 1].", gt=0
    )
    weight_decay: float = setting(0.0, "Adam weight decay (dense layers only with sparse embeddings).", ge=0)
    sparse_embeddings: bool = setting(
        True,
        "Sparse gradients + lazy Adam on the id and feature tables (a step costs O(batch), not O(catalogue)); "
        "dense: nn.Embedding + Adam.",
        flag="sparse-embeddings/dense-embeddings",
    )
    bf16_on_cpu: bool = setting(
        False,
        "bf16 autocast of the towers on CPU too (always on for CUDA); off keeps CPU results fp32.",
        flag="bf16-cpu",
    )
    seed: int = setting(0, "Seed of initialisation, shuffling and negative sampling.", ge=0)
    device: str = setting("auto", "auto | cpu | cuda | cuda:N.")

    def __post_init__(self) -> None:
        check_settings(self)
        check_device_name(self.device)

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
