"""Training the agent: REINFORCE with the off-policy / top-K correction (DESIGN §3, §7, §8).

The loop is flat on purpose: every data tensor lives on the training device, each epoch is a seeded
permutation of the train transitions, and a batch is gathered by index (``Transitions.batch``) — no
DataLoader, no per-sample Python. One optimizer step trains

- β̂ by cross-entropy on every logged action, from the *detached* state (§4.3);
- π (and the state encoder) by ``corrected_policy_loss`` on the logged actions with non-zero reward.

Checkpoints are whole model directories written atomically (``io.atomic_dir``). The permutation of
epoch e is drawn from a generator seeded by (seed, e), so a run resumed from a checkpoint at any step
replays exactly the batches the uninterrupted run would have seen; with the weights, Adam state and
RNG state restored, ``--resume`` ends with bitwise-identical weights on CPU (tested).
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
from topkrec.data.transitions import TransitionBatch, Transitions, build_transitions
from topkrec.device import resolve_device
from topkrec.errors import ArtifactError, TopkrecError
from topkrec.io import atomic_dir, atomic_write_bytes, read_json, write_json
from topkrec.metrics_log import MetricsLogger
from topkrec.policy.config import AgentConfig, TrainConfig
from topkrec.policy.model import CONFIG_FILE, MODULE_FILES, Agent, write_model_files
from topkrec.policy.objective import CORRECTIONS, STAT_FIELDS, PolicyLossStats, corrected_policy_loss_tensors
from topkrec.progress import progress_bar

logger = logging.getLogger(__name__)

OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_META_FILE = "optimizer.json"
RNG_FILE = "rng.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
TRAIN_LOG_FILE = "train_log.jsonl"

# Settings that must not change between an interrupted run and its --resume.
RESUME_LOCKED = (
    "batch_size",
    "lr",
    "behavior_lr",
    "weight_decay",
    "correction",
    "k",
    "cap",
    "snis",
    "seed",
    "bias_init",
)

__all__ = [
    "StepOutput",
    "TrainResult",
    "TrainerState",
    "Optimizer",
    "SparseDenseAdam",
    "TrainObjective",
    "build_optimizer",
    "train_agent",
    "train_step",
]


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


@dataclass
class TrainerState:
    """Where training stands; saved as trainer_state.json with each checkpoint."""

    epoch: int = 0  # the epoch in progress (== epochs when finished)
    step_in_epoch: int = 0  # optimizer steps done in that epoch
    global_step: int = 0
    finished: bool = False
    world_size: int = 1  # processes of the (last) run; --batch-size is the global batch over all of them

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "finished": self.finished,
            "world_size": self.world_size,
        }


@dataclass
class TrainResult:
    agent: Agent
    state: TrainerState
    history: list[dict[str, Any]] = field(default_factory=list)
    out: Path | None = None
    seconds: float = 0.0


class SparseDenseAdam:
    """Adam for the dense parameters plus a lazy row-wise Adam for row-sparse ones, as one optimizer.

    The sampled-softmax heads' (N, d) weight and (N,) bias get row-sparse gradients (only the logged
    actions' and the shared negatives' rows), and ``topkrec.scale.sparse_adam.RowSparseAdam`` updates
    only those rows and their moments ("lazy Adam"), so a step costs O((B + S)·d) there instead of
    O(N·d). On the touched rows the arithmetic is Adam's; with fresh state, one step equals dense
    Adam's on every row (dense Adam moves no untouched row on its first step either). The documented
    difference afterwards: a row's moments decay only on the steps that touch it, while the bias
    correction uses the global step count, and untouched rows do not keep moving on their old
    momentum as under dense Adam.

    ``state_dict()`` numbers the dense optimizer's parameters first and the sparse ones after them,
    with the sparse param groups marked ``"sparse": True``; ``load_state_dict`` splits it back.
    """

    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.Optimizer) -> None:
        self.dense = dense
        self.sparse = sparse

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [*self.dense.param_groups, *self.sparse.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.sparse.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()
        self.sparse.step()

    def _n_dense(self) -> int:
        return sum(len(g["params"]) for g in self.dense.param_groups)

    def state_dict(self) -> dict[str, Any]:
        dense, sparse = self.dense.state_dict(), self.sparse.state_dict()
        off = self._n_dense()
        state = dict(dense["state"])
        state.update({int(pid) + off: st for pid, st in sparse["state"].items()})
        groups = list(dense["param_groups"])
        groups += [dict(g, params=[int(p) + off for p in g["params"]], sparse=True) for g in sparse["param_groups"]]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = state_dict["param_groups"]
        n_groups = len(self.dense.param_groups)
        if len(groups) != n_groups + len(self.sparse.param_groups) or any(
            bool(g.get("sparse", False)) != (i >= n_groups) for i, g in enumerate(groups)
        ):
            raise ValueError("the saved optimizer's dense/sparse param groups do not match this model's")
        off = self._n_dense()
        state = {int(k): v for k, v in state_dict["state"].items()}
        self.dense.load_state_dict(
            {"state": {k: v for k, v in state.items() if k < off}, "param_groups": groups[:n_groups]}
        )
        sparse_groups = [
            {k: v for k, v in dict(g, params=[int(p) - off for p in g["params"]]).items() if k != "sparse"}
            for g in groups[n_groups:]
        ]
        self.sparse.load_state_dict(
            {"state": {k - off: v for k, v in state.items() if k >= off}, "param_groups": sparse_groups}
        )


Optimizer = torch.optim.Optimizer | SparseDenseAdam


def build_optimizer(agent: Agent, config: TrainConfig, allow_sparse: bool = True) -> Optimizer:
    """Adam over π's side (encoder, π head, trainable embeddings) and β̂'s head, as two param groups.

    Sampled-softmax heads (``--softmax sampled``) train with row-sparse gradients and a lazy row-wise
    Adam over their weight and bias (see ``SparseDenseAdam``), unless weight decay is set (decay
    touches every row each step, so the heads then keep dense gradients and dense Adam) or
    ``allow_sparse`` is false (several processes: DDP all-reduces dense gradients on every backend).
    """
    from topkrec.scale.heads import SampledSoftmaxHead
    from topkrec.scale.sparse_adam import RowSparseAdam

    behavior_lr = config.behavior_lr if config.behavior_lr is not None else config.lr
    sparse_ok = allow_sparse and config.weight_decay == 0.0
    sparse_groups: list[dict[str, Any]] = []
    sparse_ids: set[int] = set()
    for head, lr in ((agent.policy_head, config.lr), (agent.behavior_head, behavior_lr)):
        if isinstance(head, SampledSoftmaxHead):
            head.sparse_grad = sparse_ok
            params = [p for p in (head.weight, head.bias) if p.requires_grad]
            if sparse_ok and params:
                sparse_groups.append({"params": params, "lr": lr})
                sparse_ids.update(id(p) for p in params)
    behavior = [p for p in agent.behavior_head.parameters() if p.requires_grad and id(p) not in sparse_ids]
    behavior_ids = {id(p) for p in agent.behavior_head.parameters()}
    policy = [p for p in agent.parameters() if p.requires_grad and id(p) not in behavior_ids | sparse_ids]
    groups = [{"params": policy, "lr": config.lr}, {"params": behavior, "lr": behavior_lr}]
    device = next(agent.parameters()).device
    # The fused kernel does the whole update in one pass over each tensor (CPU and CUDA).
    fused = device.type in ("cpu", "cuda")
    dense = torch.optim.Adam(groups, weight_decay=config.weight_decay, fused=fused)
    if not sparse_groups:
        return dense
    return SparseDenseAdam(dense, RowSparseAdam(sparse_groups))


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


# ---------------------------------------------------------------------------------------------- state I/O
def _optimizer_tensors(optimizer: Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    meta = {"param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, meta


def _load_optimizer(optimizer: Optimizer, directory: Path) -> None:
    from safetensors.torch import load_file

    path = directory / OPTIMIZER_FILE
    if not path.exists():
        raise ArtifactError(f"{path} is missing; cannot --resume (the run left no complete checkpoint)")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises several kinds on a corrupt file
        raise ArtifactError(f"{path} is not a readable safetensors file ({e}); cannot --resume") from e
    meta = read_json(directory / OPTIMIZER_META_FILE)
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, extra in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    saved_sparse = any(g.get("sparse") for g in groups)
    if saved_sparse != isinstance(optimizer, SparseDenseAdam):
        kinds = {True: "row-sparse Adam (one process)", False: "dense Adam (several processes, or weight decay)"}
        raise TopkrecError(
            f"--resume: the sampled-softmax heads in {directory} were trained with {kinds[saved_sparse]}, this run "
            f"would use {kinds[not saved_sparse]}; resume on the same number of processes (one vs several)"
        )
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise ArtifactError(f"{path}: optimizer state does not match the model ({e}); cannot --resume") from e


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = s
    return out


def _restore_rng(directory: Path) -> None:
    from safetensors.torch import load_file

    path = directory / RNG_FILE
    if not path.exists():
        return
    states = load_file(str(path))
    torch.set_rng_state(states["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [states[k] for k in sorted(states) if k.startswith("torch_cuda_")]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def write_checkpoint(
    out: Path,
    agent: Agent,
    optimizer: Optimizer,
    train_config: TrainConfig,
    state: TrainerState,
    history: list[dict[str, Any]],
    user_raw: Any,
    item_raw: Any,
    data_info: dict[str, Any],
    extra_files: dict[str, bytes] | None = None,
) -> None:
    """Replace ``out`` with a complete model directory + resume state, atomically."""
    import json

    from safetensors.torch import save

    with atomic_dir(out, force=True) as tmp:
        write_model_files(tmp, agent, train_config, user_raw, item_raw, data_info)
        tensors, meta = _optimizer_tensors(optimizer)
        atomic_write_bytes(tmp / OPTIMIZER_FILE, save({k: v.contiguous().cpu() for k, v in tensors.items()}))
        write_json(tmp / OPTIMIZER_META_FILE, meta)
        atomic_write_bytes(tmp / RNG_FILE, save(_rng_tensors()))
        write_json(tmp / TRAINER_STATE_FILE, state.to_json())
        for name, blob in (extra_files or {}).items():  # e.g. serving's user_histories.safetensors
            atomic_write_bytes(tmp / name, blob)
        atomic_write_bytes(tmp / TRAIN_LOG_FILE, "".join(json.dumps(r) + "\n" for r in history).encode())


def read_train_log(model_dir: Path) -> list[dict[str, Any]]:
    import json

    path = Path(model_dir) / TRAIN_LOG_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _resume(
    out: Path, agent: Agent, optimizer: Optimizer, agent_config: AgentConfig, config: TrainConfig
) -> tuple[TrainerState, list[dict[str, Any]]]:
    from safetensors.torch import load_file

    if not (out / TRAINER_STATE_FILE).exists():
        raise TopkrecError(f"--resume: {out} holds no checkpoint (no {TRAINER_STATE_FILE}); train without --resume")
    saved = read_json(out / CONFIG_FILE)
    if AgentConfig.from_json(saved["agent"]) != agent_config:
        raise TopkrecError(
            f"--resume: the model in {out} was built with {saved['agent']}, this run asks for "
            f"{agent_config.to_json()}; use the same --encoder/--hidden/--hist-num/--softmax or a new --out"
        )
    old = TrainConfig.from_json(saved.get("train", {}))
    changed = [k for k in RESUME_LOCKED if getattr(old, k) != getattr(config, k)]
    if changed:
        diffs = ", ".join(f"{k}: {getattr(old, k)!r} → {getattr(config, k)!r}" for k in changed)
        raise TopkrecError(f"--resume: settings differ from the checkpoint ({diffs}); resume with the same settings")
    for name, filename in MODULE_FILES.items():
        agent.load_module_state(name, load_file(str(out / filename)))
    _load_optimizer(optimizer, out)
    _restore_rng(out)
    st = read_json(out / TRAINER_STATE_FILE)
    state = TrainerState(
        epoch=int(st["epoch"]), step_in_epoch=int(st["step_in_epoch"]), global_step=int(st["global_step"])
    )
    return state, read_train_log(out)


# ---------------------------------------------------------------------------------------------- the loop
def _epoch_permutation(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=gen).to(device)


def _data_info(dataset: Dataset) -> dict[str, Any]:
    from topkrec.embeddings import dataset_fingerprint

    return {"n_events": dataset.n_events, "fingerprint": dataset_fingerprint(dataset)}


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
) -> TrainResult:
    """Train π and β̂ on the train split of ``dataset``; checkpoint into the model dir ``out``.

    ``embeddings`` is a ``PretrainedEmbeddings`` (``topkrec.embeddings.load_embeddings``) or None, in
    which case embeddings start random and are trained (``trainable_embeddings`` is forced on).
    ``initial_agent`` starts from given weights instead (its config is used; ``embeddings`` is ignored).
    """
    from topkrec.io import check_output_dir

    config = config or TrainConfig()
    out = Path(out)
    if config.correction not in CORRECTIONS:
        raise TopkrecError(f"unknown --correction {config.correction!r}; use one of {', '.join(CORRECTIONS)}")
    if config.k < 1 or config.batch_size < 1 or config.epochs < 0 or config.lr <= 0:
        raise TopkrecError("--k, --batch-size must be >= 1, --epochs >= 0 and --lr > 0")
    if config.cap is not None and config.cap <= 0:
        raise TopkrecError(f"--cap must be positive, got {config.cap}")
    if not resume:
        check_output_dir(out, force)  # every rank checks (read-only), before any collective call
    else:
        from topkrec.io import recover_interrupted

        recover_interrupted(out)  # a kill while a checkpoint was swapped in left the complete one beside out
    # Under torchrun: join the process group, train on cuda:LOCAL_RANK; one process: no-op.
    dist, device = distributed.setup(resolve_device(config.device))
    if initial_agent is not None:
        agent_config = initial_agent.config
    if agent_config is None:
        agent_config = AgentConfig(n_users=dataset.n_users, n_items=dataset.n_items)
    if (agent_config.n_users, agent_config.n_items) != (dataset.n_users, dataset.n_items):
        raise TopkrecError("agent config n_users/n_items do not match the dataset")
    user_init = item_init = None
    if initial_agent is not None:
        pass
    elif embeddings is not None:
        user_init, item_init = embeddings.user, embeddings.item
        if int(user_init.shape[1]) != agent_config.embed_dim:
            from dataclasses import replace

            agent_config = replace(agent_config, embed_dim=int(user_init.shape[1]))
    elif not agent_config.trainable_embeddings:
        from dataclasses import replace

        logger.warning("no pretrained embeddings given: embeddings start random and are trained")
        agent_config = replace(agent_config, trainable_embeddings=True)

    torch.manual_seed(config.seed)
    if initial_agent is not None:
        agent = initial_agent
    else:
        agent = Agent(agent_config, user_init, item_init)
    if embeddings is None and initial_agent is None:
        with torch.no_grad():  # small random embeddings; pad row stays zero
            agent.user_embedding.weight.normal_(0.0, 0.1)
            agent.item_embedding.weight.normal_(0.0, 0.1)
            agent.item_embedding.weight[agent_config.pad_index].zero_()
    if initial_agent is None:
        init_output_bias(agent, dataset, config.bias_init)
    agent.to(device)
    agent.train()
    from topkrec.scale.heads import set_proposal_counts

    # --proposal popularity samples negatives ∝ train count + 1 (a no-op for the other heads).
    n_popularity = set_proposal_counts(
        [agent.policy_head, agent.behavior_head], torch.as_tensor(item_popularity(dataset))
    )
    if n_popularity:
        logger.info("sampled softmax: popularity proposal from the train counts for %d head(s)", n_popularity)
    optimizer = build_optimizer(agent, config, allow_sparse=not dist.enabled)

    transitions: Transitions = build_transitions(dataset, "train", agent_config.hist_num, device)
    n = len(transitions)
    if n == 0:
        raise TopkrecError("the dataset has no train events to learn from")
    steps_per_epoch = math.ceil(n / config.batch_size)
    if dist.enabled and config.batch_size < dist.world_size:
        raise TopkrecError(
            f"--batch-size {config.batch_size} is the global batch: it must be >= the {dist.world_size} processes"
        )
    # Known once for the split, so a step never has to look at the rewards on the host.
    all_rewarded = bool((transitions.reward[transitions.rows] != 0).all())
    state = TrainerState(world_size=dist.world_size)
    history: list[dict[str, Any]] = []
    if resume:
        state, history = _resume(out, agent, optimizer, agent_config, config)
        state.world_size = dist.world_size
        logger.info("resuming at epoch %d step %d (step %d)", state.epoch, state.step_in_epoch, state.global_step)
    objective = dist.wrap(
        TrainObjective(agent, config, torch.bfloat16 if (config.bf16 and device.type == "cuda") else None),
        device,
        # A rank whose part of a batch has no rewarded row does not use π's head that step.
        find_unused_parameters=not all_rewarded,
    )
    if config.compile:
        objective = torch.compile(objective)  # type: ignore[assignment]
    if dist.enabled:
        logger.info("data parallel: %d process(es), global batch %d", dist.world_size, config.batch_size)
    metrics = MetricsLogger(jsonl if dist.is_main else None)
    metrics.history = history
    data_info = _data_info(dataset)
    from topkrec.serve.histories import HISTORIES_FILE, UserHistories  # serving needs each user's history

    extra_files = {HISTORIES_FILE: UserHistories.from_dataset(dataset).to_bytes()}

    def checkpoint() -> None:
        if not dist.is_main:  # one writer; the weights are the same on every rank
            return
        write_checkpoint(
            out,
            agent,
            optimizer,
            config,
            state,
            metrics.history,
            dataset.user_raw,
            dataset.item_raw,
            data_info,
            extra_files,
        )

    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    sums = torch.zeros(2 + len(STAT_FIELDS), device=device)  # summed StepOutput.values of the interval
    n_steps = n_stat_steps = rows_interval = 0
    t_interval = time.perf_counter()
    t0 = time.perf_counter()
    stopped = False
    try:
        with _sigterm_as_interrupt(), progress_bar(total_steps, "train", enabled=progress and dist.is_main) as bar:
            bar.update(min(state.global_step, total_steps))
            while state.epoch < config.epochs and not stopped:
                perm = _epoch_permutation(n, config.seed, state.epoch, device)
                while state.step_in_epoch < steps_per_epoch:
                    if config.max_steps is not None and state.global_step >= config.max_steps:
                        stopped = True
                        break
                    s = state.step_in_epoch * config.batch_size
                    global_idx = perm[s : s + config.batch_size]
                    batch = transitions.batch(dist.shard(global_idx))
                    scales = _shard_scales(dist, transitions, global_idx, len(batch), all_rewarded)
                    step = train_step(agent, optimizer, batch, config, None, all_rewarded, objective, scales)
                    state.step_in_epoch += 1
                    state.global_step += 1
                    sums += step.values
                    n_steps += 1
                    n_stat_steps += step.n_policy_rows > 0
                    rows_interval += len(batch)
                    if on_step is not None:
                        on_step(state.global_step, step)
                    bar.update(1)
                    if state.global_step % max(1, config.log_every) == 0 or state.step_in_epoch == steps_per_epoch:
                        record = _interval_record(dist, sums, n_steps, n_stat_steps, rows_interval)
                        record["time/samples_per_s"] /= max(time.perf_counter() - t_interval, 1e-9)
                        record["train/epoch"] = state.epoch + state.step_in_epoch / steps_per_epoch
                        metrics.log(state.global_step, record)
                        bar.update(
                            0,
                            info=f"epoch {state.epoch + 1} π {record['train/policy_loss']:.3g} "
                            f"β̂ {record['train/behavior_loss']:.3g}",
                        )
                        sums.zero_()
                        n_steps = n_stat_steps = rows_interval = 0
                        t_interval = time.perf_counter()
                    if config.checkpoint_every and state.global_step % config.checkpoint_every == 0:
                        checkpoint()
                if not stopped:
                    state.epoch += 1
                    state.step_in_epoch = 0
                    if state.epoch < config.epochs:
                        checkpoint()
        state.finished = state.epoch >= config.epochs
        checkpoint()
        # Every rank waits for rank 0's last write, so none tears the group down while it is still busy.
        dist.barrier()
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM (torchrun forwards either to every rank). Every completed step is consistent:
        # save it so --resume continues from here.
        logger.warning("interrupted: writing a checkpoint at global step %d", state.global_step)
        checkpoint()
        raise
    return TrainResult(agent, state, metrics.history, out, time.perf_counter() - t0)


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


def init_output_bias(agent: Agent, dataset: Dataset, kind: str) -> None:
    """Set the heads' output biases to the log prior (log train count), so π and β̂ start as popularity.

    Only heads with a per-item ``bias`` parameter are touched (the full softmax); others keep their init.
    """
    if kind == "zero":
        return
    if kind != "popularity":
        raise TopkrecError(f"unknown bias init {kind!r}; use popularity or zero")
    counts = torch.as_tensor(item_popularity(dataset), dtype=torch.float32)
    log_prior = torch.log(counts + 1.0)
    log_prior -= log_prior.mean()
    with torch.no_grad():
        for head in (agent.policy_head, agent.behavior_head):
            bias = getattr(head, "bias", None)
            if isinstance(bias, torch.Tensor) and tuple(bias.shape) == (dataset.n_items,):
                bias.copy_(log_prior.to(bias.device))


def _shard_scales(
    dist: distributed.DistContext, transitions: Transitions, global_idx: torch.Tensor, n_local: int, all_rewarded: bool
) -> tuple[float, float]:
    """(β̂, π) loss factors of this rank so that DDP's average is the global batch's gradient (1, 1 alone).

    β̂'s mean is over every row; π's over the rewarded rows, which need counting when some rows have no
    reward (that path syncs with the host anyway, to select the rows).
    """
    if not dist.enabled:
        return 1.0, 1.0
    behavior = dist.loss_scale(n_local, len(global_idx))
    if all_rewarded:
        return behavior, behavior
    rewarded = transitions.reward[transitions.rows[global_idx]] != 0
    n_global = int(rewarded.sum())
    if n_global == 0:
        return behavior, 0.0
    local = dist.shard(rewarded)
    return behavior, dist.loss_scale(int(local.sum()), n_global)


def _interval_record(
    dist: distributed.DistContext, sums: torch.Tensor, n_steps: int, n_stat_steps: int, rows: int
) -> dict[str, float]:
    """Means over the logging interval's steps (and over ranks), from the summed step values: one sync.

    ``time/samples_per_s`` is returned as the interval's row count over all ranks; the caller divides.
    """
    packed = torch.cat([sums, sums.new_tensor([n_steps, n_stat_steps, rows])]).double()
    dist.all_reduce_sum(packed)
    values = packed.tolist()
    k = 2 + len(STAT_FIELDS)
    total_steps, total_stat_steps, total_rows = values[k:]
    record = {
        "train/policy_loss": values[0] / max(total_steps, 1),
        "train/behavior_loss": values[1] / max(total_steps, 1),
    }
    if total_stat_steps:
        stats = PolicyLossStats(*(v / total_stat_steps for v in values[2:k]))
        record.update(stats.as_metrics("train/"))
    record["time/samples_per_s"] = total_rows
    return record


def item_popularity(dataset: Dataset) -> np.ndarray:
    """Train-split count of each item (n_items,)."""
    train = ~np.asarray(dataset.is_test, dtype=bool)
    return np.bincount(dataset.item[train], minlength=dataset.n_items + 1)[: dataset.n_items]
