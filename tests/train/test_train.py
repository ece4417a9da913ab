"""Training: gradients reach every parameter, determinism, exact resume, config checks."""

from __future__ import annotations

import pytest
import torch

from support.agent_data import synth_dataset, train_recording_losses
from topkrec.data.transitions import build_transitions
from topkrec.embeddings.artifact import PretrainedEmbeddings
from topkrec.errors import TopkrecError
from topkrec.policy.artifact import load_agent
from topkrec.policy.config import AgentConfig, TrainConfig
from topkrec.policy.encoders import ENCODERS
from topkrec.policy.model import Agent
from topkrec.train import StepOutput, build_optimizer, train_agent, train_step
from topkrec.train.build import build_agent


@pytest.fixture(scope="module")
def tiny():
    return synth_dataset(n_users=40, n_items=60, seed=3)


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("correction", ["none", "is", "topk"])
def test_every_parameter_gets_a_gradient_and_moves(tiny, encoder: str, correction: str) -> None:
    torch.manual_seed(0)
    agent = Agent(
        AgentConfig(
            tiny.n_users, tiny.n_items, embed_size=8, hidden=16, hist_num=10, encoder=encoder, trainable_embeddings=True
        )
    )
    cfg = TrainConfig(lr=1e-2, correction=correction)
    opt = build_optimizer(agent, cfg)
    before = {n: p.detach().clone() for n, p in agent.named_parameters()}
    tr = build_transitions(tiny, "train", 10)
    out = train_step(agent, opt, tr.batch(torch.arange(64)), cfg)
    assert isinstance(out, StepOutput) and out.n_policy_rows == 64 and out.stats is not None
    for name, p in agent.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        if name == "item_embedding.weight":
            assert torch.all(p.grad[tiny.pad_index] == 0), "the pad row must not learn"
            assert torch.all(p[tiny.pad_index] == 0)
            continue
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name} has a zero gradient"
        assert not torch.equal(p.detach(), before[name]), f"{name} did not move"


def test_behavior_head_reads_detached_state(tiny) -> None:
    torch.manual_seed(0)
    agent = Agent(AgentConfig(tiny.n_users, tiny.n_items, embed_size=8, hidden=16, hist_num=10))
    b = build_transitions(tiny, "train", 10).batch(torch.arange(32))
    state = agent.encode(b.user, b.history)
    (-agent.behavior_head(state.detach(), b.action).train_logp.mean()).backward()
    assert all(p.grad is None for p in agent.encoder.parameters())
    assert agent.behavior_head.weight.grad is not None


def test_frozen_embeddings_are_not_trained(tiny) -> None:
    cfg = AgentConfig(
        tiny.n_users,
        tiny.n_items,
        embed_size=8,
        hidden=16,
        hist_num=10,
        user_embedding=True,
        trainable_embeddings=False,
    )
    agent = Agent(cfg)
    opt = build_optimizer(agent, TrainConfig())
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(agent.item_embedding.weight) not in params and id(agent.user_embedding.weight) not in params


def test_frozen_without_pretrained_embeddings_warns_and_trains_them(tiny, caplog) -> None:
    acfg = AgentConfig(hidden=16, hist_num=10, trainable_embeddings=False)
    with caplog.at_level("WARNING", logger="topkrec.train.build"):
        agent = build_agent(tiny, acfg, TrainConfig(device="cpu"))
    assert agent.config.trainable_embeddings and agent.item_embedding.weight.requires_grad
    assert "no --embeddings" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="topkrec.train.build"):
        build_agent(tiny, AgentConfig(hidden=16, hist_num=10), TrainConfig(device="cpu"))
    assert "no --embeddings" not in caplog.text


def test_an_embed_size_the_pretrained_vectors_override_warns(tiny, caplog) -> None:
    emb = PretrainedEmbeddings(user=torch.zeros(tiny.n_users, 8), item=torch.zeros(tiny.n_items + 1, 8), config={})
    for size, warns in ((16, True), (8, False), (AgentConfig().embed_size, False)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="topkrec.train.build"):
            agent = build_agent(tiny, AgentConfig(embed_size=size, hidden=16), TrainConfig(device="cpu"), emb)
        assert agent.config.embed_size == 8
        assert ("does not apply with --embeddings" in caplog.text) is warns, (size, caplog.text)
        assert not warns or f"--embed-size {size} does not apply" in caplog.text
        # The recipe's own width, narrowed by the vectors, says what that cost (pretrain's default is 32).
        assert ("narrower than the recipe's 64" in caplog.text) is (size == AgentConfig().embed_size), caplog.text


