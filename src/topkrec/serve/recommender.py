"""The serving API: load a model directory, recommend raw item ids for raw user ids (DESIGN §6).

::

    rec = Recommender.load("model/")
    r = rec.recommend(user="1001", k=10)                       # deterministic top-K
    r = rec.recommend(history=["42", "7"], explore=True, seed=0)  # unknown user, Boltzmann exploration
    r.items, r.scores, r.propensities

How a request becomes a state (the ``hist_num`` items before "now", oldest first):

- a known user's stored history (``user_histories.safetensors``, every event of the dataset the model
  was trained on) followed by the given ``history`` (taken as newer events); the last ``hist_num``
  known items form the state;
- an unknown user (or none) is served from the given history alone, with a zero user embedding;
- history items not in the model's catalogue are ignored and reported in ``unknown_history_items``.

``exclude_seen`` removes every item of the stored and given history from the candidates. Scores are
the policy's logits (log π up to a per-user constant). Propensities are the probability that the
serving procedure shows the item: 1 for deterministic top-K, the exact inclusion probability under
exploration (``topkrec.serve.exploration``).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from topkrec.data.histories import HISTORIES_FILE, UserHistories
from topkrec.errors import ArtifactError, TopkrecError
from topkrec.serve.exploration import ExplorationConfig, explore_candidates

if TYPE_CHECKING:
    import torch

    from topkrec.policy.artifact import LoadedAgent
    from topkrec.serve.sessions import Session, Sessions

logger = logging.getLogger(__name__)

RawId = str | int
MAX_K = 1000
MAX_M = 10_000
# Rows scored at once × n_items. Measured on 2 CPU cores with 100 000 items: 64 rows per chunk (25 MB of
# logits) costs 0.38 CPU-ms per user, against 0.50 at 256 rows (the buffer falls out of cache) and 0.67 at 16.
_LOGIT_ELEMENTS = 6_400_000
# Deterministic top-K on CPU: each row's logits are cut into runs of this many items; only the k + 1 runs
# with the largest maxima (plus the short tail) can hold the k + 1 best items, so torch.topk runs on those
# ~(k + 1)·128 values instead of all n_items (see _topk_by_runs; measured in docs/serve.md).
_RUN = 128
# With a full-softmax head on CPU, deterministic top-K computes a chunk's logits _ITEM_BLOCK items at a
# time (each block's weights stay in cache for all the chunk's rows, its run maxima are taken while the
# block is in cache) over chunks of up to _BLOCKED_ELEMENTS logits (256 rows at 100 000 items).
_ITEM_BLOCK = 2048
_BLOCKED_ELEMENTS = 25_600_000
# Below this many rows the per-block calls cost more than they save (1 row: 3.6–4.0 ms against 2.3–2.5 ms
# for one whole-row addmm; 16 rows about even; 64 rows 0.34–0.37 against 0.38–0.46 ms per user).
_BLOCKED_MIN_ROWS = 32


__all__ = ["MAX_K", "MAX_M", "Recommendation", "RecommendOptions", "Recommender", "recommend_in_chunks"]


@dataclass(frozen=True)
class RecommendOptions:
    """Keyword options of ``Recommender.recommend`` (validated)."""

    k: int = 10
    exclude_seen: bool = True
    explore: bool = False
    m: int = 200
    k_prime: int | None = None
    temperature: float = 1.0
    seed: int | None = None

    def validate(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= MAX_K:
            raise TopkrecError(f"k must be an integer in 1..{MAX_K}, got {self.k!r}")
        if not self.explore:
            return
        if isinstance(self.m, bool) or not isinstance(self.m, int) or not 1 <= self.m <= MAX_M:
            raise TopkrecError(f"m must be an integer in 1..{MAX_M}, got {self.m!r}")
        if self.m < self.k:
            raise TopkrecError(f"m (candidate pool, {self.m}) must be at least k ({self.k})")
        if self.k_prime is not None and (
            isinstance(self.k_prime, bool) or not isinstance(self.k_prime, int) or not 0 <= self.k_prime <= self.k
        ):
            raise TopkrecError(f"k_prime must be an integer in 0..k ({self.k}), got {self.k_prime!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not (math.isfinite(t) and t > 0):
            raise TopkrecError(f"temperature must be a positive finite number, got {t!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise TopkrecError(f"seed must be a non-negative integer, got {self.seed!r}")


@dataclass(frozen=True)
class Recommendation:
    """What is shown to one user: raw item ids, their scores and serving propensities."""

    items: list[str]
    scores: list[float]
    propensities: list[float]
    user_known: bool
    unknown_history_items: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON answer of ``POST /recommend`` (DESIGN §9) plus the request diagnostics."""
        return {
            "items": [
                {"item": i, "score": s, "propensity": p}
                for i, s, p in zip(self.items, self.scores, self.propensities, strict=True)
            ],
            "user_known": self.user_known,
            "unknown_history_items": self.unknown_history_items,
        }


