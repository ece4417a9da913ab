"""The agent network (state encoder, π head, β̂ head) and the model directory (DESIGN §3, §7).

Model directory layout (everything safetensors or JSON; no pickle)::

    config.json                  format_version, library_version, "agent" (AgentConfig + pad_index),
                                 "train" (TrainConfig), "data" (counts, dataset fingerprint), "shapes"
    encoder.safetensors          user_embedding.weight, item_embedding.weight, encoder.* (state encoder)
    policy_head.safetensors      π head parameters
    behavior_head.safetensors    β̂ head parameters
    maps.json                    {"user_raw": [raw id of user index i], "item_raw": [raw id of item index i]}
    optimizer.safetensors        Adam state tensors (train only; needed by --resume)
    optimizer.json               Adam param groups + the tensor keys of each parameter's state
    rng.safetensors              torch RNG states (cpu, cuda if any)
    trainer_state.json           epoch, step in epoch, global step, finished
    train_log.jsonl              one JSON object of namespaced metrics per logged step
    metrics.json                 written by ``topkrec evaluate`` (DESIGN §9)

``load_agent`` needs only config.json, the three module files and maps.json.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from topkrec.errors import ArtifactError, TopkrecError
from topkrec.io import atomic_write_bytes, read_json, write_json
from topkrec.policy.config import AgentConfig, TrainConfig
from topkrec.policy.encoders import StateEncoder
from topkrec.policy.heads import ItemHead, make_head

logger = logging.getLogger(__name__)

MODEL_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MAPS_FILE = "maps.json"
MODULE_FILES = {
    "encoder": "encoder.safetensors",
    "policy_head": "policy_head.safetensors",
    "behavior_head": "behavior_head.safetensors",
}

__all__ = ["Agent", "LoadedAgent", "load_agent", "save_agent", "write_model_files"]


class Agent(nn.Module):
    """Embeddings + state encoder + π head + β̂ head.

    β̂ reads the state detached (DESIGN §3): its cross-entropy loss trains only β̂'s own parameters,
    so the behaviour estimate never shapes the state that π uses.
    """

    def __init__(
        self, config: AgentConfig, user_init: torch.Tensor | None = None, item_init: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.config = config
        n_items, d = config.n_items, config.embed_dim
        self.user_embedding = nn.Embedding(config.n_users, d)
        self.item_embedding = nn.Embedding(n_items + 1, d, padding_idx=config.pad_index)
        with torch.no_grad():
            if user_init is not None:
                self.user_embedding.weight.copy_(user_init)
            if item_init is not None:
                self.item_embedding.weight.copy_(item_init)
            self.item_embedding.weight[config.pad_index].zero_()
        if not config.trainable_embeddings:
            self.user_embedding.weight.requires_grad_(False)
            self.item_embedding.weight.requires_grad_(False)
        self.encoder = StateEncoder(config.encoder, d, config.hist_num, config.hidden)
        self.policy_head: ItemHead = make_head(config.softmax, config.hidden, n_items, **config.head_options)
        self.behavior_head: ItemHead = make_head(config.softmax, config.hidden, n_items, **config.head_options)

    def encode(self, user: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """state (B, hidden) from user indices (B,) and histories (B, H) left-padded with the pad index.

        A user index of −1 means an unknown user: its user embedding is zeros (history-only state).
        """
        if history.dim() != 2 or history.shape[1] != self.config.hist_num or user.shape != history.shape[:1]:
            raise ValueError(
                f"user (B,) and history (B, {self.config.hist_num}) expected, "
                f"got {tuple(user.shape)}, {tuple(history.shape)}"
            )
        known = user >= 0
        u = self.user_embedding(user.clamp_min(0)) * known[:, None].to(self.user_embedding.weight.dtype)
        h = self.item_embedding(history)
        mask = history != self.config.pad_index
        return self.encoder(u, h, mask)

    def module_state(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors saved in ``<name>.safetensors`` (encoder = embeddings + encoder)."""
        if name == "encoder":
            return {
                "user_embedding.weight": self.user_embedding.weight,
                "item_embedding.weight": self.item_embedding.weight,
                **{f"encoder.{k}": v for k, v in self.encoder.state_dict().items()},
            }
        module = getattr(self, name)
        return dict(module.state_dict())

    def load_module_state(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        target = self.module_state(name)
        missing = sorted(set(target) - set(tensors))
        unexpected = sorted(set(tensors) - set(target))
        if missing or unexpected:
            raise ArtifactError(f"{name}: missing tensors {missing}, unexpected {unexpected}")
        with torch.no_grad():
            for k, v in tensors.items():
                if tuple(v.shape) != tuple(target[k].shape):
                    raise ArtifactError(
                        f"{name}.{k} has shape {tuple(v.shape)}, config.json implies {tuple(target[k].shape)}"
                    )
                target[k].copy_(v)


@dataclass
class LoadedAgent:
    """A model directory loaded for evaluation or serving."""

    module: Agent
    config: AgentConfig
    train_config: TrainConfig
    directory: Path
    user_raw: list[str]  # raw id of user index i
    item_raw: list[str]  # raw id of item index i
    raw_config: dict[str, Any] = field(default_factory=dict)
    _user_index: dict[str, int] | None = None

    @property
    def user_index(self) -> dict[str, int]:
        """Raw user id → index (built on first use)."""
        if self._user_index is None:
            self._user_index = {raw: i for i, raw in enumerate(self.user_raw)}
        return self._user_index

    @property
    def item_index(self) -> dict[str, int]:
        return {raw: i for i, raw in enumerate(self.item_raw)}

    @property
    def pad_index(self) -> int:
        return self.config.pad_index

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device


def _tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def write_model_files(
    directory: Path,
    agent: Agent,
    train_config: TrainConfig | None = None,
    user_raw: list[str] | np.ndarray | None = None,
    item_raw: list[str] | np.ndarray | None = None,
    data_info: dict[str, Any] | None = None,
) -> None:
    """Write config.json, the module safetensors and maps.json into an existing directory."""
    from topkrec import __version__

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = agent.config
    for name, filename in MODULE_FILES.items():
        atomic_write_bytes(d / filename, _tensor_bytes(agent.module_state(name)))
    users = [str(x) for x in (user_raw if user_raw is not None else range(cfg.n_users))]
    items = [str(x) for x in (item_raw if item_raw is not None else range(cfg.n_items))]
    if len(users) != cfg.n_users or len(items) != cfg.n_items:
        raise TopkrecError(
            f"id maps have {len(users)} users / {len(items)} items, the agent {cfg.n_users} / {cfg.n_items}"
        )
    write_json(d / MAPS_FILE, {"user_raw": users, "item_raw": items})
    write_json(
        d / CONFIG_FILE,
        {
            "format_version": MODEL_FORMAT_VERSION,
            "library_version": __version__,
            "agent": cfg.to_json(),
            "train": (train_config or TrainConfig()).to_json(),
            "data": {"n_users": cfg.n_users, "n_items": cfg.n_items, **(data_info or {})},
            "shapes": {name: {k: list(v.shape) for k, v in agent.module_state(name).items()} for name in MODULE_FILES},
            "n_parameters": int(sum(p.numel() for p in agent.parameters())),
        },
    )


def save_agent(
    directory: Path | str,
    agent: Agent,
    train_config: TrainConfig | None = None,
    user_raw: list[str] | np.ndarray | None = None,
    item_raw: list[str] | np.ndarray | None = None,
    data_info: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write a complete model directory atomically (e.g. random weights for a serving benchmark)::

    agent = Agent(AgentConfig(n_users=1000, n_items=100_000))
    save_agent("bench-model", agent)
    """
    from topkrec.io import atomic_dir

    out = Path(directory)
    with atomic_dir(out, force=force) as tmp:
        write_model_files(tmp, agent, train_config, user_raw, item_raw, data_info)
    return out


def load_agent(model_dir: Path | str, device: str | torch.device = "cpu") -> LoadedAgent:
    """Load a model directory; ``ArtifactError`` says what is missing, corrupt or mismatched."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(model_dir)
    if not d.is_dir():
        raise ArtifactError(f"model directory {d} does not exist; create it with `topkrec train`")
    try:
        raw = read_json(d / CONFIG_FILE)
    except TopkrecError as e:
        raise ArtifactError(f"{d} is not a model directory: {e}") from e
    if not isinstance(raw, dict) or raw.get("format_version") != MODEL_FORMAT_VERSION or "agent" not in raw:
        raise ArtifactError(
            f"{d / CONFIG_FILE} is not a topkrec model config (format_version "
            f"{raw.get('format_version') if isinstance(raw, dict) else None!r}, expected {MODEL_FORMAT_VERSION})"
        )
    try:
        config = AgentConfig.from_json(raw["agent"])
        train_config = TrainConfig.from_json(raw.get("train", {}))
        agent = Agent(config)
    except (TypeError, ValueError, TopkrecError) as e:
        raise ArtifactError(f"{d / CONFIG_FILE}: invalid agent config ({e})") from e
    for name, filename in MODULE_FILES.items():
        path = d / filename
        if not path.exists():
            raise ArtifactError(f"{path} is missing; the model directory is incomplete, re-run `topkrec train`")
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ArtifactError(f"{path} is not a readable safetensors file ({e}); re-run `topkrec train`") from e
        try:
            agent.load_module_state(name, tensors)
        except ArtifactError as e:
            raise ArtifactError(f"{path} does not match {d / CONFIG_FILE}: {e}") from e
    try:
        maps = read_json(d / MAPS_FILE)
        user_raw, item_raw = list(maps["user_raw"]), list(maps["item_raw"])
    except (TopkrecError, KeyError, TypeError) as e:
        raise ArtifactError(f"{d / MAPS_FILE} is missing or invalid ({e}); re-run `topkrec train`") from e
    if len(user_raw) != config.n_users or len(item_raw) != config.n_items:
        raise ArtifactError(
            f"{d / MAPS_FILE} has {len(user_raw)} users / {len(item_raw)} items, "
            f"config.json {config.n_users} / {config.n_items}"
        )
    agent.eval()
    agent.to(device)
    return LoadedAgent(
        module=agent,
        config=config,
        train_config=train_config,
        directory=d,
        user_raw=user_raw,
        item_raw=item_raw,
        raw_config=raw,
    )
