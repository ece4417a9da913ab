"""Building what training needs: the agent with its initial weights, and the resume check (DESIGN §3, §7)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from topkrec.data.dataset import Dataset, discounted_returns
from topkrec.errors import TopkrecError
from topkrec.optim import Optimizer
from topkrec.policy.artifact import TRAINER_STATE_FILE, TrainerState, read_checkpoint, read_saved_configs
from topkrec.policy.config import AgentConfig, TrainConfig, resume_locked_settings
from topkrec.policy.model import Agent

logger = logging.getLogger(__name__)

__all__ = ["build_agent", "check_resume", "init_output_bias", "resume_from_checkpoint", "with_gamma", "with_weights"]


def with_gamma(dataset: Dataset, gamma: float | None) -> Dataset:
    """``dataset`` with returns discounted by ``gamma`` (a copy; None or the prepared γ: unchanged)."""
    if gamma is None or gamma == dataset.meta.get("gamma"):
        return dataset
    return replace(dataset, returns=discounted_returns(dataset.reward, dataset.session, gamma, step=dataset.step))


def with_weights(dataset: Dataset, config: TrainConfig) -> Dataset:
    """``dataset`` whose ``returns`` are π's REINFORCE weights: the row's reward (``--weights reward``) or the
    in-session return discounted by ``--gamma`` (``--weights return``)."""
    if config.weights == "reward":
        return replace(dataset, returns=np.asarray(dataset.reward, dtype=np.float32))
    return with_gamma(dataset, config.gamma)


def build_agent(
    dataset: Dataset,
    agent_config: AgentConfig | None,
    config: TrainConfig,
    embeddings: Any | None = None,
    initial_agent: Agent | None = None,
) -> Agent:
    """The agent to train, bound to ``dataset``.

    ``embeddings`` (``topkrec.embeddings.PretrainedEmbeddings``) initialise the tables and set their width;
    without them the tables start small and random and are trained. The output biases of π and β̂ start
    at the log train count (``bias_init``), and sampled heads with the popularity proposal get the counts.
    ``initial_agent`` is used as it is (its own config; ``embeddings`` ignored).
    """
    if initial_agent is not None:
        if (initial_agent.config.n_users, initial_agent.config.n_items) != (dataset.n_users, dataset.n_items):
            raise TopkrecError("the initial agent's n_users/n_items do not match the dataset")
        return initial_agent
    event_types, codes = dataset.event_vocabulary()
    cfg = (agent_config or AgentConfig()).for_dataset(dataset.n_users, dataset.n_items, event_types)
    cfg = replace(cfg, history_events=history_event_types(dataset, cfg.history))
    user_init = item_init = None
    if embeddings is not None:
        user_init, item_init = embeddings.user, embeddings.item
        width = int(item_init.shape[1])
        recipe_width = AgentConfig().embed_size
        if cfg.embed_size not in (width, recipe_width):  # a width asked for that cannot apply
            logger.warning(
                "--embed-size %d does not apply with --embeddings: the pretrained vectors set the width (%d)",
                cfg.embed_size,
                width,
            )
        elif cfg.embed_size == recipe_width and width < recipe_width:  # the recipe's width, narrowed
            logger.warning(
                "the pretrained vectors are %d wide, narrower than the recipe's %d, and set the encoder's width: on "
                "MovieLens that cost pi's ndcg@10 18 %% (0.0188 against 0.0229 after `topkrec pretrain --embed-size "
                "%d`; docs/agent.md)",
                width,
                recipe_width,
                recipe_width,
            )
        cfg = replace(cfg, embed_size=width)
    elif not cfg.trainable_embeddings:
        logger.warning(
            "frozen embeddings (--frozen-embeddings; --preset seed sets it) but no --embeddings: there are no "
            "pretrained vectors to keep fixed, so the embeddings start random and are trained"
        )
        cfg = replace(cfg, trainable_embeddings=True)
    if cfg.repeat_bias and not cfg.uses_repeat_bias:
        logger.warning("--softmax %s: no re-engagement biases (--repeat-bias needs the full softmax)", cfg.softmax)
    torch.manual_seed(config.seed)
    agent = Agent(cfg, user_init, item_init)
    if embeddings is None:
        with torch.no_grad():  # small random embeddings; the pad row stays zero
            if agent.user_embedding is not None:
                agent.user_embedding.weight.normal_(0.0, 0.1)
            agent.item_embedding.weight.normal_(0.0, 0.1)
            agent.item_embedding.weight[cfg.pad_index].zero_()
    counts = torch.as_tensor(dataset.train_item_counts())
    init_output_bias(agent, counts, config.bias_init)
    from topkrec.heads.sampled import set_proposal_counts

    # --proposal popularity samples negatives ∝ train count + 1 (a no-op for the other heads).
    heads = [h for h in (agent.policy_head, agent.behavior_head, agent.supervised_head) if h is not None]
    if set_proposal_counts(heads, counts):
        logger.info("sampled softmax: popularity proposal from the train counts")
    return agent


def history_event_types(dataset: Dataset, history: str) -> tuple[str, ...]:
    """The event types most of whose rows are history rows under ``history`` (what serving keeps)."""
    from topkrec.data.transitions import history_rows

    names, codes = dataset.event_vocabulary()
    if not names:
        return ()
    kept = np.bincount(codes[history_rows(dataset, history)], minlength=len(names))
    total = np.bincount(codes, minlength=len(names))
    return tuple(name for name, k, t in zip(names, kept, total, strict=True) if t and 2 * k >= t)


def init_output_bias(agent: Agent, counts: torch.Tensor, kind: str) -> None:
    """Set the heads' output biases to the log prior (log train count), so π and β̂ start as popularity.

    Only heads with a per-item ``bias`` parameter are touched (the full and sampled softmax).
    """
    if kind == "zero":
        return
    if kind != "popularity":
        raise TopkrecError(f"unknown bias init {kind!r}; use popularity or zero")
    log_prior = torch.log(counts.to(torch.float32) + 1.0)
    log_prior -= log_prior.mean()
    with torch.no_grad():
        for head in (agent.policy_head, agent.behavior_head, agent.supervised_head):
            if head is None:
                continue
            bias = getattr(head, "bias", None)
            if isinstance(bias, torch.Tensor) and tuple(bias.shape) == tuple(log_prior.shape):
                bias.copy_(log_prior.to(bias.device))


def resume_from_checkpoint(
    out: Path, agent: Agent, optimizer: Optimizer, config: TrainConfig
) -> tuple[TrainerState, list[dict[str, Any]]]:
    """Continue from the checkpoint in ``out``: weights, optimizer, RNG state, trainer state and training log."""
    if not (Path(out) / TRAINER_STATE_FILE).exists():
        raise TopkrecError(f"--resume: {out} holds no checkpoint (no {TRAINER_STATE_FILE}); train without --resume")
    check_resume(out, agent.config, config)
    state, history = read_checkpoint(out, agent, optimizer)
    logger.info("resuming at epoch %d step %d (step %d)", state.epoch, state.step_in_epoch, state.global_step)
    return state, history


def check_resume(out: Path, agent_config: AgentConfig, config: TrainConfig) -> None:
    """Refuse ``--resume`` when the checkpoint in ``out`` was built or trained with other settings."""
    saved_agent, saved_train, _ = read_saved_configs(out)
    if saved_agent != agent_config:
        raise TopkrecError(
            f"--resume: the model in {out} was built with {saved_agent.to_json()}, this run asks for "
            f"{agent_config.to_json()}; use the same --encoder/--hidden/--hist-num/--softmax or a new --out"
        )
    changed = [k for k in resume_locked_settings() if getattr(saved_train, k) != getattr(config, k)]
    if changed:
        diffs = ", ".join(f"{k}: {getattr(saved_train, k)!r} → {getattr(config, k)!r}" for k in changed)
        raise TopkrecError(f"--resume: settings differ from the checkpoint ({diffs}); resume with the same settings")
