"""The training loop: build → resume → for each batch: step → meter → log / checkpoint (DESIGN §3, §7, §8).

Every data tensor lives on the training device, each epoch is a seeded permutation of the train
transitions, and a batch is gathered by index (``Transitions.batch``) — no DataLoader, no per-sample
Python. The permutation of epoch e is drawn from a generator seeded by (seed, e), so a run resumed from
a checkpoint at any step replays exactly the batches the uninterrupted run would have seen; with the
weights, Adam state and RNG state restored, ``--resume`` ends with bitwise-identical weights on CPU.

Under torchrun (``topkrec.distributed``) every rank draws the same permutation and trains on its part
of each global batch; rank 0 alone writes. Nothing here syncs with the host per step: the step's
values are summed on the device and read once per ``log_every`` interval.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from topkrec import distributed
from topkrec.data.dataset import Dataset
from topkrec.data.transitions import TransitionBatch, Transitions, build_transitions, validation_rows
from topkrec.device import resolve_device
from topkrec.errors import TopkrecError
from topkrec.evaluate.metrics import item_ranks, ndcg_from_rank, shared_target_rank, target_rank
from topkrec.metrics_log import MetricsLogger
from topkrec.optim import Optimizer, build_optimizer
from topkrec.policy.artifact import BEST_WEIGHTS_FILE, HISTORIES_FILE, TrainerState, write_checkpoint
from topkrec.policy.config import AgentConfig, TrainConfig
from topkrec.policy.model import Agent
from topkrec.policy.objective import STAT_FIELDS, PolicyLossStats
from topkrec.progress import progress_bar
from topkrec.train.build import build_agent, resume_from_checkpoint, with_weights
from topkrec.train.step import LOSS_FIELDS, StepOutput, TrainObjective, train_step
from topkrec.train.windows import WindowBatch, Windows

logger = logging.getLogger(__name__)

__all__ = ["Checkpointer", "IntervalMeter", "TrainData", "TrainResult", "train_agent"]


@dataclass
class TrainResult:
    agent: Agent
    state: TrainerState
    history: list[dict[str, Any]] = field(default_factory=list)
    out: Path | None = None
    seconds: float = 0.0


def train_agent(
    dataset: Dataset,
    out: Path | str,
    agent_config: AgentConfig | None = None,
    config: TrainConfig | None = None,
    embeddings: Any | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = False,
    jsonl: Path | None = None,
    on_step: Callable[[int, StepOutput], None] | None = None,
    initial_agent: Agent | None = None,
    metrics: MetricsLogger | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train π and β̂ on the train split of ``dataset``; checkpoint into the model dir ``out``.

    ``embeddings``: ``PretrainedEmbeddings`` (``topkrec.embeddings.load_embeddings``) or None (tables
    start random and are trained). ``initial_agent`` starts from given weights (its config is used).
    ``resume`` continues from the checkpoint in ``out``; ``metrics`` receives every logged record;
    ``on_epoch`` gets each epoch's validation record (with ``--val-size``).
    """
    from topkrec.io import check_output_dir, recover_interrupted

    config, out = config or TrainConfig(), Path(out)
    if not resume:
        check_output_dir(out, force)  # every rank checks (read-only), before any collective call
    else:
        recover_interrupted(out)  # a kill while a checkpoint was swapped in left the complete one beside out
    dist, device = distributed.setup(resolve_device(config.device))  # one process: a no-op
    dataset = with_weights(dataset, config)
    agent = build_agent(dataset, agent_config, config, embeddings, initial_agent).to(device).train()
    optimizer = build_optimizer(agent, config, allow_sparse=not dist.enabled)
    data = TrainData.build(dataset, agent.config, device, config, dist)
    state, history = resume_from_checkpoint(out, agent, optimizer, config) if resume else (TrainerState(), [])
    state.world_size = dist.world_size
    objective = _objective(agent, config, device, dist, data.all_rewarded, data.encoder_skip)
    metrics = metrics or MetricsLogger(jsonl if dist.is_main else None)
    metrics.history = history
    validator = Validator.build(dataset, agent.config, config, device, out if resume else None)
    meter = IntervalMeter(
        device,
        config.log_every,
        agent.supervised_head is not None,
        dataset.propensity is not None,
        config.policy_ce > 0,
    )
    checkpointer = Checkpointer(out, dataset, agent.config, dist.is_main, validator)
    total = data.total_steps(config)
    t0 = time.perf_counter()
    try:
        with _sigterm_as_interrupt(), progress_bar(total, "train", enabled=progress and dist.is_main) as bar:
            bar.update(min(state.global_step, total))
            for global_idx, epoch_end in data.batches(state, config):
                batch = data.batch(dist.shard(global_idx))
                scales = data.shard_scales(dist, global_idx, len(batch))
                step = train_step(agent, optimizer, batch, config, None, data.all_rewarded, objective, scales)
                state.step_in_epoch, state.global_step = state.step_in_epoch + 1, state.global_step + 1
                meter.add(step, len(batch), state.global_step)
                if on_step is not None:
                    on_step(state.global_step, step)
                bar.update(1)
                if meter.due(state.global_step) or epoch_end:
                    record = meter.flush(dist, state.epoch + state.step_in_epoch / data.steps_per_epoch)
                    metrics.log(state.global_step, record)
                    bar.update(0, info=f"epoch {state.epoch + 1} π {record['train/policy_loss']:.3g}")
                if epoch_end:
                    state.epoch, state.step_in_epoch = state.epoch + 1, 0
                    if validator is not None and validator.after_epoch(agent, state, metrics, on_epoch):
                        break  # early stopping: --patience epochs without a better validation metric
                if (epoch_end and state.epoch < config.epochs) or _every(config.checkpoint_every, state.global_step):
                    checkpointer.save(agent, optimizer, config, state, metrics.history, meter)
        state.finished = state.epoch >= config.epochs or state.stopped_early
        if state.finished and validator is not None:
            validator.restore_best(agent)  # the finished model is the best validation epoch's
        checkpointer.save(agent, optimizer, config, state, metrics.history, meter)
        dist.barrier()  # every rank waits for rank 0's last write before the group goes away
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM (torchrun forwards either to every rank): every completed step is consistent.
        logger.warning("interrupted: writing a checkpoint at global step %d", state.global_step)
        checkpointer.save(agent, optimizer, config, state, metrics.history, meter)
        raise
    return TrainResult(agent, state, metrics.history, out, time.perf_counter() - t0)