def test_pretrained_vectors_as_wide_as_the_recipe_do_not_warn(tiny, caplog) -> None:
    width = AgentConfig().embed_size
    emb = PretrainedEmbeddings(
        user=torch.zeros(tiny.n_users, width), item=torch.zeros(tiny.n_items + 1, width), config={}
    )
    with caplog.at_level("WARNING", logger="topkrec.train.build"):
        build_agent(tiny, AgentConfig(hidden=16), TrainConfig(device="cpu"), emb)
    assert "narrower" not in caplog.text and "does not apply" not in caplog.text


@pytest.mark.parametrize("trainable", [None, True, False])
def test_pretrained_embeddings_are_fine_tuned_by_default(tiny, tmp_path, trainable) -> None:
    """Frozen two-tower vectors cost the attention encoder 3× on MovieLens (docs/agent.md): the default
    fine-tunes what ``--embeddings`` gives; ``--frozen-embeddings`` (and ``--preset seed``) keeps it fixed."""
    g = torch.Generator().manual_seed(0)
    item = torch.nn.functional.normalize(torch.randn(tiny.n_items + 1, 8, generator=g), dim=1)
    item[-1] = 0.0
    user = torch.nn.functional.normalize(torch.randn(tiny.n_users, 8, generator=g), dim=1)
    emb = PretrainedEmbeddings(user=user, item=item, config={})
    kw = {} if trainable is None else {"trainable_embeddings": trainable}
    acfg = AgentConfig(tiny.n_users, tiny.n_items, hidden=16, hist_num=10, **kw)
    train_agent(
        tiny, tmp_path / "m", acfg, TrainConfig(device="cpu", batch_size=32, epochs=1, val_size=0.0), embeddings=emb
    )
    agent = load_agent(tmp_path / "m")
    assert agent.config.trainable_embeddings is (trainable is not False)
    assert agent.config.embed_size == 8  # the pretrained width
    moved = not torch.equal(agent.module.item_embedding.weight.detach(), item)
    assert moved is (trainable is not False)


def _run(ds, out, **kw):
    cfg = TrainConfig(device="cpu", lr=3e-3, batch_size=32, log_every=5, **kw)
    acfg = AgentConfig(ds.n_users, ds.n_items, embed_size=8, hidden=16, hist_num=10, encoder="gru")
    return train_recording_losses(ds, out, acfg, cfg, force=True)


def test_same_seed_same_losses_and_different_seed_differs(tiny, tmp_path) -> None:
    _, a = _run(tiny, tmp_path / "a", epochs=1, seed=5)
    _, b = _run(tiny, tmp_path / "b", epochs=1, seed=5)
    _, c = _run(tiny, tmp_path / "c", epochs=1, seed=6)
    assert len(a) > 5 and a == b
    assert a != c


def test_resume_continues_exactly(tiny, tmp_path) -> None:
    full, full_losses = _run(tiny, tmp_path / "full", epochs=2, seed=1)
    # interrupted in the middle of the first epoch (a checkpoint is written where it stops) …
    part, part_losses = _run(tiny, tmp_path / "part", epochs=2, seed=1, max_steps=7)
    assert part.state.global_step == 7 and not part.state.finished
    # … then resumed with the same settings
    cfg = TrainConfig(device="cpu", lr=3e-3, batch_size=32, log_every=5, epochs=2, seed=1)
    acfg = AgentConfig(tiny.n_users, tiny.n_items, embed_size=8, hidden=16, hist_num=10, encoder="gru")
    resumed, losses = train_recording_losses(tiny, tmp_path / "part", acfg, cfg, resume=True)
    assert resumed.state.finished and resumed.state.global_step == full.state.global_step
    assert part_losses + losses == full_losses
    for (n1, p1), (n2, p2) in zip(full.agent.state_dict().items(), resumed.agent.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2), f"{n1} differs after resume"
    # what was written to disk is the same as well
    la, lb = load_agent(tmp_path / "full"), load_agent(tmp_path / "part")
    for (n1, p1), (_, p2) in zip(la.module.state_dict().items(), lb.module.state_dict().items(), strict=True):
        assert torch.equal(p1, p2), n1
    # the training log continues across the interruption
    steps = [r["step"] for r in resumed.history]
    assert steps == sorted(steps) and steps[-1] == full.state.global_step


