"""Configuration of the agent (the network) and of its training (DESIGN §3, reference settings)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from topkrec.errors import ArtifactError


@dataclass(frozen=True)
class AgentConfig:
    """Shapes and kinds of the agent's modules; saved in the model dir's config.json."""

    n_users: int
    """Users in the dataset (rows of the user embedding table)."""
    n_items: int
    """Items in the catalogue; the item table has n_items + 1 rows, the last is the pad/OOV index."""
    embed_dim: int = 32
    """Width of the user and item embeddings (the pretrained two-tower size)."""
    hist_num: int = 10
    """Items of history in the state (the reference's hist_num)."""
    hidden: int = 64
    """Width of the state s that both heads read."""
    encoder: str = "concat"
    """State encoder: concat (reference), mean, gru, cfn."""
    softmax: str = "full"
    """Head kind for π and β̂ (``make_head`` registry): full, or sampled/adaptive when registered."""
    head_options: dict[str, Any] = field(default_factory=dict)
    """Extra options passed to ``make_head`` (e.g. temperature)."""
    trainable_embeddings: bool = False
    """Fine-tune the pretrained embeddings (frozen by default, as in the reference)."""

    @property
    def pad_index(self) -> int:
        return self.n_items

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "pad_index": self.pad_index}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> AgentConfig:
        return cls(**_known(cls, obj, "agent"))


@dataclass(frozen=True)
class TrainConfig:
    """How the agent is trained. Defaults are the reference settings (DESIGN, "Reference settings")."""

    epochs: int = 1
    """Passes over the train transitions (the reference pipeline runs 1 at lr 1e-5)."""
    batch_size: int = 128
    lr: float = 1e-5
    """Adam learning rate of π (and the encoder)."""
    behavior_lr: float | None = None
    """Adam learning rate of β̂; None = same as lr."""
    weight_decay: float = 0.0
    correction: str = "topk"
    """none | is | topk (DESIGN §3)."""
    k: int = 10
    """K of the top-K correction (the number of recommendations)."""
    cap: float | None = math.exp(3.0)
    """Importance-weight cap c in min(π/β̂, c); None = no cap. The paper's production cap is e^3."""
    snis: bool = False
    """Divide the importance weights by their batch mean (self-normalised IS)."""
    bias_init: str = "popularity"
    """Initial output biases of π and β̂: "popularity" = log of each item's train count (the log prior, so
    both heads start as the popularity policy), or "zero"."""
    seed: int = 0
    device: str = "auto"
    bf16: bool = True
    """bf16 autocast on CUDA (ignored on CPU); log-probs for w and λ_K stay float32."""
    log_every: int = 50
    """Log metrics every this many steps."""
    checkpoint_every: int = 0
    """Write a checkpoint every this many steps (0 = only at each epoch end)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps in total (a checkpoint is written there)."""
    compile: bool = False
    """Run the step's forward through ``torch.compile`` (off by default: on this 2-core CPU it measured no
    faster than eager at the reference shapes, and the first step pays ~20 s of compilation)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TrainConfig:
        return cls(**_known(cls, obj, "train"))


def _known(cls: type, obj: dict[str, Any], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ArtifactError(f"config.json: the {what!r} section is not an object")
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in obj.items() if k in names}