def _every(interval: int, step: int) -> bool:
    return bool(interval) and step % interval == 0


def _objective(
    agent: Agent,
    config: TrainConfig,
    device: torch.device,
    dist: distributed.DistContext,
    all_rewarded: bool,
    encoder_skip: torch.Tensor | None = None,
) -> torch.nn.Module:
    """The step's loss module, DDP-wrapped under torchrun and compiled with ``--compile``."""
    autocast = torch.bfloat16 if (config.bf16 and device.type == "cuda") else None
    # A rank whose part of a batch has no rewarded row does not use π's head that step.
    reduce_sum = dist.all_reduce_sum if dist.enabled else None  # --weight-norm's mean over the global batch
    objective = dist.wrap(
        TrainObjective(agent, config, autocast, reduce_sum, encoder_skip),
        device,
        find_unused_parameters=not all_rewarded,
    )
    if dist.enabled:
        logger.info("data parallel: %d process(es), global batch %d", dist.world_size, config.batch_size)
    if config.compile:
        objective = torch.compile(objective)  # type: ignore[assignment]
    return objective


@dataclass(frozen=True)
class TrainData:
    """The train split as device tensors, and how it is cut into (global) batches of *units*: rows, or token
    windows with their rows (``--batching windows``, :mod:`topkrec.train.windows`)."""

    transitions: Transitions
    windows: Windows | None
    all_rewarded: bool  # known once for the split, so a step never has to look at the rewards on the host
    per_step: int  # units per (global) step
    steps_per_epoch: int
    encoder_skip: torch.Tensor | None = None  # (n_items + 1,) bool: actions on these items do not train the encoder

    @classmethod
    def build(
        cls,
        dataset: Dataset,
        agent_config: AgentConfig,
        device: torch.device,
        config: TrainConfig,
        dist: distributed.DistContext,
    ) -> TrainData:
        if config.propensity == "logged" and dataset.propensity is None:
            raise TopkrecError(
                "--propensity logged needs logged propensities: the dataset has none (prepare --format events "
                "--propensity-col COL), or train with --propensity estimated"
            )
        val = validation_rows(dataset, config.val_size)
        transitions = build_transitions(
            dataset, "train", agent_config.hist_num, device, agent_config.history, rows_mask=~val
        )
        if len(transitions) == 0:
            raise TopkrecError("the dataset has no train events to learn from")
        rare = transitions.rare_actions(config.min_action_count)
        n_rows, n_rare = len(transitions), int(rare[transitions.items[transitions.rows]].sum())
        encoder_skip = rare if n_rare else None
        if n_rare:
            logger.info(
                "--min-action-count %d: %d of %d train rows act on rarer items; π and β̂ learn from them, the "
                "encoder does not",
                config.min_action_count,
                n_rare,
                n_rows,
            )
            if n_rare > 0.8 * n_rows:
                logger.warning(
                    "--min-action-count %d leaves the encoder %d of %d train rows to learn from; on a log this "
                    "sparse a lower value (1: every row) may learn more",
                    config.min_action_count,
                    n_rows - n_rare,
                    n_rows,
                )
        windows = Windows.build(transitions) if uses_windows(agent_config, config) else None
        # windows: about batch_size rows per step, as hist_num-token windows
        per_step = config.batch_size if windows is None else max(1, config.batch_size // agent_config.hist_num)
        units = len(transitions) if windows is None else len(windows)
        if dist.enabled and per_step < dist.world_size:
            raise TopkrecError(
                f"--batch-size {config.batch_size} is the global batch: it must give each of the {dist.world_size} "
                "processes at least one row (or window)"
            )
        all_rewarded = bool((transitions.reward[transitions.rows] != 0).all())
        return cls(transitions, windows, all_rewarded, per_step, math.ceil(units / per_step), encoder_skip)

    @property
    def units(self) -> int:
        return len(self.transitions) if self.windows is None else len(self.windows)

    def batch(self, idx: torch.Tensor) -> TransitionBatch | WindowBatch:
        return self.transitions.batch(idx) if self.windows is None else self.windows.batch(idx)

    def total_steps(self, config: TrainConfig) -> int:
        total = self.steps_per_epoch * config.epochs
        return total if config.max_steps is None else min(total, config.max_steps)

    def batches(self, state: TrainerState, config: TrainConfig) -> Iterator[tuple[torch.Tensor, bool]]:
        """(global batch of unit indices, last batch of its epoch?) from where ``state`` stands; the caller
        advances it."""
        perm_epoch, perm = -1, None
        while state.epoch < config.epochs:
            if config.max_steps is not None and state.global_step >= config.max_steps:
                return
            if perm is None or perm_epoch != state.epoch:
                gen = torch.Generator().manual_seed(int(config.seed) * 1_000_003 + int(state.epoch))
                perm = torch.randperm(self.units, generator=gen).to(self.transitions.device)
                perm_epoch = state.epoch
            start = state.step_in_epoch * self.per_step
            yield perm[start : start + self.per_step], state.step_in_epoch + 1 == self.steps_per_epoch

    def shard_scales(
        self, dist: distributed.DistContext, global_idx: torch.Tensor, n_local: int
    ) -> tuple[float, float]:
        """(all rows, π's rows) loss factors of this rank so that DDP's average is the global batch's gradient
        (1, 1 alone). β̂ and the supervised head average over every row; π over the rewarded rows."""
        if not dist.enabled:
            return 1.0, 1.0
        if self.windows is not None:  # row counts per window are on the host: no device sync
            w = global_idx.cpu().numpy()
            local = dist.shard(global_idx).cpu().numpy()
            rows = dist.loss_scale(
                int(self.windows.rows_per_window[local].sum()), int(self.windows.rows_per_window[w].sum())
            )
            n_rewarded = int(self.windows.rewarded_per_window[w].sum())
            if n_rewarded == 0:
                return rows, 0.0
            return rows, dist.loss_scale(int(self.windows.rewarded_per_window[local].sum()), n_rewarded)
        behavior = dist.loss_scale(n_local, len(global_idx))
        if self.all_rewarded:
            return behavior, behavior
        rewarded = self.transitions.reward[self.transitions.rows[global_idx]] != 0
        n_global = int(rewarded.sum())
        if n_global == 0:
            return behavior, 0.0
        return behavior, dist.loss_scale(int(dist.shard(rewarded).sum()), n_global)


def uses_windows(agent_config: AgentConfig, config: TrainConfig) -> bool:
    """``--batching``: windows for encoders with per-position states (auto: all but concat), else rows."""
    if config.batching == "rows":
        return False
    sequential = agent_config.encoder != "concat"
    if config.batching == "windows" and not sequential:
        raise TopkrecError("--batching windows needs an encoder with per-position states (mean, gru, cfn, attention)")
    return sequential


class IntervalMeter:
    """Sums the steps' values on the device between two log lines; reads them once per interval.

    It also watches for a non-finite loss without syncing: the first such step is kept on the device and
    checked at each flush and before each checkpoint (``raise_if_diverged``).
    """

    def __init__(
        self,
        device: torch.device,
        log_every: int,
        supervised: bool = False,
        logged: bool = False,
        anchored: bool = False,
    ) -> None:
        self.log_every = max(1, log_every)
        self.supervised, self.logged, self.anchored = supervised, logged, anchored
        self.sums = torch.zeros(len(LOSS_FIELDS) + len(STAT_FIELDS), device=device)
        self.first_bad = torch.full((), torch.iinfo(torch.int64).max, dtype=torch.int64, device=device)
        self.n_steps = self.n_stat_steps = self.rows = 0
        self.started = time.perf_counter()

    def add(self, step: StepOutput, rows: int, global_step: int) -> None:
        self.sums += step.values
        bad = ~torch.isfinite(step.values[:3]).all()
        self.first_bad = torch.where(bad, self.first_bad.clamp_max(global_step), self.first_bad)
        self.n_steps += 1
        self.n_stat_steps += step.n_policy_rows > 0
        self.rows += rows

    def due(self, global_step: int) -> bool:
        return global_step % self.log_every == 0

    def raise_if_diverged(self) -> None:
        first = int(self.first_bad)
        if first != torch.iinfo(torch.int64).max:
            raise TopkrecError(
                f"training diverged: the loss became NaN or infinite at step {first}; lower --lr (or --behavior-lr), "
                "set a --cap, or check the data's rewards. No checkpoint was written after that step"
            )

    def flush(self, dist: distributed.DistContext, epoch: float) -> dict[str, float]:
        """Means over the interval's steps (and over ranks), from the summed step values: one sync."""
        packed = torch.cat([self.sums, self.sums.new_tensor([self.n_steps, self.n_stat_steps, self.rows])]).double()
        dist.all_reduce_sum(packed)
        values = packed.tolist()
        self.raise_if_diverged()
        n_loss, k = len(LOSS_FIELDS), len(LOSS_FIELDS) + len(STAT_FIELDS)
        steps, stat_steps, rows = values[k:]
        record = {
            "train/policy_loss": values[0] / max(steps, 1),
            "train/behavior_loss": values[1] / max(steps, 1),
        }
        if self.supervised:
            record["train/supervised_loss"] = values[2] / max(steps, 1)
        if self.logged:  # β̂'s error against the logged propensity (per draw), whichever β the weights use
            record["train/behavior_logged_log_error"] = values[3] / max(steps, 1)
        if self.anchored:  # π's cross-entropy over every row (--policy-ce)
            record["train/policy_ce"] = values[4] / max(steps, 1)
        if stat_steps:
            record.update(PolicyLossStats(*(v / stat_steps for v in values[n_loss:k])).as_metrics("train/"))
        record["time/samples_per_s"] = rows / max(time.perf_counter() - self.started, 1e-9)
        record["train/epoch"] = epoch
        self.sums.zero_()
        self.n_steps = self.n_stat_steps = self.rows = 0
        self.started = time.perf_counter()
        return record


class Validator:
    """``--val-size``: π's ndcg@K on held-out train events after each epoch, against popularity's; keeps the
    best epoch's weights and says when ``--patience`` epochs have passed without improvement. Only held-out
    events with a positive reward are scored (all of them when none has one)."""

    def __init__(
        self,
        val: Transitions,
        popularity: torch.Tensor,
        config: TrainConfig,
        best_state: dict[str, torch.Tensor] | None,
    ) -> None:
        self.val, self.k, self.patience, self.min_epochs = val, config.k, config.patience, config.min_epochs
        self.best_state = best_state
        # One ranking for every row: each item's rank from one sort, not B × N comparisons per batch.
        ranks = item_ranks(popularity)
        self.popularity_ndcg = self._ndcg(lambda b: shared_target_rank(ranks, b.action))

    @classmethod
    def build(
        cls,
        dataset: Dataset,
        agent_config: AgentConfig,
        config: TrainConfig,
        device: torch.device,
        resume_from: Path | None,
    ) -> Validator | None:
        if config.val_size <= 0:
            return None
        mask = validation_rows(dataset, config.val_size)
        val = build_transitions(dataset, "train", agent_config.hist_num, device, agent_config.history, rows_mask=mask)
        if len(val) == 0:
            logger.warning("--val-size %g holds out no event (users need more than 3 train events)", config.val_size)
            return None
        # Score what users engaged with: held-out rows without a positive reward (shown and skipped) stay out of
        # training (and in the histories of --history all), but are no target. Engagement-only logs: every row.
        engaged = val.reward[val.rows] > 0
        if bool(engaged.any()) and not bool(engaged.all()):
            logger.info(
                "validation scores the %d held-out rows with a positive reward (of %d)", int(engaged.sum()), len(val)
            )
            val = val.subset(engaged)
        train = ~np.asarray(dataset.is_test, dtype=bool) & ~mask
        counts = np.bincount(dataset.item[train], minlength=dataset.n_items + 1)[: dataset.n_items]
        popularity = torch.log(torch.as_tensor(counts, dtype=torch.float32, device=device).clamp_min(0.5))
        best = None
        if resume_from is not None and (resume_from / BEST_WEIGHTS_FILE).exists():
            from safetensors.torch import load_file

            best = load_file(str(resume_from / BEST_WEIGHTS_FILE))
        return cls(val, popularity, config, best)

    @torch.no_grad()
    def _ndcg(self, rank: Callable[[Any], torch.Tensor]) -> float:
        """Mean ndcg@K over the held-out rows; ``rank(batch)`` gives each row's 0-based rank of its action."""
        total, n = 0.0, len(self.val)
        for start in range(0, n, 1024):
            b = self.val.batch(torch.arange(start, min(start + 1024, n), device=self.val.device))
            total += float(ndcg_from_rank(rank(b), self.k).sum())
        return total / max(n, 1)

    def after_epoch(
        self,
        agent: Agent,
        state: TrainerState,
        metrics: MetricsLogger,
        on_epoch: Callable[[dict[str, float]], None] | None,
    ) -> bool:
        """Score the epoch, keep the best weights; True when training should stop early."""
        agent.eval()
        ndcg = self._ndcg(
            lambda b: target_rank(
                agent.head_logits(
                    "policy_head", agent.encode(b.user, b.history, b.history_event), b.history, b.history_event
                ).float(),
                b.action,
            )
        )
        agent.train()
        if state.best_metric is None or ndcg > state.best_metric:
            state.best_metric, state.best_epoch, state.since_best = ndcg, state.epoch, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in agent.state_dict().items()}
        else:
            state.since_best += 1
        record = {
            f"val/ndcg@{self.k}": ndcg,
            f"val/popularity_ndcg@{self.k}": self.popularity_ndcg,
            f"val/best_ndcg@{self.k}": float(state.best_metric),
            "val/best_epoch": float(state.best_epoch or 0),
            "train/epoch": float(state.epoch),
        }
        metrics.log(state.global_step, record)
        if on_epoch is not None:
            on_epoch(record)
        state.stopped_early = (
            bool(self.patience) and state.since_best >= self.patience and state.epoch >= self.min_epochs
        )
        if state.stopped_early:
            logger.info("early stop after epoch %d: best validation at epoch %s", state.epoch, state.best_epoch)
        return state.stopped_early

    def restore_best(self, agent: Agent) -> None:
        if self.best_state is not None:
            agent.load_state_dict(self.best_state)

    def best_bytes(self) -> bytes:
        from safetensors.torch import save

        assert self.best_state is not None
        return save({k: v.contiguous() for k, v in self.best_state.items()})