def test_resume_refuses_changed_settings_and_missing_checkpoint(tiny, tmp_path) -> None:
    _run(tiny, tmp_path / "m", epochs=1, seed=1, max_steps=2)
    cfg = TrainConfig(device="cpu", lr=1e-2, batch_size=32, epochs=1, seed=1)
    acfg = AgentConfig(tiny.n_users, tiny.n_items, embed_size=8, hidden=16, hist_num=10, encoder="gru")
    with pytest.raises(TopkrecError, match="lr"):
        train_agent(tiny, tmp_path / "m", acfg, cfg, resume=True)
    with pytest.raises(TopkrecError, match="no checkpoint"):
        train_agent(tiny, tmp_path / "empty", acfg, cfg, resume=True)
    with pytest.raises(TopkrecError, match="already exists"):
        train_agent(tiny, tmp_path / "m", acfg, cfg)
    with pytest.raises(TopkrecError, match="correction"):
        train_agent(tiny, tmp_path / "x", acfg, TrainConfig(correction="bogus"))


def test_metrics_logged_with_namespaced_keys(tiny, tmp_path) -> None:
    res, _ = _run(tiny, tmp_path / "m", epochs=1, seed=0)
    keys = set().union(*[r.keys() for r in res.history])
    for key in (
        "train/policy_loss",
        "train/behavior_loss",
        "train/iw_mean",
        "train/iw_max",
        "train/iw_capped_frac",
        "train/iw_ess",
        "train/topk_multiplier_mean",
        "time/samples_per_s",
    ):
        assert key in keys
    assert (tmp_path / "m" / "train_log.jsonl").read_text().count("\n") == len(res.history)


@pytest.mark.cuda
def test_cuda_training_matches_cpu_and_bf16_is_finite(tiny, tmp_path) -> None:
    acfg = AgentConfig(tiny.n_users, tiny.n_items, embed_size=8, hidden=16, hist_num=10)
    runs = {}
    for name, device, bf16 in (("cpu", "cpu", False), ("cuda", "cuda", False), ("bf16", "cuda", True)):
        losses: list[float] = []
        cfg = TrainConfig(device=device, bf16=bf16, lr=3e-3, batch_size=32, epochs=1, seed=2)
        train_agent(tiny, tmp_path / name, acfg, cfg, on_step=lambda s, o, acc=losses: acc.append(o.policy_loss))
        runs[name] = losses
    assert runs["cpu"] == pytest.approx(runs["cuda"], rel=1e-3, abs=1e-4)
    assert all(torch.isfinite(torch.tensor(runs["bf16"])))
    assert runs["bf16"][0] == pytest.approx(runs["cpu"][0], rel=0.05)


@pytest.mark.slow
def test_compiled_step_matches_eager(tiny, tmp_path) -> None:
    """--compile (torch.compile of the step's forward) trains the same model as eager."""
    # concat: Adam turns the last-bit differences of compiled attention kernels in near-zero gradients into
    # lr-sized steps; the compiled path itself is the same for every encoder
    acfg = AgentConfig(tiny.n_users, tiny.n_items, embed_size=8, hidden=16, hist_num=10, encoder="concat")
    weights, losses = {}, {}
    for name in ("eager", "compiled"):
        cfg = TrainConfig(lr=3e-3, batch_size=32, max_steps=4, seed=1, device="cpu", compile=name == "compiled")
        acc: list[float] = []
        res = train_agent(tiny, tmp_path / name, acfg, cfg, on_step=lambda s, o, acc=acc: acc.append(o.policy_loss))
        weights[name], losses[name] = res.agent.state_dict(), acc
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)
    for key, value in weights["eager"].items():
        torch.testing.assert_close(weights["compiled"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    torch.manual_seed(1)  # the run's seed: the initial π head, which four steps at lr 3e-3 must have moved
    initial = Agent(acfg).policy_head.weight.detach()
    assert (weights["eager"]["policy_head.weight"] - initial).abs().max() > 1e-3
