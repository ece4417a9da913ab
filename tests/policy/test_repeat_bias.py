"""--repeat-bias / --repeat-mode: the exact log-probability of the new softmax, and a re-engagement pattern
it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from topkrec.data.dataset import Dataset, discounted_returns
from topkrec.policy.config import AgentConfig, TrainConfig
from topkrec.policy.model import Agent
from topkrec.policy.repeat import REPEAT_SCALE


def _agent(**kw: object) -> Agent:
    torch.manual_seed(0)
    cfg = AgentConfig(n_users=3, n_items=12, event_types=("pv", "cart"), embed_size=4, hidden=5, hist_num=4, **kw)
    return Agent(AgentConfig.from_json({**cfg.to_json(), "repeat_bias": True}))


@pytest.mark.parametrize("mode", ["add", "replace"])
def test_head_output_is_the_log_softmax_of_the_biased_logits(mode: str) -> None:
    agent = _agent(repeat_mode=mode)
    for head in agent.heads():
        with torch.no_grad():
            head.repeat.normal_(0.0, 2.0 / REPEAT_SCALE)  # type: ignore[operator]
    history = torch.tensor([[3, 5, 3, 12], [12, 12, 12, 12], [0, 1, 2, 3]])  # 12 = pad; item 3 twice
    events = torch.tensor([[0, 1, 1, 2], [2, 2, 2, 2], [1, 0, 1, 0]])
    actions = torch.tensor([3, 7, 2])
    state = torch.randn(3, agent.encoder.state_dim, requires_grad=True)
    for name in ("policy_head", "behavior_head"):
        out = agent.head_output(name, state, actions, history, events)
        dense = torch.log_softmax(agent.head_logits(name, state, history, events).double(), 1)
        expected = dense.gather(1, actions[:, None]).squeeze(1)
        torch.testing.assert_close(out.train_logp.double(), expected, rtol=1e-5, atol=1e-5)
        out.train_logp.sum().backward()
        assert getattr(agent, name).repeat.grad is not None


def test_replace_sets_a_history_items_logit_to_its_bias_alone() -> None:
    agent = _agent(repeat_mode="replace")
    head = agent.policy_head
    with torch.no_grad():
        head.repeat.normal_(0.0, 1.0 / REPEAT_SCALE)  # type: ignore[operator]
    history = torch.tensor([[3, 5, 3, 12]])
    events = torch.tensor([[0, 1, 1, 2]])
    state = torch.randn(1, agent.encoder.state_dim)
    with torch.no_grad():
        plain = head.logits(state)[0]
        new = agent.head_logits("policy_head", state, history, events)[0]
        t = REPEAT_SCALE * head.repeat  # type: ignore[operator]
    torch.testing.assert_close(new[3], t[0, 0] + t[1, 2])  # item 3 at positions 0 and 2
    torch.testing.assert_close(new[5], t[1, 1])
    others = [i for i in range(12) if i not in (3, 5)]
    torch.testing.assert_close(new[others], plain[others])


@pytest.mark.parametrize("rest", [8.0, 10.0, 60.0])
def test_replace_log_prob_when_the_history_holds_the_mass(rest: float) -> None:
    """The history's items hold all but ~e^-rest of the head's mass and their biases are far below their logits,
    so Z'/Z is a small difference of large terms. It is exact to float32's precision of Z (the head's logits:
    ~1e-6 of Z against a rest of 7e-4 and 9e-5); past that (rest 60) it stays finite and ≤ 0."""
    agent = _agent(repeat_mode="replace")
    head = agent.policy_head
    history = torch.tensor([[1, 2, 3, 4]])
    events = torch.tensor([[0, 0, 0, 0]])
    state = torch.zeros(1, agent.encoder.state_dim)
    with torch.no_grad():
        head.weight.zero_()  # type: ignore[operator]
        head.bias.fill_(-rest / 2)  # type: ignore[operator]
        head.bias[1:5] = rest / 2  # type: ignore[index]
        head.repeat.fill_(-rest / 2 / REPEAT_SCALE)  # type: ignore[operator]
    out = agent.head_output("policy_head", state, torch.tensor([7]), history, events)
    assert torch.isfinite(out.train_logp).all() and float(out.train_logp.detach()) <= 0.0
    if rest <= 10.0:
        dense = torch.log_softmax(agent.head_logits("policy_head", state, history, events).double(), 1)[0, 7]
        torch.testing.assert_close(out.train_logp.double()[0], dense, rtol=0, atol=0.02)


def test_repeat_bias_only_with_the_full_softmax() -> None:
    cfg = AgentConfig(n_users=2, n_items=30, repeat_bias=True, softmax="sampled", negatives=8)
    assert not cfg.uses_repeat_bias and all(getattr(h, "repeat", None) is None for h in Agent(cfg).heads())


def test_model_dirs_from_before_the_setting_keep_adding() -> None:
    old = {"agent": {"n_users": 3, "n_items": 9, "encoder": "attention", "history": "engaged", "repeat_bias": True}}
    assert AgentConfig.from_json(old).repeat_mode == "add" and AgentConfig().repeat_mode == "replace"
    assert AgentConfig.from_json(AgentConfig(repeat_mode="replace").to_json()).repeat_mode == "replace"


def repeat_dataset(n_users: int = 80, n_items: int = 60, length: int = 12, seed: int = 0) -> Dataset:
    """Each user views an item and then carts that same item; new items are random."""
    rng = np.random.default_rng(seed)
    users, items, behavior = [], [], []
    for u in range(n_users):
        for _ in range(length // 2):
            i = int(rng.integers(n_items))
            users += [u, u]
            items += [i, i]
            behavior += ["pv", "cart"]
    user = np.array(users, np.int32)
    n = user.size
    pos = np.concatenate([np.arange(length)] * n_users)
    reward = np.where(np.array(behavior) == "cart", 2.0, 1.0).astype(np.float32)
    session = user.copy()
    return Dataset(
        user=user,
        item=np.array(items, np.int32),
        behavior=np.array(behavior, dtype=object),
        reward=reward,
        ts=np.arange(n, dtype=np.int64),
        session=session,
        is_test=pos >= length - 2,
        returns=discounted_returns(reward, session, 0.0),
        n_users=n_users,
        n_items=n_items,
    )


@pytest.mark.parametrize(("repeat", "mode"), [(False, "add"), (True, "add"), (True, "replace")])
def test_the_bias_learns_that_a_viewed_item_is_carted_next(tmp_path, repeat: bool, mode: str) -> None:
    from topkrec.evaluate.evaluator import EvalConfig, evaluate_agents
    from topkrec.policy.artifact import load_agent
    from topkrec.train import train_agent

    ds = repeat_dataset()
    agent = AgentConfig(
        embed_size=8, hidden=8, hist_num=4, encoder="mean", repeat_bias=repeat, repeat_mode=mode, user_embedding=False
    )
    train_agent(ds, tmp_path / "m", agent, TrainConfig(lr=1e-2, epochs=6, batch_size=64, device="cpu", gamma=0.0))
    loaded = load_agent(tmp_path / "m")
    recall = evaluate_agents({"m": loaded}, ds, EvalConfig(k=1, n_boot=5), baselines=False)["m"].recall
    # test events: a view of a new item (unpredictable), then the cart of that same item
    if repeat:
        assert recall >= 0.45  # nearly every cart is ranked first
    else:
        assert recall < 0.2