class Checkpointer:
    """Writes the model directory (weights, optimizer, RNG, trainer state, log) atomically; rank 0 only."""

    def __init__(
        self, out: Path, dataset: Dataset, agent_config: AgentConfig, is_main: bool, validator: Validator | None = None
    ) -> None:
        from topkrec.data.histories import UserHistories
        from topkrec.embeddings import dataset_fingerprint

        self.out, self.is_main = out, is_main
        self.user_raw, self.item_raw = dataset.user_raw, dataset.item_raw
        self.data_info = {"n_events": dataset.n_events, "fingerprint": dataset_fingerprint(dataset)}
        # Serving needs each known user's history rows: they are stored beside the weights.
        histories = UserHistories.from_dataset(dataset, agent_config.history)
        if agent_config.event_types and histories.events is not None and histories.events.size:
            # the event type of a request's history items given without events
            common = np.bincount(histories.events, minlength=len(agent_config.event_types)).argmax()
            self.data_info["default_event"] = agent_config.event_types[int(common)]
        self.extra_files = {HISTORIES_FILE: histories.to_bytes()} if is_main else {}
        self.validator = validator

    def save(
        self,
        agent: Agent,
        optimizer: Optimizer,
        config: TrainConfig,
        state: TrainerState,
        history: list[dict[str, Any]],
        meter: IntervalMeter,
    ) -> None:
        meter.raise_if_diverged()  # never replace a good checkpoint with NaN weights
        if not self.is_main:  # one writer; the weights are the same on every rank
            return
        extra = dict(self.extra_files)
        if self.validator is not None and self.validator.best_state is not None and not state.finished:
            extra[BEST_WEIGHTS_FILE] = self.validator.best_bytes()
        write_checkpoint(
            self.out,
            agent,
            optimizer,
            config,
            state,
            history,
            self.user_raw,
            self.item_raw,
            self.data_info,
            extra,
        )


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a job scheduler's preemption, torchrun shutting the ranks down) ends training as Ctrl-C
    does: the loop writes a checkpoint and the CLI exits with status 130. Only from the main thread,
    where Python delivers signals; the previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
