"""Configuration of the agent (the network) and of its training (DESIGN §3): every setting declared once.

Each field made with :func:`topkrec.config.setting` is a user setting: its default, range, choices and
help text live here and nowhere else. ``topkrec train``, ``compare`` and ``demo`` generate their options
from these fields (:mod:`topkrec.cli.settings`), config files (``--config run.toml``) are read against
them, and ``__post_init__`` validates them (:func:`topkrec.config.check_settings`) wherever a config is
made: from flags, from a file, in Python, or when a model directory is loaded.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from topkrec.config import SettingsError, check_settings, setting
from topkrec.device import check_device_name
from topkrec.errors import ArtifactError

__all__ = [
    "CORRECTIONS",
    "ENCODERS",
    "PRESETS",
    "SOFTMAX_KINDS",
    "AgentConfig",
    "Correction",
    "TrainConfig",
]

Correction = Literal["none", "is", "topk"]
CORRECTIONS: tuple[str, ...] = ("none", "is", "topk")
Encoder = Literal["concat", "mean", "gru", "cfn", "attention"]
ENCODERS: tuple[str, ...] = ("concat", "mean", "gru", "cfn", "attention")
HistoryRows = Literal["all", "engaged", "context_engaged"]
RepeatMode = Literal["add", "replace"]
SoftmaxKind = Literal["full", "sampled", "adaptive"]
SOFTMAX_KINDS: tuple[str, ...] = ("full", "sampled", "adaptive")


@dataclass(frozen=True)
class AgentConfig:
    """Shapes and kinds of the agent's modules; saved in the model dir's config.json.

    ``n_users`` and ``n_items`` are derived from the dataset (0 = not yet bound: settings resolved from
    flags before the data is read; :meth:`for_dataset` binds them).
    """

    n_users: int = 0
    """Users in the dataset (rows of the user embedding table)."""
    n_items: int = 0
    """Items in the catalogue; the item table has n_items + 1 rows, the last is the pad/OOV index."""
    event_types: tuple[str, ...] = ()
    """The dataset's event types (``Dataset.event_vocabulary``): code i of a history token is event_types[i]."""
    history_events: tuple[str, ...] = ()
    """The event types whose rows enter histories under ``history`` (serving filters new feedback by them;
    empty: every type)."""
    embed_size: int = setting(
        64,
        "Width of the user and item embeddings when no --embeddings are given (pretrained ones set it).",
        aliases=("--embed-dim",),
        ge=1,
    )
    hist_num: int = setting(50, "Tokens of history in the state (the reference uses 10).", ge=1)
    history: HistoryRows = setting(
        "context_engaged",
        "Which rows form the history: all (skipped impressions too), engaged (rows with a reward) or "
        "context_engaged (context-only rows such as organic views, plus the engaged ones).",
    )
    feedback_tokens: bool = setting(
        True,
        "History tokens are (item, event type) — what the user did with each item (viewed, carted, rated 4.5, "
        "skipped) — instead of bare item ids (the reference).",
        flag="feedback-tokens/item-tokens",
    )
    user_embedding: bool = setting(
        False,
        "Learn a user-id embedding; off: the state is the history alone, so new users are served exactly as "
        "users were trained.",
    )
    hidden: int = setting(
        64,
        "Width of the state s that both heads read, for the encoders that project (concat, mean, gru, cfn, "
        "attention with --state-projection or a user embedding); the unprojected attention state is "
        "--embed-size wide.",
        ge=1,
    )
    encoder: Encoder = setting(
        "attention",
        "State encoder: concat (the reference), mean, gru, cfn (the paper's Chaos-Free RNN) or attention "
        "(causal self-attention, SASRec-style).",
    )
    attention_blocks: int = setting(2, "--encoder attention: self-attention blocks.", ge=1)
    attention_heads: int = setting(1, "--encoder attention: heads per block (must divide the embedding width).", ge=1)
    dropout: float = setting(0.5, "Dropout in the attention and recurrent encoders while training.", ge=0, lt=1)
    state_projection: bool = setting(
        False,
        "--encoder attention: pass [user ; attention output] through Linear → ReLU to --hidden. Off: without a "
        "user embedding the state is the attention output itself (its final layer norm, as SASRec reads it; "
        "width = the embedding width). The other encoders always project.",
    )
    repeat_bias: bool = setting(
        True,
        "Re-engagement: each head learns a bias[event type, recency] for the items in the state's history, "
        "which --repeat-mode adds to their logits or puts in their place (users re-view, cart what they viewed, "
        "buy what they carted). Full softmax only: the sampled and adaptive heads train without it.",
    )
    repeat_mode: RepeatMode = setting(
        "replace",
        "--repeat-bias: add the learned bias to a history item's logit, or replace the logit with it (the "
        "biases alone then order the history, the head's logits the unseen items).",
    )
    supervised_head: bool = setting(
        False,
        "A third head trained by next-item cross-entropy on every logged row, through the shared encoder "
        "(SQN-style, Xin et al. SIGIR 2020); it shapes the state π reads and is scored as 'supervised'.",
    )
    softmax: SoftmaxKind = setting(
        "full", "Head of π and β̂: full softmax, sampled (shared negatives, log-Q) or adaptive."
    )
    temperature: float = setting(1.0, "Softmax temperature T of both heads.", gt=0)
    negatives: int = setting(1024, "--softmax sampled: shared negatives per batch.", ge=1)
    sampled_logp: Literal["exact", "estimate"] = setting(
        "exact", "--softmax sampled: log π for w and λ_K, exact (a catalogue pass) or estimated from the negatives."
    )
    proposal: Literal["log_uniform", "popularity", "uniform"] = setting(
        "log_uniform", "--softmax sampled: the negatives' proposal (log-uniform over frequency-ordered ids)."
    )
    extra_head_options: dict[str, Any] = field(default_factory=dict)
    """Head constructor options beyond the settings (e.g. ``{"fused": False}`` for a benchmark baseline)."""
    trainable_embeddings: bool = setting(
        True,
        "Fine-tune the pretrained embeddings (--embeddings); frozen, they stay as pretrained (the reference).",
        flag="trainable-embeddings/frozen-embeddings",
    )

    def __post_init__(self) -> None:
        check_settings(self)
        if self.n_users < 0 or self.n_items < 0:
            raise SettingsError(f"n_users and n_items must be >= 0 (got {self.n_users}, {self.n_items})")
        if self.encoder == "attention" and self.embed_size % self.attention_heads:
            raise SettingsError(
                f"--attention-heads {self.attention_heads} must divide the embedding width {self.embed_size}"
            )

    @property
    def pad_index(self) -> int:
        return self.n_items

    @property
    def head_options(self) -> dict[str, Any]:
        """Constructor options of the heads (``topkrec.heads.make_head``) for this ``softmax``."""
        options: dict[str, Any] = {"temperature": self.temperature}
        if self.softmax == "sampled":
            options.update(negatives=self.negatives, proposal=self.proposal, normaliser=self.sampled_logp)
        return {**options, **self.extra_head_options}

    def for_dataset(self, n_users: int, n_items: int, event_types: tuple[str, ...] = ()) -> AgentConfig:
        """This config bound to a dataset's counts and event types."""
        return replace(self, n_users=int(n_users), n_items=int(n_items), event_types=tuple(event_types))

    @property
    def uses_repeat_bias(self) -> bool:
        """``repeat_bias`` where the head supports it (the full softmax)."""
        return self.repeat_bias and self.softmax == "full"

    @property
    def event_pad(self) -> int:
        """The event code of padding (one past the last event type)."""
        return len(self.event_types)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "pad_index": self.pad_index, "head_options": self.head_options}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> AgentConfig:
        obj = dict(_section(obj, "agent"))
        if "history" not in obj:  # written before feedback tokens: bare items over every logged row
            obj.setdefault("feedback_tokens", False)
            obj.setdefault("history", "all")
        # Settings added later default to what older model directories were built with.
        for key, legacy_value in (
            ("user_embedding", True),
            ("repeat_bias", False),
            ("repeat_mode", "add"),
            ("dropout", 0.0),
            ("state_projection", True),
        ):
            obj.setdefault(key, legacy_value)
        # Model directories written before settings were declared once: embed_dim and a head_options dict.
        if "embed_dim" in obj and "embed_size" not in obj:
            obj["embed_size"] = obj["embed_dim"]
        legacy = obj.get("head_options")
        if isinstance(legacy, dict) and "extra_head_options" not in obj:
            renamed = {"normaliser": "sampled_logp"}
            extra = {}
            for key, value in legacy.items():
                name = renamed.get(key, key)
                if name in ("temperature", "negatives", "proposal", "sampled_logp"):
                    obj.setdefault(name, value)
                else:
                    extra[key] = value
            obj["extra_head_options"] = extra
        return cls(**_known(cls, obj))


