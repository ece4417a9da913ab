"""Heads, encoders and the model directory (save/load, clear errors)."""

from __future__ import annotations

import json

import pytest
import torch

from topkrec.errors import ArtifactError
from topkrec.heads import HEADS, HeadOutput, make_head
from topkrec.policy.artifact import load_agent, save_agent
from topkrec.policy.config import AgentConfig
from topkrec.policy.encoders import ENCODERS
from topkrec.policy.model import Agent
from topkrec.policy.objective import action_log_prob


def test_full_head_fused_matches_autograd_reference() -> None:
    torch.manual_seed(0)
    head = make_head("full", 6, 50)
    assert "full" in HEADS and head.kind == "full"
    state = torch.randn(9, 6, requires_grad=True)
    actions = torch.randint(0, 50, (9,))
    coef = torch.randn(9)
    out = head(state, actions)
    assert isinstance(out, HeadOutput) and out.logp.shape == (9,) and not out.logp.requires_grad
    (out.train_logp * coef).sum().backward()
    got = (state.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone())
    state.grad = head.weight.grad = head.bias.grad = None
    ref = action_log_prob(head.logits(state), actions)
    (ref * coef).sum().backward()
    torch.testing.assert_close(out.train_logp, ref)
    for g, r in zip(got, (state.grad, head.weight.grad, head.bias.grad), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    # logits(state) are log-probabilities up to a row constant
    torch.testing.assert_close(head.log_probs(state).gather(1, actions[:, None]).squeeze(1), ref)


def test_temperature_and_unknown_head() -> None:
    head = make_head("full", 4, 10, temperature=2.0)
    s = torch.randn(3, 4)
    a = torch.tensor([1, 2, 3])
    torch.testing.assert_close(head(s, a).logp, action_log_prob(head.logits(s), a))
    from topkrec.errors import TopkrecError

    with pytest.raises(TopkrecError, match="unknown softmax head"):
        make_head("nope", 4, 10)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_encoders_shapes_and_pad_invariance(encoder: str) -> None:
    torch.manual_seed(1)
    cfg = AgentConfig(n_users=4, n_items=12, embed_size=5, hist_num=4, hidden=7, encoder=encoder)
    agent = Agent(cfg).eval()  # no dropout
    user = torch.tensor([0, 1, -1])
    hist = torch.tensor([[12, 12, 3, 4], [1, 2, 3, 4], [12, 12, 12, 12]])
    s = agent.encode(user, hist)
    # attention without a user embedding reads the sequence model's output directly (embedding-wide)
    assert s.shape == (3, 5 if encoder == "attention" else 7)
    assert agent.policy_head.weight.shape == (12, s.shape[1])
    if encoder in ("mean", "gru", "cfn"):
        # pads carry no information: a history with only pads in front gives the same state as a
        # shorter-padded one with the same items
        s2 = agent.encode(torch.tensor([0]), torch.tensor([[12, 12, 3, 4]]))
        torch.testing.assert_close(s[:1], s2)
    assert torch.all(agent.item_embedding.weight[12] == 0)


@pytest.mark.parametrize(("projection", "user_embedding"), [(False, False), (True, False), (False, True)])
def test_attention_state_is_the_sequence_output_unless_projected(projection: bool, user_embedding: bool) -> None:
    torch.manual_seed(2)
    cfg = AgentConfig(
        n_users=4,
        n_items=12,
        embed_size=6,
        hist_num=4,
        hidden=9,
        encoder="attention",
        state_projection=projection,
        user_embedding=user_embedding,
    )
    agent = Agent(cfg).eval()
    direct = not projection and not user_embedding  # a user embedding needs the projection to enter the state
    assert (agent.encoder.out is None) == direct and agent.encoder.state_dim == (6 if direct else 9)
    user = torch.tensor([0, 1, 2])
    hist = torch.tensor([[12, 12, 3, 4], [1, 2, 3, 4], [12, 12, 12, 5]])
    s = agent.encode(user, hist)
    assert s.shape == (3, agent.encoder.state_dim)
    if direct:  # the final layer norm's output at the most recent position
        tokens = agent.item_embedding(hist)
        want = agent.encoder.attention(tokens, hist != 12)
        torch.testing.assert_close(s, want)
    # a window's per-position states end with the row's state (what window training relies on)
    tokens = agent.item_embedding(hist)
    u = agent.user_embedding(user) if agent.user_embedding is not None else tokens.new_zeros(3, 6)
    torch.testing.assert_close(
        agent.encoder.forward_all(u, tokens, hist != 12)[:, -1], agent.encoder(u, tokens, hist != 12)
    )


def test_model_dirs_from_before_the_setting_keep_their_projection() -> None:
    cfg = AgentConfig.from_json({"agent": {"n_users": 3, "n_items": 9, "encoder": "attention", "history": "engaged"}})
    assert cfg.state_projection is True and AgentConfig().state_projection is False


def test_save_load_round_trip_and_errors(tmp_path) -> None:
    torch.manual_seed(2)
    cfg = AgentConfig(n_users=3, n_items=8, embed_size=4, hist_num=2, hidden=5, encoder="gru", dropout=0.0)
    agent = Agent(cfg)
    save_agent(tmp_path / "m", agent, user_raw=["a", "b", "c"], item_raw=[f"i{k}" for k in range(8)])
    loaded = load_agent(tmp_path / "m")
    assert loaded.config == cfg and loaded.user_index["b"] == 1 and loaded.item_raw[3] == "i3"
    u, h = torch.tensor([0, 2]), torch.tensor([[8, 1], [2, 3]])
    torch.testing.assert_close(loaded.module.encode(u, h), agent.encode(u, h))
    torch.testing.assert_close(
        loaded.module.policy_head.logits(agent.encode(u, h)), agent.policy_head.logits(agent.encode(u, h))
    )
    with pytest.raises(ArtifactError, match="does not exist"):
        load_agent(tmp_path / "missing")
    (tmp_path / "m" / "policy_head.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="policy_head.safetensors"):
        load_agent(tmp_path / "m")
    save_agent(tmp_path / "m", agent, force=True)
    cfg_path = tmp_path / "m" / "config.json"
    obj = json.loads(cfg_path.read_text())
    obj["agent"]["n_items"] = 9
    cfg_path.write_text(json.dumps(obj))
    with pytest.raises(ArtifactError, match="shape"):
        load_agent(tmp_path / "m")
    (tmp_path / "m" / "encoder.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_agent(tmp_path / "m")
