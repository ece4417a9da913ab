"""The agent network: embeddings, state encoder, π head and β̂ head (DESIGN §3).

The model directory it is saved in and loaded from is :mod:`topkrec.policy.artifact`.
"""

from __future__ import annotations

import torch
from torch import nn

from topkrec.errors import ArtifactError
from topkrec.heads import HeadOutput, ItemHead, make_head
from topkrec.policy.config import AgentConfig
from topkrec.policy.encoders import StateEncoder
from topkrec.policy.repeat import add_repeat_to_logits, repeat_biases, repeat_log_prob

__all__ = ["Agent"]


class Agent(nn.Module):
    """Embeddings + state encoder + π head + β̂ head (+ the optional supervised head).

    β̂ reads the state detached (DESIGN §3): its cross-entropy loss trains only β̂'s own parameters,
    so the behaviour estimate never shapes the state that π uses. The supervised head (``supervised_head``)
    reads it attached: its next-item cross-entropy trains the encoder next to π's corrected loss.
    """

    user_embedding: nn.Embedding | None
    event_embedding: nn.Embedding | None
    supervised_head: ItemHead | None

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
        self.user_embedding = nn.Embedding(config.n_users, d) if config.user_embedding else None
        self.item_embedding = nn.Embedding(n_items + 1, d, padding_idx=config.pad_index)
        with torch.no_grad():
            if user_init is not None and self.user_embedding is not None:
                self.user_embedding.weight.copy_(user_init)
            if item_init is not None:
                self.item_embedding.weight.copy_(item_init)
            self.item_embedding.weight[config.pad_index].zero_()
        if not config.trainable_embeddings:
            for table in (self.user_embedding, self.item_embedding):
                if table is not None:
                    table.weight.requires_grad_(False)
        # Event types of the history tokens: always trained (small), zeros for padding.
        self.event_embedding = None
        if config.feedback_tokens and config.event_types:
            self.event_embedding = nn.Embedding(config.event_pad + 1, d, padding_idx=config.event_pad)
            with torch.no_grad():
                self.event_embedding.weight.normal_(0.0, 0.1)
                self.event_embedding.weight[config.event_pad].zero_()
        self.encoder = StateEncoder(
            config.encoder,
            d,
            config.hist_num,
            config.hidden,
            config.attention_blocks,
            config.attention_heads,
            config.dropout,
            # a user embedding can only enter the state through the projection
            project=config.state_projection or config.user_embedding,
        )
        width = self.encoder.state_dim  # what the heads read: --hidden, or the embedding width unprojected
        self.policy_head: ItemHead = make_head(config.softmax, width, n_items, **config.head_options)
        self.behavior_head: ItemHead = make_head(config.softmax, width, n_items, **config.head_options)
        self.supervised_head = None
        if config.supervised_head:
            self.supervised_head = make_head(config.softmax, width, n_items, **config.head_options)
        if config.uses_repeat_bias:  # each head's own re-engagement biases (topkrec.policy.repeat), saved with it
            for head in self.heads():
                head.register_parameter("repeat", nn.Parameter(torch.zeros(config.event_pad + 1, config.hist_num)))

    def heads(self) -> list[ItemHead]:
        """π, β̂ and (when there is one) the supervised head."""
        return [h for h in (self.policy_head, self.behavior_head, self.supervised_head) if h is not None]

    def head_output(
        self,
        name: str,
        state: torch.Tensor,
        actions: torch.Tensor,
        history: torch.Tensor,
        history_event: torch.Tensor | None = None,
    ) -> HeadOutput:
        """The head's ``HeadOutput`` for the logged actions, re-engagement biases included."""
        head: ItemHead = getattr(self, name)
        out: HeadOutput = head(state, actions)
        table = getattr(head, "repeat", None)
        if table is None:
            return out
        cfg = self.config
        weight, bias = head.weight, head.bias  # a full softmax (the setting allows no other head)
        assert isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor)
        temperature = float(head.options()["temperature"])
        safe = history.clamp(max=cfg.n_items - 1)
        action_logit = ((state * weight[actions]).sum(-1) + bias[actions]) / temperature
        history_logits = (torch.einsum("bd,bhd->bh", state, weight[safe]) + bias[safe]) / temperature
        biases = repeat_biases(table, history, history_event, cfg.pad_index, cfg.event_pad)
        logp = repeat_log_prob(
            out.train_logp.float(),
            action_logit.float(),
            history_logits.float(),
            history,
            actions,
            biases,
            cfg.pad_index,
            cfg.repeat_mode,
        )
        return HeadOutput(train_logp=logp, logp=logp.detach().float())

    def head_logits(
        self, name: str, state: torch.Tensor, history: torch.Tensor, history_event: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, n_items) the head's logits, re-engagement biases included (for evaluation and serving)."""
        head: ItemHead = getattr(self, name)
        logits = head.logits(state)
        table = getattr(head, "repeat", None)
        if table is None:
            return logits
        biases = repeat_biases(table, history, history_event, self.config.pad_index, self.config.event_pad)
        return add_repeat_to_logits(logits.float(), history, biases, self.config.pad_index, self.config.repeat_mode)

    def module_names(self) -> tuple[str, ...]:
        """The modules saved as ``<name>.safetensors`` in a model directory."""
        heads = ("policy_head", "behavior_head") + (("supervised_head",) if self.supervised_head is not None else ())
        return ("encoder", *heads)

    def encode(
        self, user: torch.Tensor, history: torch.Tensor, history_event: torch.Tensor | None = None
    ) -> torch.Tensor:
        """state (B, hidden) from user indices (B,), histories (B, H) left-padded with the pad index and the
        histories' event-type codes (B, H) (padded with ``config.event_pad``; None: unknown event types).

        A user index of −1 means an unknown user: its user embedding is zeros (history-only state), as for
        every user of a model without user embeddings.
        """
        cfg = self.config
        if history.dim() != 2 or history.shape[1] != cfg.hist_num or user.shape != history.shape[:1]:
            raise ValueError(
                f"user (B,) and history (B, {cfg.hist_num}) expected, got {tuple(user.shape)}, {tuple(history.shape)}"
            )
        u, h, mask = self._inputs(user, history, history_event)
        state: torch.Tensor = self.encoder(u, h, mask)
        return state

    def encode_windows(
        self, user: torch.Tensor, history: torch.Tensor, history_event: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, H, hidden): the state after every position of left-padded token windows (B, H), in one pass
        (``StateEncoder.forward_all``); position H − 1 is ``encode``'s state of the whole window."""
        u, h, mask = self._inputs(user, history, history_event)
        return self.encoder.forward_all(u, h, mask)

    def _inputs(
        self, user: torch.Tensor, history: torch.Tensor, history_event: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(user embeddings (B, d), token embeddings (B, H, d), real-token mask (B, H))."""
        cfg = self.config
        h = self.item_embedding(history)
        if self.event_embedding is not None and history_event is not None:
            if history_event.shape != history.shape:
                raise ValueError(
                    f"history_event {tuple(history_event.shape)} must match history {tuple(history.shape)}"
                )
            h = h + self.event_embedding(history_event.clamp(0, cfg.event_pad))
        if self.user_embedding is not None:
            known = user >= 0
            u = self.user_embedding(user.clamp_min(0)) * known[:, None].to(h.dtype)
        else:
            u = h.new_zeros(user.shape[0], cfg.embed_size)
        return u, h, history != cfg.pad_index

    def module_state(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors saved in ``<name>.safetensors`` (encoder = embeddings + encoder)."""
        if name == "encoder":
            tables = {"item_embedding.weight": self.item_embedding.weight}
            if self.user_embedding is not None:
                tables["user_embedding.weight"] = self.user_embedding.weight
            if self.event_embedding is not None:
                tables["event_embedding.weight"] = self.event_embedding.weight
            return {**tables, **{f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}}
        if name not in self.module_names():
            raise ArtifactError(f"this agent has no module {name!r} (it has {', '.join(self.module_names())})")
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