@dataclass(frozen=True)
class TrainConfig:
    """How the agent is trained (DESIGN §3, §7)."""

    epochs: int = setting(15, "Passes over the train transitions (at most: see --val-size).", ge=0)
    batch_size: int = setting(
        800, "Transitions per step (the global batch under torchrun; reference 128).", ge=1, resume_locked=True
    )
    lr: float = setting(3e-3, "Adam learning rate of π and the encoder (reference 1e-5).", gt=0, resume_locked=True)
    behavior_lr: float | None = setting(
        None, "Adam learning rate of β̂ (none: the same as --lr).", gt=0, resume_locked=True
    )
    weight_decay: float = setting(0.0, "Adam weight decay.", ge=0, resume_locked=True)
    correction: Correction = setting(
        "none",
        "none: no correction; is: importance weight min(π/β̂, cap); topk: weight × λ_K = K(1−π)^(K−1).",
        resume_locked=True,
    )
    k: int = setting(10, "K of the top-K correction (the number of recommendations).", ge=1, resume_locked=True)
    cap: float | None = setting(
        math.exp(3.0),
        "Importance-weight cap c in min(π/β̂, c) (the paper's production cap e^3).",
        none_flag="--no-cap",
        gt=0,
        resume_locked=True,
    )
    weight_norm: Literal["none", "batch_mean"] = setting(
        "batch_mean",
        "batch_mean: divide each π row's coefficient w·λ_K·R by the batch mean of |w·λ_K·R| (the same direction; a "
        "step size independent of the return scale and of the correction).",
        resume_locked=True,
    )
    snis: bool = setting(
        False, "Divide the importance weights by their batch mean (self-normalised IS).", resume_locked=True
    )
    weights: Literal["reward", "return"] = setting(
        "reward",
        "π's REINFORCE weight R: the row's own reward r_t, or the discounted in-session return R_t (the paper's; "
        "--gamma sets its γ).",
        resume_locked=True,
    )
    policy_ce: float = setting(
        1.0,
        "Weight of a cross-entropy term on π's own head over every logged row, next to the REINFORCE term "
        "(an SQN/SAC-style anchor; 0: π learns from the corrected REINFORCE term alone, as in the paper).",
        ge=0,
        resume_locked=True,
    )
    gamma: float | None = setting(
        None,
        "Discount of the returns (none: the dataset's, from prepare; 0.99 by default).",
        ge=0,
        le=1,
        resume_locked=True,
    )
    supervised_weight: float = setting(
        1.0, "Weight of the supervised head's cross-entropy in the encoder's loss (with --supervised-head).", ge=0
    )
    propensity: Literal["estimated", "logged"] = setting(
        "estimated",
        "The importance weight's β: estimated (the β̂ head) or logged (the dataset's propensity column; β̂ is "
        "still trained and its error against the logged values reported).",
        resume_locked=True,
    )
    logged_propensity: Literal["inclusion", "draw"] = setting(
        "inclusion",
        "What the dataset's propensity column holds: the probability that the item was in the slate "
        "(inclusion, α = 1 − (1 − β)^K; converted to the per-draw β with --k) or the per-draw β itself.",
        resume_locked=True,
    )
    bias_init: Literal["popularity", "zero"] = setting(
        "popularity",
        "Initial output biases of π and β̂: the log train count of each item (both heads start as popularity) or 0.",
        resume_locked=True,
    )
    batching: Literal["auto", "rows", "windows"] = setting(
        "auto",
        "rows: each training row encodes its own window of --hist-num tokens; windows: one encoder pass per window "
        "of a user's tokens gives every row's state (SASRec-style, ~hist-num times less work; --batch-size then "
        "counts rows per step approximately); auto: windows for every encoder but concat.",
        resume_locked=True,
    )
    val_size: float = setting(
        0.1,
        "Share of each user's last train events held out for validation (users with more than 3 train events): "
        "they stay in histories but are never trained on; after each epoch π's ndcg@K on those with a positive reward "
        "is printed next to popularity's, and the best epoch's weights are kept. 0: no validation.",
        ge=0,
        lt=1,
        resume_locked=True,
    )
    min_action_count: int = setting(
        2,
        "Rows whose item is the action of fewer than N train rows (validation not counted) train π and β̂ but not "
        "the encoder: the state is not fitted to one-off items, while the heads (and the re-engagement biases) "
        "still learn from every logged action. 1: every row trains the encoder.",
        ge=1,
        resume_locked=True,
    )
    patience: int = setting(
        2,
        "With --val-size: stop after this many epochs without a better validation ndcg@K (0: never stop early).",
        ge=0,
    )
    min_epochs: int = setting(
        6, "With --val-size: never stop early before this many epochs (validation can plateau before it learns).", ge=0
    )
    seed: int = setting(
        0, "Seed of initialisation and of each epoch's permutation (seeded by (seed, epoch)).", ge=0, resume_locked=True
    )
    device: str = setting("auto", "auto | cpu | cuda | cuda:N.")
    bf16: bool = setting(True, "bf16 autocast on CUDA (ignored on CPU); log-probs for w and λ_K stay fp32.")
    log_every: int = setting(50, "Log metrics every N steps.", ge=1)
    checkpoint_every: int = setting(0, "Write a checkpoint every N steps (0: at each epoch end only).", ge=0)
    max_steps: int | None = setting(
        None, "Stop after N optimizer steps in total (a checkpoint is written there).", ge=0
    )
    compile: bool = setting(
        False, "torch.compile the step's forward (the first step compiles; measured no faster on a 2-core CPU)."
    )

    def __post_init__(self) -> None:
        check_settings(self)
        check_device_name(self.device)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TrainConfig:
        obj = dict(_section(obj, "train"))
        # Settings added later default to how older model directories were trained.
        for key, legacy_value in (
            ("weights", "return"),
            ("weight_norm", "none"),
            ("policy_ce", 0.0),
            ("val_size", 0.0),
            ("batching", "rows"),
            ("min_action_count", 1),
        ):
            obj.setdefault(key, legacy_value)
        return cls(**_known(cls, obj))


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "seed": {
        # The reference notebook's agent (DESIGN, "Reference settings"): one epoch at lr 1e-5 on frozen
        # pretrained embeddings, concat encoder over 10 items, hidden 64, K 10, batch 128, weight clip 2.0.
        "agent": {
            "encoder": "concat",
            "hist_num": 10,
            "hidden": 64,
            "embed_size": 32,
            "trainable_embeddings": False,
            "softmax": "full",
            "history": "all",
            "feedback_tokens": False,
            "user_embedding": True,
            "supervised_head": False,
            "repeat_bias": False,
            "dropout": 0.0,
        },
        "train": {
            "epochs": 1,
            "batch_size": 128,
            "lr": 1e-5,
            "behavior_lr": None,
            "weight_decay": 0.0,
            "correction": "topk",
            "k": 10,
            "cap": 2.0,
            "gamma": 0.99,
            "propensity": "estimated",
            "weights": "return",
            "weight_norm": "none",
            "policy_ce": 0.0,
            "val_size": 0.0,
            "batching": "rows",
            "min_action_count": 1,
        },
        # The reference DSSM as the seed notebook runs it: 4 epochs at lr 1e-3, cosine loss, one negative.
        "pretrain": {"epochs": 4, "lr": 1e-3, "batch_size": 2048, "loss": "cosine", "neg_items": 1, "embed_size": 32},
    }
}
"""Named settings (``--preset NAME``), applied over the defaults and under config files and flags."""


def _section(obj: Any, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ArtifactError(f"config.json: the {what!r} section is not an object")
    return obj


def _known(cls: type, obj: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in obj.items() if k in names}


def resume_locked_settings() -> tuple[str, ...]:
    """Train settings that must not change between an interrupted run and its ``--resume``."""
    from topkrec.config import setting_fields

    return tuple(f.name for f, spec in setting_fields(TrainConfig) if spec.resume_locked)
