"""One optimizer step of the agent (DESIGN §3).

- β̂ is trained by cross-entropy on every logged action, from the *detached* state (§4.3);
- π (and the state encoder) by ``corrected_policy_loss`` on the logged actions with non-zero reward, its
  importance weight against β̂ or, with ``--propensity logged``, against the logged propensity;
- the supervised head, when the agent has one, by next-item cross-entropy on every logged action from the
  attached state (SQN-style): it trains the encoder next to π.

``TrainObjective`` is the step's loss as a module's forward, so DDP and ``torch.compile`` can wrap it;
``train_step`` runs it, backpropagates and steps the optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from topkrec.data.transitions import TransitionBatch
from topkrec.optim import Optimizer
from topkrec.policy.config import TrainConfig
from topkrec.policy.model import Agent
from topkrec.policy.objective import (
    STAT_FIELDS,
    PolicyLossStats,
    corrected_policy_loss_tensors,
    per_draw_log_propensity,
    policy_coefficients,
)
from topkrec.train.windows import WindowBatch

__all__ = ["LOSS_FIELDS", "StepOutput", "TrainObjective", "train_step"]

LOSS_FIELDS = ("policy_loss", "behavior_loss", "supervised_loss", "behavior_logged_error", "policy_ce")
"""The first entries of ``StepOutput.values``; ``behavior_logged_error`` is the mean |log β̂ − log β| over the
rows with a logged propensity (0 when the data has none); ``policy_ce`` is π's cross-entropy over every row
(the ``--policy-ce`` anchor; 0 when off)."""


@dataclass(frozen=True)
class StepOutput:
    """Losses and diagnostics of one optimizer step, kept as one detached tensor on the training device.

    ``values`` is ``[*LOSS_FIELDS, *STAT_FIELDS]``. The properties turn it into floats, which waits for the
    device: the training loop reads them only at logging time, so on a GPU the steps in between run without
    a host sync.
    """

    values: torch.Tensor  # (len(LOSS_FIELDS) + len(STAT_FIELDS),)
    n_policy_rows: int  # rows with a non-zero reward (π's rows); 0 means no policy update this step

    @property
    def policy_loss(self) -> float:
        return float(self.values[0])

    @property
    def behavior_loss(self) -> float:
        return float(self.values[1])

    @property
    def supervised_loss(self) -> float:
        return float(self.values[2])

    @property
    def stats(self) -> PolicyLossStats | None:
        """None when no row of the batch had a non-zero reward."""
        return PolicyLossStats.from_tensor(self.values[len(LOSS_FIELDS) :]) if self.n_policy_rows else None


class TrainObjective(torch.nn.Module):
    """The loss of one step as a module's ``forward``, so that DDP and ``torch.compile`` can wrap it.

    DDP synchronises the gradients of what runs through the forward of the module it wraps, and the
    agent's own forward is not the training loss (the step calls the encoder and the heads), hence
    this thin module around the agent. ``forward`` returns π's, β̂'s and the supervised head's mean losses
    and the detached ``StepOutput.values`` vector.
    """

    def __init__(
        self,
        agent: Agent,
        config: TrainConfig,
        autocast_dtype: torch.dtype | None = None,
        reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
        encoder_skip: torch.Tensor | None = None,
    ) -> None:
        """``reduce_sum``: sums a tensor over the data-parallel ranks (in place), so ``--weight-norm``'s batch mean
        is the global batch's; None in one process. ``encoder_skip``: (n_items + 1,) bool, the items whose rows
        train the heads but not the encoder (``--min-action-count``); None: every row trains it."""
        super().__init__()
        self.encoder_skip = encoder_skip
        self.reduce_sum = reduce_sum
        self.agent = agent
        self.correction, self.k, self.cap, self.snis = config.correction, config.k, config.cap, config.snis
        self.normalize = config.weight_norm == "batch_mean"
        self.policy_ce, self.supervised_weight = config.policy_ce, config.supervised_weight
        self.logged = config.propensity == "logged"
        self.logged_kind = config.logged_propensity
        self.autocast_dtype = autocast_dtype

    def forward(
        self, batch: TransitionBatch | WindowBatch, policy_rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(π's REINFORCE loss (mean over π's rows), the loss averaged over every row, ``StepOutput.values``).

        ``policy_rows``: indices of the rows with a non-zero reward, or None when every row has one. The
        every-row loss is β̂'s cross-entropy + ``supervised_weight`` × the supervised head's + ``policy_ce`` ×
        π's own; π's REINFORCE loss is a constant zero when no row has a reward. The caller scales the two
        (under DDP by ``DistContext.loss_scale``) outside this forward, so a compiled forward sees no per-step
        floats.
        """
        agent = self.agent
        dtype = self.autocast_dtype
        action = batch.action
        with torch.autocast(action.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            state = row_states(agent, batch)  # (B, hidden)
            if self.encoder_skip is not None:  # rows on rare items: the heads learn from them, the encoder does not
                state = torch.where(self.encoder_skip[action][:, None], state.detach(), state)
            history, history_event = row_histories(agent, batch)  # (B, H): the repeat biases read them
            # β̂ on the detached state: its loss never reaches the encoder (§4.3).
            behavior = agent.head_output("behavior_head", state.detach(), action, history, history_event)
            behavior_loss = -behavior.train_logp.float().mean()
            propensity = batch.propensity if batch.propensity is not None else torch.full_like(batch.reward, torch.nan)
            logged_logp = per_draw_log_propensity(propensity, self.k, self.logged_kind)  # NaN: none logged
            known = torch.isfinite(logged_logp)
            logged_error = torch.where(known, (behavior.logp - logged_logp).abs(), 0.0).sum() / known.sum().clamp_min(1)
            weight_logp = logged_logp if self.logged else behavior.logp
            if agent.supervised_head is not None:
                supervised = agent.head_output("supervised_head", state, action, history, history_event)
                supervised_loss = -supervised.train_logp.float().mean()
            else:
                supervised_loss = behavior_loss.new_zeros(())
            returns = batch.returns
            ce_loss = behavior_loss.new_zeros(())
            if self.policy_ce > 0:  # π on every row: its cross-entropy, and the REINFORCE rows read from it
                policy = agent.head_output("policy_head", state, action, history, history_event)
                ce_loss = -policy.train_logp.float().mean()
                policy_logp = exact_value(policy.train_logp.float(), policy.logp)
                if policy_rows is not None:
                    policy_logp = policy_logp[policy_rows]
            if policy_rows is not None:
                returns, weight_logp = returns[policy_rows], weight_logp[policy_rows]
            n_policy = action.shape[0] if policy_rows is None else policy_rows.shape[0]
            coef_mean = None
            if self.policy_ce <= 0 and n_policy > 0:  # π on its rows only
                rows = slice(None) if policy_rows is None else policy_rows
                events = history_event[rows] if history_event is not None else None
                policy = agent.head_output("policy_head", state[rows], action[rows], history[rows], events)
                policy_logp = exact_value(policy.train_logp.float(), policy.logp)
            if self.normalize and self.reduce_sum is not None:  # every rank joins, with or without π rows
                total = torch.zeros(2, device=action.device)
                if n_policy > 0:
                    coef = policy_coefficients(
                        policy_logp, weight_logp, returns, self.correction, self.k, self.cap, self.snis
                    )
                    total = torch.stack([coef.abs().sum(), coef.new_tensor(float(coef.numel()))]).float()
                total = self.reduce_sum(total)
                coef_mean = total[0] / total[1].clamp_min(1.0)
            if n_policy > 0:
                policy_loss, stats = corrected_policy_loss_tensors(
                    policy_logp,
                    weight_logp,
                    returns,
                    self.correction,
                    self.k,
                    self.cap,
                    self.snis,
                    self.normalize,
                    coef_mean,
                )
            else:
                policy_loss = behavior_loss.new_zeros(())
                stats = behavior_loss.new_zeros(len(STAT_FIELDS))
            all_rows_loss = behavior_loss + self.policy_ce * ce_loss
            if agent.supervised_head is not None:
                all_rows_loss = all_rows_loss + self.supervised_weight * supervised_loss
        losses = torch.stack([policy_loss, behavior_loss, supervised_loss, logged_error, ce_loss]).detach().float()
        values = torch.cat([losses, stats.detach().float()])
        return policy_loss, all_rows_loss, values


def exact_value(train_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Value = the exact log π (what w and λ_K are computed from); gradient = the head's training surrogate
    (the same tensor for exact heads; the sampled softmax's surrogate otherwise)."""
    return train_logp + (logp - train_logp).detach()


def row_states(agent: Agent, batch: TransitionBatch | WindowBatch) -> torch.Tensor:
    """(R, hidden) the state of each training row: its own window's, or its position's in a token window."""
    if isinstance(batch, TransitionBatch):
        return agent.encode(batch.user, batch.history, batch.history_event)
    per_position = agent.encode_windows(batch.user, batch.history, batch.history_event)  # (W, H, hidden)
    empty = agent.encode(batch.user, torch.full_like(batch.history, agent.config.pad_index))  # no token yet
    states = torch.cat([empty[:, None, :], per_position], dim=1)
    return states[batch.row_window, batch.row_pos + 1]


def row_histories(agent: Agent, batch: TransitionBatch | WindowBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(R, H) each training row's history tokens, latest at H − 1: its own window, or (token windows) the
    tokens of its window up to its position."""
    if isinstance(batch, TransitionBatch):
        return batch.history, batch.history_event
    h = batch.history.shape[1]
    slot = batch.row_pos[:, None] - (h - 1) + torch.arange(h, device=batch.row_pos.device)[None, :]  # (R, H)
    inside = slot >= 0
    at = slot.clamp_min(0)
    items = torch.where(inside, batch.history[batch.row_window[:, None], at], agent.config.pad_index)
    events = torch.where(inside, batch.history_event[batch.row_window[:, None], at], agent.config.event_pad)
    return items, events


def train_step(
    agent: Agent,
    optimizer: Optimizer,
    batch: TransitionBatch | WindowBatch,
    config: TrainConfig,
    autocast_dtype: torch.dtype | None = None,
    all_rewarded: bool | None = None,
    objective: torch.nn.Module | None = None,
    scales: tuple[float, float] = (1.0, 1.0),
) -> StepOutput:
    """One optimizer step: β̂, π's cross-entropy anchor and the supervised head on all rows, π's REINFORCE term on
    the rows with a non-zero reward.

    ``all_rewarded``: whether every row of the batch is known to have a non-zero reward (the training
    loop knows it for the whole split); then the step needs no host sync at all. None = look (one sync).
    ``objective``: the (possibly DDP-wrapped or compiled) ``TrainObjective`` of ``agent``; built if None.
    ``scales``: (all rows, π's rows) factors on the mean losses: this rank's ``DistContext.loss_scale`` under
    DDP (β̂ and the supervised head average over all rows, π over the rewarded ones).
    """
    if all_rewarded is None:
        all_rewarded = bool((batch.reward != 0).all())
    rows = None if all_rewarded else torch.nonzero(batch.reward != 0).squeeze(1)
    n_rows = len(batch) if rows is None else int(rows.numel())
    module = objective if objective is not None else TrainObjective(agent, config, autocast_dtype)
    policy_loss, all_rows_loss, values = module(batch, rows)
    all_rows_scale, policy_scale = scales
    loss = all_rows_loss if all_rows_scale == 1.0 else all_rows_loss * all_rows_scale
    if n_rows:
        loss = loss + (policy_loss if policy_scale == 1.0 else policy_loss * policy_scale)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return StepOutput(values, n_rows)
