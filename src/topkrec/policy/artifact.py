"""The model directory written by ``topkrec train`` and read by ``evaluate``, ``recommend`` and ``serve``
(DESIGN §6, §7). This module alone knows its files; the trainer, the evaluator and the server import it.

Layout (everything safetensors, JSON or TOML; no pickle)::

    config.json                  format_version, library_version, "agent" (AgentConfig + pad_index),
                                 "train" (TrainConfig), "data" (counts, dataset fingerprint), "shapes"
    config.toml                  the resolved settings ([agent], [train]): `topkrec train --config` reproduces the run
    encoder.safetensors          user_embedding.weight, item_embedding.weight, encoder.* (state encoder)
    policy_head.safetensors      π head parameters
    behavior_head.safetensors    β̂ head parameters
    maps.json                    {"user_raw": [raw id of user index i], "item_raw": [raw id of item index i]}
    user_histories.safetensors   every known user's items (topkrec.data.histories), for serving
    optimizer.safetensors        Adam state tensors (train only; needed by --resume)
    optimizer.json               Adam param groups + the tensor keys of each parameter's state
    rng.safetensors              torch RNG states (cpu, cuda if any)
    trainer_state.json           epoch, step in epoch, global step, finished, world size
    train_log.jsonl              one JSON object of namespaced metrics per logged step
    metrics.json                 written by ``topkrec evaluate`` (DESIGN §9)

``load_agent`` needs only config.json, the three module files and maps.json. A directory whose
``trainer_state.json`` says ``finished: false`` (a checkpoint of a run that was stopped) loads with a
warning; weights that are not finite are refused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from topkrec.config import CONFIG_TOML, settings_toml
from topkrec.errors import ArtifactError, TopkrecError
from topkrec.io import atomic_dir, atomic_write_bytes, read_json, write_json
from topkrec.policy.config import AgentConfig, TrainConfig
from topkrec.policy.model import Agent

if TYPE_CHECKING:
    from topkrec.optim import Optimizer

logger = logging.getLogger(__name__)

MODEL_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MAPS_FILE = "maps.json"
MODULE_FILES = {
    "encoder": "encoder.safetensors",
    "policy_head": "policy_head.safetensors",
    "behavior_head": "behavior_head.safetensors",
}
"""The module files every model has; ``supervised_head.safetensors`` too when it has that head."""


def module_files(agent: Agent) -> dict[str, str]:
    """Module name → file name of every module of ``agent``."""
    return {name: f"{name}.safetensors" for name in agent.module_names()}


HISTORIES_FILE = "user_histories.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_META_FILE = "optimizer.json"
RNG_FILE = "rng.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
TRAIN_LOG_FILE = "train_log.jsonl"
BEST_WEIGHTS_FILE = "best_weights.safetensors"
"""With --val-size, while training: the weights of the best validation epoch so far (for --resume)."""
METRICS_FILE = "metrics.json"

__all__ = [
    "CONFIG_FILE",
    "CONFIG_TOML",
    "HISTORIES_FILE",
    "MAPS_FILE",
    "METRICS_FILE",
    "MODULE_FILES",
    "TRAINER_STATE_FILE",
    "TRAIN_LOG_FILE",
    "BEST_WEIGHTS_FILE",
    "LoadedAgent",
    "TrainerState",
    "load_agent",
    "module_files",
    "read_checkpoint",
    "read_saved_configs",
    "read_train_log",
    "save_agent",
    "write_checkpoint",
    "write_model_files",
]


@dataclass
class TrainerState:
    """Where training stands; saved as trainer_state.json with each checkpoint."""

    epoch: int = 0  # the epoch in progress (== epochs when finished)
    step_in_epoch: int = 0  # optimizer steps done in that epoch
    global_step: int = 0
    finished: bool = False
    world_size: int = 1  # processes of the (last) run; --batch-size is the global batch over all of them
    best_metric: float | None = None  # with --val-size: the best validation ndcg@K so far
    best_epoch: int | None = None  # its epoch (1-based); the finished model holds that epoch's weights
    since_best: int = 0  # epochs since the best one (early stopping at --patience)
    stopped_early: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "finished": self.finished,
            "world_size": self.world_size,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "since_best": self.since_best,
            "stopped_early": self.stopped_early,
        }

    @classmethod
    def from_json(cls, obj: Any, source: Path) -> TrainerState:
        try:
            return cls(
                epoch=int(obj["epoch"]),
                step_in_epoch=int(obj["step_in_epoch"]),
                global_step=int(obj["global_step"]),
                finished=bool(obj.get("finished", False)),
                world_size=int(obj.get("world_size", 1)),
                best_metric=None if obj.get("best_metric") is None else float(obj["best_metric"]),
                best_epoch=None if obj.get("best_epoch") is None else int(obj["best_epoch"]),
                since_best=int(obj.get("since_best", 0)),
                stopped_early=bool(obj.get("stopped_early", False)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{source} is not a valid trainer state ({e}); the checkpoint is corrupt") from e


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


# ---------------------------------------------------------------------------------------------- writing
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
    """Write config.json, config.toml, the module safetensors and maps.json into an existing directory."""
    from topkrec import __version__

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = agent.config
    train_config = train_config or TrainConfig()
    for name, filename in module_files(agent).items():
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
            "train": train_config.to_json(),
            "data": {"n_users": cfg.n_users, "n_items": cfg.n_items, **(data_info or {})},
            "shapes": {
                name: {k: list(v.shape) for k, v in agent.module_state(name).items()} for name in module_files(agent)
            },
            "n_parameters": int(sum(p.numel() for p in agent.parameters())),
        },
    )
    atomic_write_bytes(d / CONFIG_TOML, model_config_toml(cfg, train_config).encode())


def model_config_toml(agent_config: AgentConfig, train_config: TrainConfig) -> str:
    """The ``config.toml`` of a model: its resolved settings, which ``topkrec train --config`` reads back."""
    from topkrec import __version__

    header = (
        f"Settings of a topkrec model (topkrec {__version__}). Reproduce the run with\n"
        f"  topkrec train --config config.toml --data DATA [--embeddings EMB] --out NEW_MODEL"
    )
    return settings_toml({"agent": agent_config, "train": train_config}, header)


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
    out = Path(directory)
    with atomic_dir(out, force=force) as tmp:
        write_model_files(tmp, agent, train_config, user_raw, item_raw, data_info)
    return out


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
    from safetensors.torch import save

    from topkrec.optim import optimizer_state_tensors

    with atomic_dir(out, force=True) as tmp:
        write_model_files(tmp, agent, train_config, user_raw, item_raw, data_info)
        tensors, meta = optimizer_state_tensors(optimizer)
        atomic_write_bytes(tmp / OPTIMIZER_FILE, save({k: v.contiguous().cpu() for k, v in tensors.items()}))
        write_json(tmp / OPTIMIZER_META_FILE, meta)
        atomic_write_bytes(tmp / RNG_FILE, save(_rng_tensors()))
        write_json(tmp / TRAINER_STATE_FILE, state.to_json())
        for name, blob in (extra_files or {}).items():  # e.g. serving's user_histories.safetensors
            atomic_write_bytes(tmp / name, blob)
        atomic_write_bytes(tmp / TRAIN_LOG_FILE, "".join(json.dumps(r) + "\n" for r in history).encode())


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = s
    return out


# ---------------------------------------------------------------------------------------------- reading
def read_saved_configs(model_dir: Path) -> tuple[AgentConfig, TrainConfig, dict[str, Any]]:
    """(agent config, train config, the raw config.json) of a model directory; ``ArtifactError`` if invalid."""
    d = Path(model_dir)
    if not d.is_dir():
        raise ArtifactError(f"model directory {d} does not exist; create it with `topkrec train`")
    try:
        raw = read_json(d / CONFIG_FILE)
    except TopkrecError as e:
        raise ArtifactError(f"{d} is not a model directory: {e}") from e
    if not isinstance(raw, dict) or "format_version" not in raw:
        raise ArtifactError(f"{d / CONFIG_FILE} is not a topkrec model config (no format_version)")
    if raw["format_version"] != MODEL_FORMAT_VERSION:
        raise ArtifactError(
            f"{d / CONFIG_FILE} has format_version {raw['format_version']!r}; this topkrec reads "
            f"{MODEL_FORMAT_VERSION} — retrain the model or use the topkrec version that wrote it"
        )
    if not isinstance(raw.get("agent"), dict):
        raise ArtifactError(f"{d / CONFIG_FILE} has no 'agent' section; the model config is incomplete, retrain")
    try:
        config = AgentConfig.from_json(raw["agent"])
        train_config = TrainConfig.from_json(raw.get("train", {}))
    except (TypeError, ValueError, TopkrecError) as e:
        raise ArtifactError(f"{d / CONFIG_FILE}: invalid settings ({e})") from e
    if config.n_users < 1 or config.n_items < 1:
        raise ArtifactError(
            f"{d / CONFIG_FILE}: n_users and n_items must be >= 1 (got {config.n_users}, {config.n_items})"
        )
    return config, train_config, raw


def _load_module_file(agent: Agent, name: str, path: Path, config_path: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.exists():
        raise ArtifactError(f"{path} is missing; the model directory is incomplete, re-run `topkrec train`")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ArtifactError(f"{path} is not a readable safetensors file ({e}); re-run `topkrec train`") from e
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ArtifactError(
            f"{path}: {', '.join(bad)} hold NaN or infinite values; the model diverged — retrain it "
            "(a lower --lr, or check the data's rewards)"
        )
    try:
        agent.load_module_state(name, tensors)
    except ArtifactError as e:
        raise ArtifactError(f"{path} does not match {config_path}: {e}") from e


def load_agent(model_dir: Path | str, device: str | torch.device = "cpu") -> LoadedAgent:
    """Load a model directory; ``ArtifactError`` says what is missing, corrupt or mismatched."""
    d = Path(model_dir)
    config, train_config, raw = read_saved_configs(d)
    try:
        agent = Agent(config)
    except (TypeError, ValueError, TopkrecError) as e:
        raise ArtifactError(f"{d / CONFIG_FILE}: invalid agent config ({e})") from e
    for name, filename in module_files(agent).items():
        _load_module_file(agent, name, d / filename, d / CONFIG_FILE)
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
    state_path = d / TRAINER_STATE_FILE
    if state_path.exists():
        state = TrainerState.from_json(read_json(state_path), state_path)
        if not state.finished:
            logger.warning(
                "%s is a checkpoint of a run that did not finish (epoch %d of %d, step %d); "
                "continue it with `topkrec train --resume --out %s ...`",
                d,
                state.epoch,
                train_config.epochs,
                state.global_step,
                d,
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


def read_checkpoint(out: Path, agent: Agent, optimizer: Optimizer) -> tuple[TrainerState, list[dict[str, Any]]]:
    """Restore weights, optimizer and RNG state from the checkpoint in ``out``; return where training stood.

    The caller checks first that the saved settings allow a resume (``read_saved_configs``).
    """
    from safetensors.torch import load_file

    from topkrec.optim import load_optimizer_state

    out = Path(out)
    if not (out / TRAINER_STATE_FILE).exists():
        raise TopkrecError(f"--resume: {out} holds no checkpoint (no {TRAINER_STATE_FILE}); train without --resume")
    for name, filename in module_files(agent).items():
        _load_module_file(agent, name, out / filename, out / CONFIG_FILE)
    path = out / OPTIMIZER_FILE
    if not path.exists():
        raise ArtifactError(f"{path} is missing; cannot --resume (the run left no complete checkpoint)")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises several kinds on a corrupt file
        raise ArtifactError(f"{path} is not a readable safetensors file ({e}); cannot --resume") from e
    load_optimizer_state(optimizer, tensors, read_json(out / OPTIMIZER_META_FILE), str(out))
    _restore_rng(out)
    state = TrainerState.from_json(read_json(out / TRAINER_STATE_FILE), out / TRAINER_STATE_FILE)
    return state, read_train_log(out)


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


def read_train_log(model_dir: Path) -> list[dict[str, Any]]:
    """The training log of a model directory (one dict per logged step); [] when there is none."""
    path = Path(model_dir) / TRAIN_LOG_FILE
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{path}:{n} is not valid JSON ({e})") from e
    return records
