"""--propensity logged: importance weights against the logged β reproduce the paper's off-policy experiment
(DESIGN §5: 10 items, r(a_i) = i, β(a_i) = (11 − i)/55) through the real training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from topkrec.data.dataset import Dataset
from topkrec.errors import TopkrecError
from topkrec.policy.config import AgentConfig, TrainConfig
from topkrec.policy.objective import per_draw_log_propensity
from topkrec.train import train_agent

N_ITEMS = 10
REWARD = np.arange(1, N_ITEMS + 1, dtype=np.float32)  # r(a_i) = i
BETA = (11 - REWARD) / 55.0  # β(a_i) = (11 − i)/55


def bandit_dataset(n: int = 20_000, seed: int = 0, logged: str = "draw", k: int = 1) -> Dataset:
    """One logged decision per user (an empty history: the state is the same for every row)."""
    rng = np.random.default_rng(seed)
    action = rng.choice(N_ITEMS, size=n, p=BETA)
    propensity = BETA[action] if logged == "draw" else 1.0 - (1.0 - BETA[action]) ** k
    return Dataset(
        user=np.arange(n, dtype=np.int32),
        item=action.astype(np.int32),
        behavior=np.array(["click"] * n, dtype=object),
        reward=REWARD[action],
        ts=np.zeros(n, dtype=np.int64),
        session=np.arange(n, dtype=np.int32),
        is_test=np.zeros(n, dtype=bool),
        returns=REWARD[action],
        n_users=n,
        n_items=N_ITEMS,
        item_raw=np.arange(N_ITEMS).astype(str),
        propensity=propensity.astype(np.float64),
        meta={"gamma": 0.0},
    )


def _policy(result) -> np.ndarray:
    agent = result.agent.eval()
    with torch.no_grad():
        state = agent.encode(torch.tensor([0]), torch.full((1, 1), N_ITEMS))
        return torch.softmax(agent.policy_head.logits(state), dim=-1)[0].numpy()


AGENT = AgentConfig(
    embed_size=4, hidden=4, hist_num=1, encoder="concat", user_embedding=False, feedback_tokens=False, repeat_bias=False
)


@pytest.mark.parametrize(("correction", "logged"), [("none", "draw"), ("is", "draw"), ("is", "inclusion")])
def test_logged_propensities_reproduce_the_off_policy_experiment(tmp_path, correction: str, logged: str) -> None:
    ds = bandit_dataset(logged=logged, k=3)
    cfg = TrainConfig(
        epochs=4,
        batch_size=500,
        lr=0.05,
        correction=correction,  # type: ignore[arg-type]
        cap=None,
        k=3,
        propensity="logged",
        logged_propensity=logged,  # type: ignore[arg-type]
        bias_init="zero",
        device="cpu",
        seed=0,
        policy_ce=0.0,  # the paper's objective alone
        weight_norm="none",
        val_size=0.0,
    )
    pi = _policy(train_agent(ds, tmp_path / "m", AGENT, cfg))
    if correction == "none":  # π → r·β / Σ r·β, peaked at items 5 and 6 (SGD noise of a few 0.01)
        target = REWARD * BETA / (REWARD * BETA).sum()
        assert np.abs(pi - target).max() < 0.03 and pi[9] < 0.07
    else:  # the corrected policy moves to the best item, a_10, that β rarely logs
        assert int(np.argmax(pi)) == 9 and pi[9] > 0.5


def test_inclusion_propensities_are_converted_to_the_per_draw_beta() -> None:
    beta = torch.tensor(BETA, dtype=torch.float64)
    alpha = 1 - (1 - beta) ** 3
    back = per_draw_log_propensity(alpha, 3, "inclusion").double().exp()
    torch.testing.assert_close(back, beta, rtol=1e-5, atol=1e-7)


def test_logged_needs_a_propensity_column(tmp_path) -> None:
    ds = bandit_dataset(n=200)
    ds.propensity = None
    with pytest.raises(TopkrecError, match="--propensity logged needs logged propensities"):
        train_agent(ds, tmp_path / "m", AGENT, TrainConfig(propensity="logged", device="cpu"))
