"""The agent network: embeddings, state encoder, π head and β̂ head (DESIGN §3).

The model directory it is saved in and loaded from is :mod:`topkrec.policy.artifact`.
"""

from __future__ import annotations

import torch
from torch import nn

from topkrec.errors import ArtifactError
from topkrec.heads import ItemHead, make_head
from topkrec.policy.config import AgentConfig
from topkrec.policy.encoders import StateEncoder

__all__ = ["Agent"]


class Agent(nn.Module):
    """Embeddings + state encoder + π head + β̂ head.

    β̂ reads the state detached (DESIGN §3): its cross-entropy loss trains only β̂'s own parameters,
    so the behaviour estimate never shapes the state that π uses.
    """

    def __init__(
        self, config: AgentConfig, user_init: torch.Tensor | None = None, item_init: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        if config.n_users < 1 or config.n_items < 1:
            raise ArtifactError(
                f"the agent needs n_users and n_items >= 1 (got {config.n_users}, {config.n_items}); "
                "bind its config to a dataset with AgentConfig.for_dataset"
            )
        self.config = config
        n_items, d = config.n_items, config.embed_size
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
        state: torch.Tensor = self.encoder(u, h, mask)
        return state

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
