"""``topkrec evaluate``: DESIGN §4 metrics of a trained agent and the baselines on the held-out split.

For every test event the state is the user and the history before it (including the train tail), and
each model ranks the whole catalogue:

- ``ndcg@K``, ``recall@K`` (hit rate of the one logged item), ``mrr`` (over the whole catalogue); a test
  event whose item is unseen in train (OOV) counts as a miss for every model;
- ``ndcg_all@K``: the top K from each user's last train state (before their first test event) against the
  set of the user's distinct in-catalogue test items (the reference's second number);
- ``reward_ndcg@K``: ndcg@K weighted by each test event's reward (Σ r·ndcg / Σ r): the ranking quality a
  reward-maximising policy aims at (a buy worth 3 counts three times a page view worth 1); and
  ``ndcg_by_event``: ndcg@K per behaviour of the test event (pv, cart, …; MovieLens: rating);
- ``coverage``: share of the catalogue that appears in some top-K list; ``tail_share``: share of
  recommendations outside the top 1 % most popular train items;
- off-policy value estimates of the model's policy on the logged test events (immediate reward):
  ``ips``, ``capped_ips``, ``snips`` and ``ess``, with β̂ of the evaluated model dir as propensity (floored
  so w stays finite); OOV events are left out of these.

Baselines: ``popularity`` (train counts; as a policy, π(a) ∝ count), ``recent`` (the items of the user's
history, most recent first, then popularity: what a shop deploys as "recently viewed") and ``behavior`` (β̂
alone, i.e. behaviour cloning; its weights are 1, so its IPS is the logged mean reward).
Scores are computed in row chunks, so at most ``chunk_rows × n_items`` scores exist at a time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from topkrec.data.dataset import Dataset
from topkrec.data.transitions import TransitionBatch, Transitions, build_transitions
from topkrec.errors import ArtifactError, TopkrecError
from topkrec.evaluate.metrics import (
    check_finite_scores,
    ndcg_all_at_k,
    ndcg_from_rank,
    recall_from_rank,
    reciprocal_rank,
    target_rank,
    topk_indices,
)
from topkrec.policy.artifact import LoadedAgent
from topkrec.progress import progress_bar

logger = logging.getLogger(__name__)

Scorer = Callable[[TransitionBatch], torch.Tensor]  # a batch of states -> (B, N) scores

__all__ = [
    "EvalConfig",
    "ModelMetrics",
    "agent_scorers",
    "evaluate_agents",
    "evaluate_scorer",
    "popularity_scorer",
    "recent_scorer",
    "chunk_rows",
    "default_chunk_elements",
]


@dataclass(frozen=True)
class EvalConfig:
    k: int = 10
    """Length of the recommendation list."""
    chunk_elements: int | None = None
    """Rows per scoring chunk = chunk_elements // n_items (1 to 4096): bounds the (rows, n_items) score
    buffer. None = ``default_chunk_elements(device)``: 2^22 on CPU (cache-sized), up to 2^30 on CUDA."""
    head_share: float = 0.01
    """The head for ``tail_share``: this share of items with the most train events."""
    behavior_floor: float = 1e-6
    """β̂ probabilities are floored here before dividing (DESIGN §3: items β̂ never saw)."""
    cap: float = math.exp(3.0)
    """Cap of the capped-IPS estimate."""
    n_boot: int = 200
    """Bootstrap resamples for the OPE confidence intervals."""
    seed: int = 0
    exclude_seen: bool = False
    """Rank only items the user has not consumed before the event (its history rows), as serving's
    ``exclude_seen`` does; off by default: on repeat-consumption logs the next item is often a seen one."""
    candidates: np.ndarray | None = None
    """(n_items,) bool: only these items may be recommended (ads, in-stock items); test events on other items
    are left out of every metric (``n_events`` counts the rest)."""


@dataclass
class ModelMetrics:
    """Every number of one model; ``as_dict`` gives the DESIGN §9 keys."""

    k: int
    ndcg: float
    recall: float
    mrr: float
    ndcg_all: float
    coverage: float
    tail_share: float
    ips: float
    capped_ips: float
    snips: float
    ess: float
    n_events: int
    n_users: int
    ope: dict[str, Any] = field(default_factory=dict)
    reward_ndcg: float = math.nan
    """ndcg@K of the test events weighted by their rewards: Σ r·ndcg / Σ r over the events with r > 0 (what a
    reward-maximising policy aims at: a buy counts as much as its reward says; NaN without positive rewards)."""
    ndcg_by_event: dict[str, dict[str, float]] = field(default_factory=dict)
    """ndcg@K of the test events of each behaviour (``{behaviour: {"ndcg@K": …, "n_events": …}}``)."""
    log_weights: np.ndarray | None = None  # (n,) log(π/β̂) per rankable test event, for the histogram

    def as_dict(self) -> dict[str, Any]:
        """DESIGN §9 keys; a number that could not be computed (NaN, e.g. OPE without rankable events) is None,
        so metrics.json stays valid JSON."""
        k = self.k
        return {
            f"ndcg@{k}": self.ndcg,
            f"recall@{k}": self.recall,
            "mrr": self.mrr,
            f"ndcg_all@{k}": self.ndcg_all,
            "coverage": self.coverage,
            "tail_share": self.tail_share,
            "ips": _finite_or_none(self.ips),
            "capped_ips": _finite_or_none(self.capped_ips),
            "snips": _finite_or_none(self.snips),
            "ess": _finite_or_none(self.ess),
            "n_events": self.n_events,
            "n_users": self.n_users,
            "ope": self.ope,
            f"reward_ndcg@{k}": _finite_or_none(self.reward_ndcg),
            "ndcg_by_event": self.ndcg_by_event,
        }


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _log_popularity(counts: torch.Tensor) -> torch.Tensor:
    """(N,) log train count, an unseen item's count taken as 0.5: the popularity baseline's logits."""
    return torch.log(counts.clamp_min(0.5)).float()


def popularity_scorer(counts: torch.Tensor) -> Scorer:
    """log(count): as a softmax policy this is π(a) = count(a)/Σ count, the same for every state."""
    logits = _log_popularity(counts)

    def score(batch: TransitionBatch) -> torch.Tensor:
        return logits.to(batch.user.device)[None, :].expand(batch.user.shape[0], -1)

    return score


def recent_scorer(counts: torch.Tensor) -> Scorer:
    """Recently seen first: the items of the state's history, the most recent first, above every other item,
    which follow by popularity (log count). As a softmax policy, the most recent item's logit is 1 above the one
    before it (about 63 % of the mass on it), and the newest history item is above any item outside the history.

    The history is the same tokens the agent's state reads (``--hist-num``, ``--history``); an item that occurs
    more than once ranks at its latest occurrence."""
    logits = _log_popularity(counts)
    above = float(logits.max()) + 1.0
    n_items = int(counts.shape[0])

    def score(batch: TransitionBatch) -> torch.Tensor:
        history = batch.history
        scores = logits.to(history.device)[None, :].repeat(history.shape[0], 1)
        valid = history < n_items  # pads and OOV tokens rank nothing
        position = torch.arange(history.shape[1], device=history.device, dtype=scores.dtype)  # oldest first
        value = torch.where(valid, above + position[None, :], torch.full_like(scores[:, :1], -math.inf))
        return scores.scatter_reduce_(1, torch.where(valid, history, 0), value, reduce="amax")

    return score


def agent_scorers(agent: LoadedAgent) -> dict[str, Scorer]:
    """Logit scorers of a loaded agent's heads: ``policy`` (π), ``behavior`` (β̂) and, when the agent has
    one, ``supervised``."""
    module = agent.module

    def head_scorer(head: str) -> Scorer:
        def score(b: TransitionBatch) -> torch.Tensor:
            state = module.encode(b.user, b.history, b.history_event)
            return module.head_logits(head, state, b.history, b.history_event)

        return score

    scorers = {"policy": head_scorer("policy_head"), "behavior": head_scorer("behavior_head")}
    if module.supervised_head is not None:
        scorers["supervised"] = head_scorer("supervised_head")
    return scorers


CPU_CHUNK_ELEMENTS = 1 << 22
CUDA_CHUNK_ELEMENTS = 1 << 30
MAX_CHUNK_ROWS = 4096


def default_chunk_elements(device: torch.device | str) -> int:
    """Score-buffer size for ``EvalConfig.chunk_elements=None``.

    CPU: 2^22 scores (16 MB), which keeps a chunk's passes in cache. CUDA: 2^30 scores (4 GB fp32), or a
    sixteenth of the free memory if less — a chunk holds the scores, their log-softmax and top-K temporaries,
    and launch overhead per chunk is what a GPU loses on small chunks. Not yet timed on a GPU:
    ``benchmarks/bench_scale.py --eval-events`` compares it with 2^32 (``gpu_check.sh`` step 4).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_CHUNK_ELEMENTS
    free, _total = torch.cuda.mem_get_info(device)
    return max(CPU_CHUNK_ELEMENTS, min(CUDA_CHUNK_ELEMENTS, free // 16))


def chunk_rows(config: EvalConfig, n_items: int, device: torch.device | str) -> int:
    """Rows scored at a time: ``chunk_elements // n_items`` clipped to [1, 4096]."""
    elements = config.chunk_elements if config.chunk_elements is not None else default_chunk_elements(device)
    if elements < 1:
        raise TopkrecError(f"chunk_elements must be positive, got {elements}")
    return max(1, min(MAX_CHUNK_ROWS, elements // max(n_items, 1)))


@torch.no_grad()
def _action_logp(scorer: Scorer, test: Transitions, chunk: int, name: str = "behavior") -> torch.Tensor:
    """(n,) log-probability of each test action under the scorer's softmax (−inf for OOV)."""
    out = []
    for s in range(0, len(test), chunk):
        b = test.batch(torch.arange(s, min(s + chunk, len(test)), device=test.device))
        logits = scorer(b).float()
        check_finite_scores(logits, name)
        n = logits.shape[1]
        lp = torch.log_softmax(logits, dim=1).gather(1, b.action.clamp(0, n - 1)[:, None]).squeeze(1)
        out.append(torch.where(b.action < n, lp, torch.full_like(lp, -math.inf)))
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def evaluate_scorer(
    scorer: Scorer,
    test: Transitions,
    first: Transitions,
    counts: torch.Tensor,
    behavior_logp: torch.Tensor,
    config: EvalConfig = EvalConfig(),
    progress: bool = False,
    name: str = "model",
    row_behavior: np.ndarray | None = None,
) -> ModelMetrics:
    """All DESIGN §4 metrics of one scorer on the test transitions (``first`` = first test event per user).

    ``row_behavior``: the behaviour of each test row (N,), for ``ndcg_by_event``."""
    from topkrec.ope import off_policy_report

    n_items = int(counts.shape[0])
    k = config.k
    if not 1 <= k <= n_items:
        raise TopkrecError(f"--k must be between 1 and the catalogue size {n_items}, got {k}")
    dev = test.device
    chunk = chunk_rows(config, n_items, dev)
    n = len(test)
    if n == 0:
        raise TopkrecError("the dataset has no test events to evaluate on")
    ndcg_sum = recall_sum = rr_sum = 0.0
    rec_counts = torch.zeros(n_items, dtype=torch.float64, device=dev)
    policy_logp = torch.empty(n, dtype=torch.float32, device=dev)
    row_ndcg = torch.empty(n, dtype=torch.float64, device=dev)
    with progress_bar(n + len(first), f"evaluate {name}", enabled=progress) as bar:
        for s in range(0, n, chunk):
            idx = torch.arange(s, min(s + chunk, n), device=dev)
            b = test.batch(idx)
            scores = _restrict(scorer(b).float(), test, test.rows[idx], config, name)
            rank = target_rank(scores, b.action)
            ndcg_rows = ndcg_from_rank(rank, k)
            row_ndcg[s : s + len(b)] = ndcg_rows
            ndcg_sum += float(ndcg_rows.sum())
            recall_sum += float(recall_from_rank(rank, k).sum())
            rr_sum += float(reciprocal_rank(rank).sum())
            top = topk_indices(scores, k)  # ties by item index, as target_rank
            rec_counts += torch.bincount(top.flatten(), minlength=n_items).double()
            lp = torch.log_softmax(scores, dim=1).gather(1, b.action.clamp(0, n_items - 1)[:, None]).squeeze(1)
            policy_logp[s : s + len(b)] = torch.where(b.action < n_items, lp, torch.full_like(lp, -math.inf))
            bar.update(len(b))
        # ndcg_all: each user's top K from the state after the train tail vs their distinct test items.
        test_actions = test.items[test.rows]
        test_users = test.users[test.rows]
        in_cat = test_actions < n_items
        keys = torch.unique(test_users[in_cat] * (n_items + 1) + test_actions[in_cat])
        n_rel_per_user = torch.bincount(keys // (n_items + 1), minlength=int(test.users.max()) + 1)
        ndcg_all_sum = 0.0
        n_users = 0
        for s in range(0, len(first), chunk):
            idx = torch.arange(s, min(s + chunk, len(first)), device=dev)
            b = first.batch(idx)
            scores = _restrict(scorer(b).float(), first, first.rows[idx], config, name)
            top = topk_indices(scores, k)
            relevant = torch.isin(b.user[:, None] * (n_items + 1) + top, keys)
            n_rel = n_rel_per_user[b.user]
            has = n_rel > 0
            ndcg_all_sum += float(ndcg_all_at_k(top, relevant, n_rel)[has].sum())
            n_users += int(has.sum())
            bar.update(len(b))
    n_head = max(1, math.ceil(config.head_share * n_items))
    head = torch.zeros(n_items, dtype=torch.bool, device=dev)
    head[torch.argsort(counts.to(dev), descending=True, stable=True)[:n_head]] = True
    total_recs = float(rec_counts.sum())

    # Off-policy value of the policy on the logged test events (immediate reward), β̂ as propensity.
    rankable = torch.isfinite(policy_logp) & torch.isfinite(behavior_logp)
    reward = test.reward[test.rows][rankable].double().cpu().numpy()
    target_prob = policy_logp[rankable].double().exp().cpu().numpy()
    logging_prob = behavior_logp[rankable].double().exp().clamp_min(config.behavior_floor).cpu().numpy()
    log_w = np.log(target_prob) - np.log(logging_prob)
    if reward.size:
        report = off_policy_report(
            reward, target_prob, logging_prob, cap=config.cap, n_boot=config.n_boot, seed=config.seed
        )
        ope = report.as_dict()
        est = report.estimators
        ips, capped, snips, ess = est["ips"].value, est["capped_ips"].value, est["snips"].value, report.ess
    else:
        ope, ips, capped, snips, ess = {}, math.nan, math.nan, math.nan, 0.0
    ndcg_np = row_ndcg.cpu().numpy()
    positive = np.clip(test.reward[test.rows].double().cpu().numpy(), 0.0, None)
    reward_ndcg = float((positive * ndcg_np).sum() / positive.sum()) if positive.sum() > 0 else math.nan
    by_event: dict[str, dict[str, float]] = {}
    if row_behavior is not None:
        names, codes = np.unique(np.asarray(row_behavior).astype(str), return_inverse=True)
        sums, n_per_event = np.bincount(codes, weights=ndcg_np), np.bincount(codes)
        by_event = {
            str(e): {f"ndcg@{k}": float(sums[i] / n_per_event[i]), "n_events": int(n_per_event[i])}
            for i, e in enumerate(names)
        }
    return ModelMetrics(
        k=k,
        ndcg=ndcg_sum / n,
        recall=recall_sum / n,
        mrr=rr_sum / n,
        ndcg_all=ndcg_all_sum / max(n_users, 1),
        coverage=float((rec_counts > 0).sum()) / n_items,
        tail_share=float(rec_counts[~head].sum()) / total_recs if total_recs else 0.0,
        ips=float(ips),
        capped_ips=float(capped),
        snips=float(snips),
        ess=float(ess),
        n_events=n,
        n_users=n_users,
        ope=ope,
        log_weights=log_w,
        reward_ndcg=reward_ndcg,
        ndcg_by_event=by_event,
    )


def _restrict(
    scores: torch.Tensor, transitions: Transitions, positions: torch.Tensor, config: EvalConfig, name: str
) -> torch.Tensor:
    """The scores checked finite, then −inf outside the candidate set and (``exclude_seen``) on seen items."""
    check_finite_scores(scores, name)
    # out of place: a scorer may return a view of its own buffer (popularity expands one row)
    if config.candidates is not None:
        outside = ~torch.as_tensor(config.candidates, device=scores.device)
        scores = scores.masked_fill(outside[None, :], -math.inf)
    if config.exclude_seen:
        rows, items = transitions.seen(positions)
        scores = scores.index_put((rows, items), scores.new_tensor(-math.inf))
    return scores


def check_model_matches_dataset(agent: LoadedAgent, dataset: Dataset) -> None:
    cfg = agent.config
    if (cfg.n_users, cfg.n_items) != (dataset.n_users, dataset.n_items):
        raise ArtifactError(
            f"model {agent.directory} was trained on {cfg.n_users} users / {cfg.n_items} items, the dataset has "
            f"{dataset.n_users} / {dataset.n_items}; evaluate on the dataset the model was trained on"
        )
    saved = agent.raw_config.get("data", {}).get("fingerprint")
    if saved is not None:
        from topkrec.embeddings import dataset_fingerprint

        if saved != dataset_fingerprint(dataset):
            raise ArtifactError(
                f"model {agent.directory} was trained on a different dataset (id maps differ); "
                "evaluate on the dataset the model was trained on"
            )


def evaluate_agents(
    agents: dict[str, LoadedAgent],
    dataset: Dataset,
    config: EvalConfig = EvalConfig(),
    baselines: bool = True,
    progress: bool = False,
) -> dict[str, ModelMetrics]:
    """Metrics of each named agent's π, plus (``baselines``) popularity, recent and β̂ of the first agent.

    Every agent is judged with its own β̂ as the propensity model for the OPE numbers.
    """
    if not agents:
        raise TopkrecError("no model to evaluate")
    first_agent = next(iter(agents.values()))
    for agent in agents.values():
        check_model_matches_dataset(agent, dataset)
    device = first_agent.device
    counts = torch.as_tensor(dataset.train_item_counts(), dtype=torch.float64)
    results: dict[str, ModelMetrics] = {}
    cache: dict[tuple[int, str], tuple[Transitions, Transitions]] = {}

    def transitions(agent: LoadedAgent) -> tuple[Transitions, Transitions]:
        """The test events with each agent's own state (history length and rows): the same rows for all."""
        key = (agent.config.hist_num, agent.config.history)
        if key not in cache:
            mask = None
            if config.candidates is not None:  # test events on items that may not be shown are left out
                item = np.asarray(dataset.item)
                mask = (item < dataset.n_items) & np.asarray(config.candidates)[np.minimum(item, dataset.n_items - 1)]
            test = build_transitions(dataset, "test", key[0], device, key[1], rows_mask=mask)
            cache[key] = (test, test.first_per_user())
        return cache[key]

    behaviors = np.asarray(dataset.behavior).astype(str)

    def row_behavior(test: Transitions) -> np.ndarray:
        return behaviors[test.rows.cpu().numpy()]

    chunk = chunk_rows(config, dataset.n_items, device)
    behavior_logps: dict[str, torch.Tensor] = {}
    for name, agent in agents.items():
        agent.module.eval()
        test, first = transitions(agent)
        scorers = agent_scorers(agent)
        behavior_logps[name] = _action_logp(scorers["behavior"], test, chunk, name=f"{name} (its β̂ head)")
        results[name] = evaluate_scorer(
            scorers["policy"],
            test,
            first,
            counts,
            behavior_logps[name],
            config,
            progress=progress,
            name=name,
            row_behavior=row_behavior(test),
        )
    if baselines:
        first_name = next(iter(agents))
        test, first = transitions(first_agent)
        scorers = agent_scorers(first_agent)
        blp = behavior_logps[first_name]
        rows_behavior = row_behavior(test)
        results["popularity"] = evaluate_scorer(
            popularity_scorer(counts.to(device)),
            test,
            first,
            counts,
            blp,
            config,
            progress,
            "popularity",
            rows_behavior,
        )
        results["recent"] = evaluate_scorer(
            recent_scorer(counts.to(device)), test, first, counts, blp, config, progress, "recent", rows_behavior
        )
        results["behavior"] = evaluate_scorer(
            scorers["behavior"], test, first, counts, blp, config, progress, "behavior", rows_behavior
        )
        if "supervised" in scorers:  # the supervised head alone: the supervised sequential baseline
            results["supervised"] = evaluate_scorer(
                scorers["supervised"], test, first, counts, blp, config, progress, "supervised", rows_behavior
            )
    return results
