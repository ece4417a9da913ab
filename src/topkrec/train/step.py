"""One optimizer step of the agent (DESIGN §3).

- β̂ is trained by cross-entropy on every logged action, from the *detached* state (§4.3);
- π (and the state encoder) by ``corrected_policy_loss`` on the logged actions with non-zero reward.

``TrainObjective`` is the step's loss as a module's forward, so DDP and ``torch.compile`` can wrap it;
``train_step`` runs it, backpropagates and steps the optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from topkrec.data.transitions import TransitionBatch
from topkrec.optim import Optimizer
from topkrec.policy.config import TrainConfig
from topkrec.policy.model import Agent
from topkrec.policy.objective import STAT_FIELDS, PolicyLossStats, corrected_policy_loss_tensors

__all__ = ["StepOutput", "TrainObjective", "train_step"]


@dataclass(frozen=True)
class StepOutput:
    """Losses and diagnostics of one optimizer step, kept as one detached tensor on the training device.

    ``values`` is ``[policy_loss, behavior_loss, *STAT_FIELDS]``. The properties turn it into floats,
    which waits for the device: the training loop reads them only at logging time, so on a GPU the
    steps in between run without a host sync.
    """

    values: torch.Tensor  # (2 + len(STAT_FIELDS),)
    n_policy_rows: int  # rows with a non-zero reward (π's rows); 0 means no policy update this step

    @property
    def policy_loss(self) -> float:
        return float(self.values[0])

    @property
    def behavior_loss(self) -> float:
        return float(self.values[1])

    @property
    def stats(self) -> PolicyLossStats | None:
        """None when no row of the batch had a non-zero reward."""
        return PolicyLossStats.from_tensor(self.values[2:]) if self.n_policy_rows else None


class TrainObjective(torch.nn.Module):
    """The loss of one step as a module's ``forward``, so that DDP and ``torch.compile`` can wrap it.

    DDP synchronises the gradients of what runs through the forward of the module it wraps, and the
    agent's own forward is not the training loss (the step calls the encoder and both heads), hence
    this thin module around the agent. ``forward`` returns π's and β̂'s mean losses and the detached
    ``[policy_loss, behavior_loss, *STAT_FIELDS]`` vector of ``StepOutput``.
    """

    def __init__(self, agent: Agent, config: TrainConfig, autocast_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.agent = agent
        self.correction, self.k, self.cap, self.snis = config.correction, config.k, config.cap, config.snis
        self.autocast_dtype = autocast_dtype

    def forward(
        self,
        user: torch.Tensor,
        history: torch.Tensor,
        action: torch.Tensor,
        returns: torch.Tensor,
        policy_rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``policy_rows``: indices of the rows with a non-zero reward, or None when every row has one.

        π's loss is a constant zero when no row has a reward. The caller weighs the two losses (under DDP
        by ``DistContext.loss_scale``) outside this forward, so a compiled forward sees no per-step floats.
        """
        agent = self.agent
        dtype = self.autocast_dtype
        with torch.autocast(action.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            state = agent.encode(user, history)  # (B, hidden)
            # β̂ on the detached state: its loss never reaches the encoder (§4.3).
            behavior = agent.behavior_head(state.detach(), action)
            behavior_loss = -behavior.train_logp.float().mean()
            if policy_rows is None:
                policy_state, actions, behavior_logp = state, action, behavior.logp
            else:
                policy_state, actions = state[policy_rows], action[policy_rows]
                returns, behavior_logp = returns[policy_rows], behavior.logp[policy_rows]
            if actions.shape[0] > 0:
                policy = agent.policy_head(policy_state, actions)
                policy_logp = policy.train_logp.float()
                if policy.train_logp is not policy.logp:
                    # Value = exact log π (what w and λ_K are computed from); gradient = the head's surrogate.
                    policy_logp = policy_logp + (policy.logp - policy_logp).detach()
                policy_loss, stats = corrected_policy_loss_tensors(
                    policy_logp, behavior_logp, returns, self.correction, self.k, self.cap, self.snis
                )
            else:
                policy_loss = behavior_loss.new_zeros(())
                stats = behavior_loss.new_zeros(len(STAT_FIELDS))
        values = torch.cat([torch.stack([policy_loss, behavior_loss]).detach().float(), stats.detach().float()])
        return policy_loss, behavior_loss, values


def train_step(
    agent: Agent,
    optimizer: Optimizer,
    batch: TransitionBatch,
    config: TrainConfig,
    autocast_dtype: torch.dtype | None = None,
    all_rewarded: bool | None = None,
    objective: torch.nn.Module | None = None,
    scales: tuple[float, float] = (1.0, 1.0),
) -> StepOutput:
    """One optimizer step on β̂ (all rows) and π (rows with non-zero reward).

    ``all_rewarded``: whether every row of the batch is known to have a non-zero reward (the training
    loop knows it for the whole split); then the step needs no host sync at all. None = look (one sync).
    ``objective``: the (possibly DDP-wrapped or compiled) ``TrainObjective`` of ``agent``; built if None.
    ``scales``: (β̂, π) factors on the two mean losses: this rank's ``DistContext.loss_scale`` under DDP.
    """
    if all_rewarded is None:
        all_rewarded = bool((batch.reward != 0).all())
    rows = None if all_rewarded else torch.nonzero(batch.reward != 0).squeeze(1)
    n_rows = len(batch) if rows is None else int(rows.numel())
    module = objective if objective is not None else TrainObjective(agent, config, autocast_dtype)
    policy_loss, behavior_loss, values = module(batch.user, batch.history, batch.action, batch.returns, rows)
    behavior_scale, policy_scale = scales
    loss = behavior_loss if behavior_scale == 1.0 else behavior_loss * behavior_scale
    if n_rows:
        loss = loss + (policy_loss if policy_scale == 1.0 else policy_loss * policy_scale)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return StepOutput(values, n_rows)