@dataclass
class _Prepared:
    """A batch of requests turned into model inputs."""

    user: np.ndarray  # (B,) int64, −1 = unknown user
    history: np.ndarray  # (B, H) int64, oldest first, left-padded with the pad index
    history_event: np.ndarray  # (B, H) int64 event-type codes of the history, padded with the event pad code
    seen_rows: np.ndarray  # (S,) int64 row of each seen item
    seen_items: np.ndarray  # (S,) int64 seen item index
    user_known: list[bool]
    unknown_items: list[list[str]]
    allowed: np.ndarray | None = None  # (n_items,) bool: the candidate set (None: every item)


class Recommender:
    """Serves a trained agent's policy π (never the behaviour head β̂)."""

    def __init__(self, agent: LoadedAgent, histories: UserHistories | None = None) -> None:
        self.agent = agent
        self.config = agent.config
        self.n_items = int(agent.config.n_items)
        self.hist_num = int(agent.config.hist_num)
        self.pad_index = int(agent.config.pad_index)
        self.histories = histories if histories is not None else UserHistories.empty(agent.config.n_users)
        self.has_histories = histories is not None
        cfg = agent.config
        self.event_index: dict[str, int] = {name: i for i, name in enumerate(cfg.event_types)}
        self.event_pad = cfg.event_pad
        default = agent.raw_config.get("data", {}).get("default_event")
        # A history given without event types: its items count as the commonest type of the training rows.
        self.default_event = self.event_index.get(str(default), self.event_pad)
        if self.default_event == self.event_pad and cfg.history_events:
            # no recorded commonest type (no history rows at training): the first type that enters the state,
            # so that a history given without events is never silently dropped
            self.default_event = self.event_index.get(str(cfg.history_events[0]), self.event_pad)
        in_history = np.ones(self.event_pad + 1, dtype=bool)
        if cfg.history_events:  # feedback of the other types (e.g. skipped impressions) never enters the state
            in_history[:] = False
            in_history[[self.event_index[name] for name in cfg.history_events if name in self.event_index]] = True
        self._in_history = in_history
        stored = self.histories.events
        self._stored_events = (
            stored if stored is not None else np.full(self.histories.items.shape, self.event_pad, dtype=np.int32)
        )
        self.item_raw: list[str] = [str(x) for x in agent.item_raw]
        self.user_index: dict[str, int] = {str(raw): i for i, raw in enumerate(agent.user_raw)}
        self.item_index: dict[str, int] = {raw: i for i, raw in enumerate(self.item_raw)}
        self._item_raw_array = np.asarray(self.item_raw, dtype=object)
        self.device = agent.device
        # Per-thread scratch for the blocked scoring path (reused: a fresh 100 MB tensor per chunk costs
        # its page faults every time); recommend_in_chunks calls recommend_batch from several threads.
        self._scratch = threading.local()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, model_dir: Path | str, device: str = "auto", dataset: Path | str | None = None) -> Recommender:
        """Load a model directory (safetensors + JSON, no pickle).

        Known users' histories come from ``user_histories.safetensors`` in the model dir or, when
        ``dataset`` names a dataset directory, are built from its events. Without either, known users
        are served from their user embedding and the given history only (a warning says so).
        """
        from topkrec.device import resolve_device
        from topkrec.policy.artifact import load_agent

        d = Path(model_dir)
        agent = load_agent(d, resolve_device(device))
        cfg = agent.config
        histories: UserHistories | None = None
        if dataset is not None:
            from topkrec.data.dataset import Dataset

            ds = Dataset.load(Path(dataset))
            if ds.n_users != cfg.n_users or ds.n_items != cfg.n_items:
                raise ArtifactError(
                    f"dataset {dataset} has {ds.n_users} users / {ds.n_items} items, the model {d} "
                    f"{cfg.n_users} / {cfg.n_items}; pass the dataset the model was trained on"
                )
            saved = agent.raw_config.get("data", {}).get("fingerprint")
            if saved is not None:  # same check as evaluate: same sizes but other ids would serve wrong histories
                from topkrec.embeddings import dataset_fingerprint

                if saved != dataset_fingerprint(ds):
                    raise ArtifactError(
                        f"dataset {dataset} is not the one the model {d} was trained on (its id maps differ); "
                        "pass the dataset the model was trained on"
                    )
            histories = UserHistories.from_dataset(ds, cfg.history)
        elif (d / HISTORIES_FILE).exists():
            histories = UserHistories.load(d / HISTORIES_FILE, cfg.n_users, cfg.n_items)
        else:
            logger.warning(
                "%s has no %s: known users are served without their stored history and seen items "
                "are excluded only from the given history (pass dataset= / --dataset to add them)",
                d,
                HISTORIES_FILE,
            )
        return cls(agent, histories)

    def info(self) -> dict[str, Any]:
        """A summary of the served model (``GET /model``)."""
        cfg = self.config
        raw = self.agent.raw_config
        return {
            "model_dir": str(self.agent.directory),
            "library_version": raw.get("library_version"),
            "n_users": cfg.n_users,
            "n_items": cfg.n_items,
            "hist_num": cfg.hist_num,
            "encoder": cfg.encoder,
            "softmax": cfg.softmax,
            "embed_size": cfg.embed_size,
            "embed_dim": cfg.embed_size,  # the name before settings were declared once; kept for clients
            "hidden": cfg.hidden,
            "correction": self.agent.train_config.correction,
            "train_k": self.agent.train_config.k,
            "device": str(self.device),
            "has_user_histories": self.has_histories,
            "event_types": list(cfg.event_types),
            "history": cfg.history,
            "user_embedding": cfg.user_embedding,
            "max_k": MAX_K,
            "max_m": MAX_M,
        }

    # ------------------------------------------------------------------ API
    def session(self, user: RawId | None = None) -> Session:
        """A step-wise session (``topkrec.serve.sessions``): ``observe(item, event)``, then ``recommend(k)``."""
        from topkrec.serve.sessions import Session, Sessions

        return Session(Sessions.start(self, [user]))

    def sessions(self, users: Sequence[RawId | None]) -> Sessions:
        """Many running sessions scored together (``topkrec.serve.sessions.Sessions``)."""
        from topkrec.serve.sessions import Sessions

        return Sessions.start(self, users)

    def sessions_for_indices(self, user_index: np.ndarray, stored_history: bool = True) -> Sessions:
        """``sessions`` for model user indices (−1: unknown), as simulators that speak the model's ids use it."""
        from topkrec.serve.sessions import Sessions

        return Sessions(self, np.asarray(user_index, dtype=np.int64), stored_history)

    def recommend(
        self,
        user: RawId | None = None,
        history: Sequence[RawId] | None = None,
        k: int = 10,
        *,
        history_events: Sequence[str] | None = None,
        candidates: Sequence[RawId] | None = None,
        exclude_seen: bool = True,
        explore: bool = False,
        m: int = 200,
        k_prime: int | None = None,
        temperature: float = 1.0,
        seed: int | None = None,
    ) -> Recommendation:
        """Recommend ``k`` raw item ids for one user (see the module docstring).

        ``history_events`` names what the user did with each ``history`` item (one of the model's event types,
        ``info()["event_types"]``); without it the items count as the commonest event type of training.
        """
        return self.recommend_batch(
            [user],
            [history],
            k=k,
            history_events=None if history_events is None else [history_events],
            candidates=candidates,
            exclude_seen=exclude_seen,
            explore=explore,
            m=m,
            k_prime=k_prime,
            temperature=temperature,
            seed=seed,
        )[0]

    def recommend_batch(
        self,
        users: Sequence[RawId | None] | None = None,
        histories: Sequence[Sequence[RawId] | None] | None = None,
        k: int = 10,
        *,
        history_events: Sequence[Sequence[str] | None] | None = None,
        candidates: Sequence[RawId] | None = None,
        exclude_seen: bool = True,
        explore: bool = False,
        m: int = 200,
        k_prime: int | None = None,
        temperature: float = 1.0,
        seed: int | None = None,
    ) -> list[Recommendation]:
        """Recommend for many users at once; ``users`` and ``histories`` are aligned (either may be None).

        With ``explore`` and a ``seed``, one generator drives the whole batch, so the same batch with
        the same seed gives the same slates.
        """
        options = RecommendOptions(k, exclude_seen, explore, m, k_prime, temperature, seed)
        options.validate()
        n_rows = _batch_length(users, histories)
        user_list: Sequence[RawId | None] = users if users is not None else [None] * n_rows
        hist_list: Sequence[Sequence[RawId] | None] = histories if histories is not None else [None] * n_rows
        if history_events is not None and len(history_events) != n_rows:
            raise TopkrecError(f"history_events has {len(history_events)} rows for {n_rows} requests")
        prepared = self._prepare(user_list, hist_list, exclude_seen, history_events, candidates)
        return self._recommend_prepared(prepared, options, n_rows)

    def _recommend_prepared(self, prepared: _Prepared, options: RecommendOptions, n_rows: int) -> list[Recommendation]:
        k, explore, seed = options.k, options.explore, options.seed
        rng = np.random.default_rng(seed) if explore else None
        out: list[Recommendation] = []
        rows_per_chunk = max(1, min(1024, _LOGIT_ELEMENTS // max(self.n_items, 1)))
        if not explore and self._blocked_scoring_applies(k, n_rows, prepared):
            rows_per_chunk = max(1, min(256, _BLOCKED_ELEMENTS // self.n_items))
        for start in range(0, n_rows, rows_per_chunk):
            stop = min(start + rows_per_chunk, n_rows)
            items, scores, props, valid = self._slates(prepared, start, stop, options, rng)
            # Valid entries are a prefix of each row (sorted top-K, then the drawn ones), so slice lists.
            n_valid = valid.sum(axis=1).tolist()
            raw = self._item_raw_array[np.where(valid, items, 0)].tolist()
            score_rows, prop_rows = scores.tolist(), props.tolist()
            for r in range(stop - start):
                n = n_valid[r]
                out.append(
                    Recommendation(
                        items=raw[r][:n],
                        scores=score_rows[r][:n],
                        propensities=prop_rows[r][:n],
                        user_known=prepared.user_known[start + r],
                        unknown_history_items=prepared.unknown_items[start + r],
                    )
                )
        return out

    # ------------------------------------------------------------------ internals
    def _prepare(
        self,
        users: Sequence[RawId | None],
        histories: Sequence[Sequence[RawId] | None],
        exclude_seen: bool,
        history_events: Sequence[Sequence[str] | None] | None = None,
        candidates: Sequence[RawId] | None = None,
    ) -> _Prepared:
        """Model inputs for a batch: vectorised over the stored histories, a Python pass only over the
        rows that bring their own history (raw ids must be looked up one by one)."""
        n_rows = len(users)
        user_index = self.user_index
        user_idx = np.fromiter(
            (-1 if u is None else user_index.get(str(u), -1) for u in users), dtype=np.int64, count=n_rows
        )
        state_hist, state_event, valid = self.stored_windows(user_idx)
        seen_rows: list[np.ndarray] = []
        seen_items: list[np.ndarray] = []
        if exclude_seen:
            rows, items = self.stored_seen(user_idx)
            seen_rows.append(rows)
            seen_items.append(items)
        unknown_items: list[list[str]] = [[] for _ in range(n_rows)]
        item_index = self.item_index
        for r, raw_hist in enumerate(histories):
            if not raw_hist:
                continue
            if isinstance(raw_hist, str | bytes):
                raise TopkrecError(f"history must be a list of item ids, not the string {str(raw_hist)[:40]!r}")
            raw_events = history_events[r] if history_events is not None else None
            if raw_events is not None and len(raw_events) != len(raw_hist):
                raise TopkrecError(
                    f"history_events has {len(raw_events)} entries for a history of {len(raw_hist)} items"
                )
            given_items = np.empty(len(raw_hist), dtype=np.int64)
            for j, raw_item in enumerate(raw_hist):
                i = item_index.get(str(raw_item))
                if i is None:  # as in training, an item outside the catalogue never enters the state
                    unknown_items[r].append(str(raw_item))
                    i = self.pad_index
                given_items[j] = i
            if raw_events is None:
                given_events = np.full(len(raw_hist), self.default_event, dtype=np.int64)
            else:
                given_events = np.fromiter((self._event_code(e) for e in raw_events), dtype=np.int64)
            keep = self.enters_history(given_events) & (given_items != self.pad_index)
            # The given history comes after the stored one (it is newer).
            state_hist[r], state_event[r], valid[r] = push_tokens(
                state_hist[r],
                state_event[r],
                valid[r],
                given_items[keep],
                given_events[keep],
                self.pad_index,
                self.event_pad,
            )
            if exclude_seen:
                known_items = given_items[given_items != self.pad_index]
                seen_rows.append(np.full(known_items.size, r, dtype=np.int64))
                seen_items.append(known_items)
        return _Prepared(
            user=user_idx,
            history=state_hist,
            history_event=state_event,
            seen_rows=np.concatenate(seen_rows) if seen_rows else np.zeros(0, dtype=np.int64),
            seen_items=np.concatenate(seen_items) if seen_items else np.zeros(0, dtype=np.int64),
            user_known=(user_idx >= 0).tolist(),
            unknown_items=unknown_items,
            allowed=self.candidate_mask(candidates),
        )

    def stored_windows(self, user_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(items, event codes, valid) (B, H) of the last ``hist_num`` stored tokens of each user index (−1 = none),
        left-padded: the state training builds for the user's next event."""
        hist_num, n_rows = self.hist_num, len(user_idx)
        offsets, stored_items = self.histories.offsets, self.histories.items
        known = user_idx >= 0
        safe = np.maximum(user_idx, 0)
        starts = np.where(known, offsets[safe], 0)
        ends = np.where(known, offsets[safe + 1], 0)
        state_hist = np.full((n_rows, hist_num), self.pad_index, dtype=np.int64)
        state_event = np.full((n_rows, hist_num), self.event_pad, dtype=np.int64)
        valid = np.zeros((n_rows, hist_num), dtype=bool)
        if stored_items.size:
            pos = ends[:, None] - hist_num + np.arange(hist_num)[None, :]
            valid = pos >= starts[:, None]
            at = np.clip(pos, 0, stored_items.size - 1)
            state_hist = np.where(valid, stored_items[at], self.pad_index).astype(np.int64)
            state_event = np.where(valid, self._stored_events[at], self.event_pad).astype(np.int64)
        return state_hist, state_event, valid

    def stored_seen(self, user_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, item) pairs of every stored catalogue item of each row's user (for ``exclude_seen``)."""
        offsets, stored_items = self.histories.offsets, self.histories.items
        known = user_idx >= 0
        safe = np.maximum(user_idx, 0)
        starts = np.where(known, offsets[safe], 0)
        lengths = np.where(known, offsets[safe + 1], 0) - starts
        total = int(lengths.sum())
        row_of = np.repeat(np.arange(len(user_idx), dtype=np.int64), lengths)
        first = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        items = stored_items[first + np.arange(total)].astype(np.int64) if total else np.zeros(0, dtype=np.int64)
        real = items != self.pad_index
        return row_of[real], items[real]

    def enters_history(self, events: np.ndarray) -> np.ndarray:
        """Whether feedback of these event codes enters the state (the model's ``history`` setting)."""
        return self._in_history[np.clip(events, 0, self.event_pad)]

    def candidate_mask(self, candidates: Sequence[RawId] | None) -> np.ndarray | None:
        """(n_items,) bool of the items that may be shown (None: every item); unknown ids are skipped."""
        if candidates is None:
            return None
        if isinstance(candidates, str | bytes):
            raise TopkrecError(f"candidates must be a list of item ids, not the string {str(candidates)[:40]!r}")
        index = [self.item_index.get(str(c)) for c in candidates]
        known = np.array([i for i in index if i is not None], dtype=np.int64)
        if known.size == 0:
            raise TopkrecError(
                f"none of the {len(index)} candidates is in the model's catalogue; pass item ids the model knows"
            )
        mask = np.zeros(self.n_items, dtype=bool)
        mask[known] = True
        return mask

    def _event_code(self, name: str) -> int:
        code = self.event_index.get(str(name))
        if code is None:
            known = ", ".join(self.event_index) or "none (the model has no event types)"
            raise TopkrecError(f"unknown history event {name!r}; the model's event types are: {known}")
        return code

    def logits(self, user: np.ndarray, history: np.ndarray, history_event: np.ndarray | None = None) -> torch.Tensor:
        """(B, n_items) float32 policy logits for user indices (B,) (−1 = unknown), histories (B, H) and their
        event-type codes (B, H) (None: the commonest type of training for every real item)."""
        import torch

        from topkrec.heads import FullSoftmaxHead

        if history_event is None:
            history_event = np.where(history != self.pad_index, self.default_event, self.event_pad)
        with torch.inference_mode():
            u = torch.as_tensor(user, dtype=torch.long, device=self.device)
            h = torch.as_tensor(history, dtype=torch.long, device=self.device)
            e = torch.as_tensor(history_event, dtype=torch.long, device=self.device)
            state = self.agent.module.encode(u, h, e)
            head = self.agent.module.policy_head
            if getattr(head, "repeat", None) is not None:  # re-engagement biases on the history's items
                return self.agent.module.head_logits("policy_head", state, h, e).float()
            if isinstance(head, FullSoftmaxHead):
                # Same numbers as head.logits, without a second full pass for a temperature of 1.
                logits = torch.addmm(head.bias, state, head.weight.t())
                if head.temperature != 1.0:
                    logits.div_(head.temperature)
                return logits.float()
            return head.logits(state).float()

    def _slates(
        self,
        prep: _Prepared,
        start: int,
        stop: int,
        options: RecommendOptions,
        rng: np.random.Generator | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Items (B, K) int64, scores, propensities (B, K) float64 and validity (B, K) for rows start:stop."""
        import torch

        with torch.inference_mode():
            return self._slates_no_grad(prep, start, stop, options, rng)

    def _slates_no_grad(
        self,
        prep: _Prepared,
        start: int,
        stop: int,
        options: RecommendOptions,
        rng: np.random.Generator | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        import torch

        k = options.k
        if not options.explore:
            if self._blocked_scoring_applies(k, stop - start, prep):
                logits, run_max = self._masked_logits_blocked(prep, start, stop)
                top = _topk_by_runs(logits, k, run_max)
            else:
                logits = self._masked_logits(prep, start, stop)
                top = _topk_by_runs(logits, k) if logits.device.type == "cpu" else None
            vals, idx = top if top is not None else torch.topk(logits, min(k, self.n_items), dim=1)
            scores = vals.cpu().numpy().astype(np.float64)
            items = idx.cpu().numpy().astype(np.int64)
            valid = np.isfinite(scores)
            if items.shape[1] < k:  # catalogue smaller than k: pad the columns
                pad = k - items.shape[1]
                items = np.pad(items, ((0, 0), (0, pad)), constant_values=-1)
                scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
                valid = np.pad(valid, ((0, 0), (0, pad)), constant_values=False)
            return items, scores, valid.astype(np.float64), valid
        vals, idx = torch.topk(self._masked_logits(prep, start, stop), min(options.m, self.n_items), dim=1)
        cfg = ExplorationConfig(k=k, m=options.m, k_prime=options.k_prime, temperature=float(options.temperature))
        assert rng is not None
        slates = explore_candidates(idx.cpu().numpy(), vals.cpu().numpy(), cfg, rng)
        return slates.items, slates.scores, slates.propensities, slates.valid

    def _masked_logits(self, prep: _Prepared, start: int, stop: int) -> torch.Tensor:
        """(B, n_items) logits of rows start:stop with every seen item at −inf."""
        import torch

        logits = self.logits(prep.user[start:stop], prep.history[start:stop], prep.history_event[start:stop])
        assert logits.shape == (stop - start, self.n_items)
        sel = (prep.seen_rows >= start) & (prep.seen_rows < stop)
        if sel.any():
            r = torch.as_tensor(prep.seen_rows[sel] - start, device=logits.device)
            c = torch.as_tensor(prep.seen_items[sel], device=logits.device)
            logits[r, c] = -math.inf
        if prep.allowed is not None:
            logits[:, torch.as_tensor(~prep.allowed, device=logits.device)] = -math.inf
        return logits

    def _blocked_scoring_applies(self, k: int, rows: int, prep: _Prepared) -> bool:
        from topkrec.heads import FullSoftmaxHead

        return (
            prep.allowed is None
            and rows >= _BLOCKED_MIN_ROWS
            and self.device.type == "cpu"
            and isinstance(self.agent.module.policy_head, FullSoftmaxHead)
            and self.n_items // _RUN >= 8 * (k + 1)
        )

    def _masked_logits_blocked(self, prep: _Prepared, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``_masked_logits`` (the same ``addmm`` numbers, written one block of ``_ITEM_BLOCK`` columns at
        a time) and the maxima of its runs of ``_RUN`` items, (B, n_items // _RUN). The logits live in
        this thread's scratch buffer: valid until the thread's next call."""
        import torch

        from topkrec.heads import FullSoftmaxHead

        with torch.inference_mode():
            u = torch.as_tensor(prep.user[start:stop], dtype=torch.long, device=self.device)
            h = torch.as_tensor(prep.history[start:stop], dtype=torch.long, device=self.device)
            ev = torch.as_tensor(prep.history_event[start:stop], dtype=torch.long, device=self.device)
            state = self.agent.module.encode(u, h, ev)
            head = self.agent.module.policy_head
            assert isinstance(head, FullSoftmaxHead)
            weight_t, bias, temperature = head.weight.t(), head.bias, float(head.temperature)
            rows, n = stop - start, self.n_items
            flat: torch.Tensor | None = getattr(self._scratch, "logits", None)
            if flat is None or flat.numel() < rows * n:
                flat = self._scratch.logits = torch.empty(rows * n, dtype=torch.float32, device=self.device)
            logits = flat[: rows * n].view(rows, n)
            run_max = torch.empty(rows, n // _RUN, dtype=torch.float32, device=self.device)
            sel = (prep.seen_rows >= start) & (prep.seen_rows < stop)
            seen_r, seen_c = prep.seen_rows[sel] - start, prep.seen_items[sel]
            table = getattr(head, "repeat", None)
            if table is not None:  # re-engagement biases of the history items, applied in their block
                from topkrec.policy.repeat import repeat_biases

                cfg = self.agent.module.config
                rep = repeat_biases(table, h, ev, cfg.pad_index, cfg.event_pad)
                rep_rows = torch.arange(rows, device=self.device)[:, None].expand_as(h)
                rep_real = h != cfg.pad_index
                replace_logit = cfg.repeat_mode == "replace"
            for j in range(0, n, _ITEM_BLOCK):
                e = min(j + _ITEM_BLOCK, n)
                block = logits[:, j:e]
                torch.addmm(bias[j:e], state, weight_t[:, j:e], out=block)
                if temperature != 1.0:
                    block.div_(temperature)
                if table is not None:
                    here = rep_real & (h >= j) & (h < e)
                    if bool(here.any()):
                        where = (rep_rows[here], h[here] - j)
                        if replace_logit:  # the item's R alone: clear its logit, then sum its positions' biases
                            block.index_put_(where, torch.zeros((), dtype=block.dtype, device=block.device))
                        block.index_put_(where, rep[here].float(), accumulate=True)
                in_block = (seen_c >= j) & (seen_c < e)
                if in_block.any():
                    block[torch.as_tensor(seen_r[in_block]), torch.as_tensor(seen_c[in_block] - j)] = -math.inf
                n_full = (e - j) // _RUN
                if n_full:
                    runs = block.as_strided((rows, n_full, _RUN), (n, _RUN, 1))
                    torch.amax(runs, dim=2, out=run_max[:, j // _RUN : j // _RUN + n_full])
            return logits, run_max


def _topk_by_runs(
    logits: torch.Tensor, k: int, run_max: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``torch.topk(logits, k, dim=1)`` (values, indices) for a (B, n) CPU matrix, or None to say "call
    torch.topk": the catalogue is small, or some row's answer is not unique (a tie, NaN or +inf).

    Each row is cut into runs of ``_RUN`` items (the last n mod ``_RUN`` items form a tail). Let t be
    the (k + 1)-th largest run maximum: every item outside the k + 1 chosen runs and the tail is ≤ t,
    and the chosen runs hold at least k + 1 items ≥ t, so the k + 1 largest values of the row are the
    k + 1 largest of the candidates (chosen runs + tail). When those k + 1 values are strictly
    decreasing (−inf ties excepted: those items are never served), the top-K items and their order are
    unique, so this equals ``torch.topk`` on the full row whatever its tie-breaking; otherwise the
    caller runs ``torch.topk`` on the same matrix. Values are the same floats (no arithmetic is done).
    ``run_max`` may bring the run maxima already computed (``_masked_logits_blocked``).
    """
    import torch

    rows, n = logits.shape
    n_runs = n // _RUN
    k1 = k + 1
    if n_runs < 8 * k1 or not logits.is_contiguous():
        return None
    runs = logits.as_strided((rows, n_runs, _RUN), (n, _RUN, 1))
    if run_max is None:
        run_max = runs.amax(dim=2)  # (B, n_runs)
    chosen = torch.topk(run_max, k1, dim=1).indices  # (B, k + 1)
    offsets = torch.arange(_RUN, dtype=torch.long)
    cand_vals = torch.gather(runs, 1, chosen[:, :, None].expand(rows, k1, _RUN)).reshape(rows, k1 * _RUN)
    cand_idx = (chosen[:, :, None] * _RUN + offsets).reshape(rows, k1 * _RUN)
    tail = n_runs * _RUN
    if tail < n:
        cand_vals = torch.cat([cand_vals, logits[:, tail:]], dim=1)
        cand_idx = torch.cat([cand_idx, torch.arange(tail, n, dtype=torch.long).expand(rows, n - tail)], dim=1)
    top_vals, pos = torch.topk(cand_vals, k1, dim=1)
    upper, lower = top_vals[:, :-1], top_vals[:, 1:]
    if bool(((upper == lower) & (upper != -math.inf)).any()) or bool(
        (torch.isnan(top_vals) | (top_vals == math.inf)).any()
    ):
        return None
    return top_vals[:, :k], torch.gather(cand_idx, 1, pos)[:, :k]


def _batch_length(users: Sequence[Any] | None, histories: Sequence[Any] | None) -> int:
    if isinstance(users, str | bytes) or isinstance(histories, str | bytes):
        raise TopkrecError("users and histories must be lists (one entry per user), not a string")
    if users is None and histories is None:
        raise TopkrecError("give users, histories or both")
    if users is not None and histories is not None and len(users) != len(histories):
        raise TopkrecError(f"users ({len(users)}) and histories ({len(histories)}) must have the same length")
    return len(users) if users is not None else len(histories)  # type: ignore[arg-type]


def recommend_in_chunks(
    recommender: Recommender,
    users: Sequence[RawId | None] | None,
    histories: Sequence[Sequence[RawId] | None] | None = None,
    chunk_size: int = 1024,
    workers: int = 1,
    seed: int | None = None,
    **options: Any,
) -> Iterator[list[Recommendation]]:
    """``recommend_batch`` over many users, ``chunk_size`` at a time, yielding each chunk's results in order.

    With ``workers`` > 1 the chunks are scored by that many threads (matmul and top-K release the GIL;
    set ``torch.set_num_threads(1)`` first so the threads do not oversubscribe the cores). Chunk ``c``
    (starting at user ``start``) uses ``seed + start``, so results do not depend on ``workers``.
    """
    from concurrent.futures import ThreadPoolExecutor

    n_rows = _batch_length(users, histories)
    starts = list(range(0, n_rows, chunk_size))

    def run(start: int) -> list[Recommendation]:
        stop = start + chunk_size
        return recommender.recommend_batch(
            users[start:stop] if users is not None else None,
            histories[start:stop] if histories is not None else None,
            seed=None if seed is None else seed + start,
            **options,
        )

    if workers <= 1:
        for start in starts:
            yield run(start)
        return
    with ThreadPoolExecutor(workers) as pool:
        yield from pool.map(run, starts)


def push_tokens(
    items: np.ndarray,
    events: np.ndarray,
    valid: np.ndarray,
    new_items: np.ndarray,
    new_events: np.ndarray,
    pad: int,
    event_pad: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One state window (H,) with ``new_*`` tokens appended as the newest: the last H tokens, left-padded."""
    h = items.shape[0]
    seq_items = np.concatenate([items[valid], new_items])[-h:]
    seq_events = np.concatenate([events[valid], new_events])[-h:]
    out_items = np.full(h, pad, dtype=np.int64)
    out_events = np.full(h, event_pad, dtype=np.int64)
    out_valid = np.zeros(h, dtype=bool)
    out_items[h - seq_items.size :] = seq_items
    out_events[h - seq_items.size :] = seq_events
    out_valid[h - seq_items.size :] = True
    return out_items, out_events, out_valid
