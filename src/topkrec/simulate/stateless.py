"""The paper's stateless simulations (Chen et al. 2019, §6.1), run through the library's loss code.

A softmax policy π_θ = softmax(θ) over 10 items learns from actions logged by a fixed behaviour policy
β with known rewards. Every update is ``corrected_policy_loss`` on ``action_log_prob`` — the same code
``topkrec train`` uses — so these runs test the maths of the product, not a re-implementation.

Two kinds of update:
- ``expected``: the exact expectation over a ~ β of the sampled update. The batch holds one row per
  action, and its return is scaled by N·β(a): since the loss is the batch *mean* of
  −w·λ·R·log π(a), this makes it Σ_a β(a)·(−w·λ·r(a)·log π(a)), the expected loss under β.
  Deterministic, so the fixed points can be checked tightly.
- ``sampled``: mini-batches of actions drawn from β with their rewards, as the paper trains.

Fixed points of the expected dynamics (softmax gradient Σ_a c_a (e_a − π) = 0 ⇔ π ∝ c):
- none: c_a = β(a) r(a) → π = r·β / Σ r·β;
- is (no cap): c_a = π(a) r(a) → all mass on argmax r;
- is with cap c: c_a = min(π(a), c·β(a)) r(a) → for paper-offpolicy with c = e³, (a_9, a_10) ≈ (0.60, 0.40);
- topk: c_a = π(a)·K(1 − π(a))^(K−1) r(a) → for paper-topk, π(a_1) = 20/38, π(a_2) = 18/38.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "SCENARIOS",
    "BanditScenario",
    "PolicySpec",
    "StatelessConfig",
    "StatelessPolicyResult",
    "run_scenario",
    "topk_value",
    "train_policy",
]

UpdateKind = Literal["expected", "sampled"]


@dataclass(frozen=True)
class BanditScenario:
    """A stateless recommendation problem: reward and behaviour probability of each item."""

    name: str
    reward: tuple[float, ...]
    behavior: tuple[float, ...]
    k: int  # slate size for the top-K correction and for the reported value J_K
    description: str = ""

    def __post_init__(self) -> None:
        if len(self.reward) != len(self.behavior):
            raise ValueError("reward and behavior must have one entry per item")
        if abs(sum(self.behavior) - 1.0) > 1e-9 or min(self.behavior) <= 0:
            raise ValueError("behavior must be a probability vector with positive entries")


@dataclass(frozen=True)
class PolicySpec:
    """One learner: its correction, top-K size and weight cap (None = no cap, the paper's setting)."""

    name: str
    correction: str  # none | is | topk
    k: int = 1
    cap: float | None = None


@dataclass(frozen=True)
class StatelessConfig:
    """How the softmax policy is trained."""

    update: UpdateKind = "expected"
    """``expected`` (exact expectation over β) or ``sampled`` (mini-batches drawn from β)."""
    steps: int = 500
    """Optimiser steps."""
    lr: float = 0.1
    """Adam learning rate on the 10 logits."""
    batch_size: int = 256
    """Actions per step for ``sampled`` updates."""
    seed: int = 0
    """Seed of the sampled batches (expected updates are deterministic)."""


def _items(n: int) -> tuple[float, ...]:
    return tuple(float(i) for i in range(1, n + 1))


SCENARIOS: dict[str, BanditScenario] = {
    "paper-offpolicy": BanditScenario(
        name="paper-offpolicy",
        reward=_items(10),  # r(a_i) = i
        behavior=tuple((11 - i) / 55 for i in range(1, 11)),  # β(a_i) = (11 − i)/55
        k=2,
        description="10 items, r(a_i)=i, β(a_i)=(11−i)/55: the behaviour policy favours the worst items",
    ),
    "paper-topk": BanditScenario(
        name="paper-topk",
        reward=(10.0, 9.0) + (1.0,) * 8,
        behavior=(0.1,) * 10,
        k=2,
        description="10 items, r=(10,9,1,…,1), uniform β, K=2: two good items to share a slate of two",
    ),
}

# Which learners each scenario compares (DESIGN §5). The cap e³ is the paper's production cap.
SCENARIO_POLICIES: dict[str, tuple[PolicySpec, ...]] = {
    "paper-offpolicy": (
        PolicySpec("none", "none"),
        PolicySpec("is", "is"),
        PolicySpec("is_capped", "is", cap=math.exp(3.0)),
        PolicySpec("topk", "topk", k=2),
    ),
    "paper-topk": (
        PolicySpec("none", "none", k=2),
        PolicySpec("is", "is", k=2),
        PolicySpec("topk", "topk", k=2),
    ),
}


def topk_value(probs: np.ndarray, reward: np.ndarray, k: int) -> float:
    """J_K(π) = Σ_a r(a)[1 − (1 − π(a))^K]: expected total reward of the distinct items in K draws from π."""
    return float(np.sum(reward * (1.0 - (1.0 - probs) ** k)))


@dataclass(frozen=True)
class StatelessPolicyResult:
    """What one learner converged to."""

    name: str
    correction: str
    k: int
    cap: float | None
    probs: list[float]
    expected_reward: float  # Σ π r: one draw
    topk_value: float  # J_K with the scenario's K
    final_loss: float
    diagnostics: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def train_policy(scenario: BanditScenario, spec: PolicySpec, config: StatelessConfig) -> StatelessPolicyResult:
    """Train softmax(θ) from θ = 0 with ``corrected_policy_loss`` and return π and its values."""
    import torch

    # Ten logits: one thread is fastest, and intra-op threads fighting over busy cores made runs 15x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_policy(scenario, spec, config)
    finally:
        torch.set_num_threads(threads)


def _train_policy(scenario: BanditScenario, spec: PolicySpec, config: StatelessConfig) -> StatelessPolicyResult:
    import torch

    from topkrec.policy.objective import action_log_prob, corrected_policy_loss

    n = len(scenario.reward)
    reward = torch.tensor(scenario.reward, dtype=torch.float64)
    behavior = torch.tensor(scenario.behavior, dtype=torch.float64)
    behavior_logp_all = behavior.log()
    theta = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([theta], lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    all_actions = torch.arange(n)
    expected_returns = n * behavior * reward  # batch mean over one row per action = expectation under β
    loss = torch.zeros(())
    stats = None
    for _ in range(config.steps):
        if config.update == "expected":
            actions, returns = all_actions, expected_returns
        elif config.update == "sampled":
            actions = torch.multinomial(behavior, config.batch_size, replacement=True, generator=generator)
            returns = reward[actions]
        else:
            raise ValueError(f"unknown update {config.update!r}; use expected or sampled")
        logits = theta.expand(actions.shape[0], n)  # (B, N): one state, the same logits in every row
        policy_logp = action_log_prob(logits, actions)  # (B,)
        loss, stats = corrected_policy_loss(
            policy_logp, behavior_logp_all[actions], returns, correction=spec.correction, k=spec.k, cap=spec.cap
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    probs = torch.softmax(theta.detach(), -1).numpy()
    r = np.asarray(scenario.reward)
    return StatelessPolicyResult(
        name=spec.name,
        correction=spec.correction,
        k=spec.k,
        cap=spec.cap,
        probs=[float(p) for p in probs],
        expected_reward=float(probs @ r),
        topk_value=topk_value(probs, r, scenario.k),
        final_loss=float(loss.detach()),
        diagnostics=stats.as_metrics(prefix="") if stats is not None else {},
    )


def run_scenario(
    name: str, config: StatelessConfig | None = None, policies: tuple[PolicySpec, ...] | None = None
) -> dict[str, object]:
    """Train every learner of a stateless scenario; the DESIGN §9 ``simulate --json`` dict.

    ``policies`` holds each learner's result plus the ``behavior`` baseline (β itself); the
    ``theory`` key gives the closed-form fixed points that are known exactly.
    """
    if name not in SCENARIOS:
        raise ValueError(f"unknown stateless scenario {name!r}; use one of {sorted(SCENARIOS)}")
    scenario = SCENARIOS[name]
    config = config or StatelessConfig()
    specs = policies if policies is not None else SCENARIO_POLICIES[name]
    r = np.asarray(scenario.reward)
    beta = np.asarray(scenario.behavior)
    out: dict[str, dict[str, object]] = {}
    for spec in specs:
        res = train_policy(scenario, spec, config)
        logger.info("%s %s: probs %s", name, spec.name, np.round(res.probs, 3).tolist())
        out[spec.name] = res.as_dict()
    out["behavior"] = {
        "name": "behavior",
        "probs": [float(p) for p in beta],
        "expected_reward": float(beta @ r),
        "topk_value": topk_value(beta, r, scenario.k),
    }
    theory = {
        "none": [float(x) for x in (r * beta) / (r * beta).sum()],
        "is": [float(x) for x in (r == r.max()) / (r == r.max()).sum()],
    }
    return {
        "scenario": name,
        "description": scenario.description,
        "reward": list(scenario.reward),
        "behavior": list(scenario.behavior),
        "k": scenario.k,
        "config": asdict(config),
        "policies": out,
        "theory": theory,
    }
