"""Two-tower pretraining: closed-form losses, sampling, AUC, known-answer learning, determinism, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from topkrec.embeddings.config import PretrainConfig
from topkrec.embeddings.losses import bce_loss, cosine_loss, in_batch_softmax_loss
from topkrec.embeddings.planted import planted_block_dataset
from topkrec.embeddings.sampling import NegativeSampler, consumed_keys, is_consumed, pair_keys
from topkrec.embeddings.train import PretrainTrainer, positive_pairs, pretrain, roc_auc
from topkrec.errors import TopkrecError

FAST = {"epochs": 6, "batch_size": 256, "lr": 3e-3}


# ---------------------------------------------------------------- losses, closed form
def test_cosine_loss_equals_torch_cosine_embedding_loss() -> None:
    g = torch.Generator().manual_seed(0)
    u, p, n = (F.normalize(torch.randn(5, 4, generator=g), dim=1) for _ in range(3))
    n2 = F.normalize(torch.randn(5, 4, generator=g), dim=1)
    ours = cosine_loss((u * p).sum(1), torch.stack([(u * n).sum(1), (u * n2).sum(1)], dim=1))
    ref = nn.CosineEmbeddingLoss()(
        torch.cat([u, u, u]), torch.cat([p, n, n2]), torch.cat([torch.ones(5), -torch.ones(5), -torch.ones(5)])
    )
    assert torch.allclose(ours, ref, atol=1e-6)


def test_bce_loss_by_hand() -> None:
    pos, neg = torch.tensor([0.5, -0.2]), torch.tensor([[0.1], [0.9]])
    t = 0.5
    by_hand = (
        -(
            np.log(1 / (1 + np.exp(-1.0)))
            + np.log(1 / (1 + np.exp(0.4)))
            + np.log(1 - 1 / (1 + np.exp(-0.2)))
            + np.log(1 - 1 / (1 + np.exp(-1.8)))
        )
        / 4
    )
    assert bce_loss(pos, neg, t).item() == pytest.approx(by_hand, rel=1e-5)


def test_in_batch_softmax_log_q_and_duplicate_mask() -> None:
    u = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    v = F.normalize(torch.tensor([[1.0, 0.2], [0.3, 1.0], [0.5, 0.5]]), dim=1)
    items = torch.tensor([7, 3, 7])  # item 7 twice: rows 0 and 2 must not count it as a negative of each other
    log_q = torch.log(torch.tensor([0.5, 0.2, 0.5]))
    t = 0.2
    logits = (u @ v.T) / t - log_q[None, :]
    expected = []
    for b in range(3):
        keep = [j for j in range(3) if j == b or items[j] != items[b]]
        expected.append(-(logits[b, b] - torch.logsumexp(logits[b, keep], 0)))
    got = in_batch_softmax_loss(u, v, items, log_q, t)
    assert got.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    # uniform q: the correction is a constant shift of every logit and leaves the loss unchanged
    uniform = torch.full((3,), -1.0)
    no_dup = torch.tensor([1, 2, 3])
    assert in_batch_softmax_loss(u, v, no_dup, uniform, t).item() == pytest.approx(
        F.cross_entropy((u @ v.T) / t, torch.arange(3)).item(), rel=1e-5
    )


# ---------------------------------------------------------------- AUC and sampling
def test_roc_auc_hand_values() -> None:
    assert roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert roc_auc(np.array([1.0]), np.array([2.0])) == 0.0
    # ties count half: pairs (2 vs 2) = 0.5, (2 vs 1) = 1, (3 vs 2) = 1, (3 vs 1) = 1 → 3.5 / 4
    assert roc_auc(np.array([2.0, 3.0]), np.array([2.0, 1.0])) == pytest.approx(0.875)


def test_negative_sampler_never_returns_consumed_items() -> None:
    n_items = 6
    users = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    items = torch.tensor([0, 1, 2, 3, 4, 0, 5])  # user 0 consumed all but item 5
    keys = consumed_keys(users, items, n_items)
    assert torch.equal(keys, torch.sort(keys).values)
    sampler = NegativeSampler(keys, n_items, torch.Generator().manual_seed(0), max_rounds=300)
    negs = sampler.sample(torch.tensor([0, 1] * 50), 3)
    assert negs.shape == (100, 3)
    assert torch.all(negs[0::2] == 5)
    assert not torch.isin(negs[1::2], torch.tensor([0, 5])).any()
    assert not is_consumed(pair_keys(torch.tensor([0, 1] * 50)[:, None].expand(-1, 3), negs, n_items), keys).any()
    assert sampler.n_unresolved == 0


def test_negative_sampler_counts_what_it_cannot_resolve() -> None:
    keys = consumed_keys(torch.zeros(3, dtype=torch.long), torch.arange(3), 3)  # user 0 consumed every item
    sampler = NegativeSampler(keys, 3, torch.Generator().manual_seed(0), max_rounds=3)
    assert sampler.sample(torch.zeros(4, dtype=torch.long), 2).shape == (4, 2)
    assert sampler.n_unresolved == 8


def test_positive_pairs_drop_oov_and_duplicates() -> None:
    ds = planted_block_dataset(n_groups=2, users_per_group=2, items_per_group=4, events_per_user=4)
    ds.item[0] = ds.item[1]  # a duplicate train pair
    ds.item[3] = ds.n_items  # an OOV test item
    ds.is_test[3] = True
    u, i = positive_pairs(ds, test=True)
    assert (i < ds.n_items).all() and len(set(zip(u.tolist(), i.tolist(), strict=True))) == u.size
    u_tr, _ = positive_pairs(ds, test=False)
    assert u_tr.size == int((~ds.is_test).sum()) - 1


# ---------------------------------------------------------------- learning
@pytest.mark.parametrize("loss", ["cosine", "bce", "softmax"])
def test_planted_blocks_are_recovered(loss: str) -> None:
    ds = planted_block_dataset()  # 8 groups × 25 users × 16 items
    result = pretrain(ds, PretrainConfig(loss=loss, **FAST))
    assert result.eval_auc is not None and result.eval_auc > 0.95, [e.eval_auc for e in result.epochs]
    assert result.epochs[0].eval_auc is not None and result.epochs[0].eval_auc < 0.9  # it learned, not given
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss
    # planted items are about equally popular, so popularity cannot explain the result
    assert result.metrics()["popularity_eval_auc"] < 0.6
    user_group = torch.arange(ds.n_users) // 25
    nearest = (result.user @ result.item[:-1].T).topk(5, dim=1).indices // 16  # (n_users, 5) groups
    assert torch.all(nearest == user_group[:, None])
    # outputs: unit rows and a zero pad/OOV row
    assert (
        result.item.shape == (ds.n_items + 1, PretrainConfig().embed_size) and torch.count_nonzero(result.item[-1]) == 0
    )
    assert torch.allclose(result.user.norm(dim=1), torch.ones(ds.n_users), atol=1e-4)


@pytest.mark.parametrize(("loss", "sparse"), [("cosine", True), ("bce", True), ("softmax", True), ("cosine", False)])
def test_every_parameter_changes_after_one_big_step(loss: str, sparse: bool) -> None:
    ds = planted_block_dataset(n_groups=2, users_per_group=8, items_per_group=8, events_per_user=8)
    cfg = PretrainConfig(loss=loss, lr=0.5, batch_size=64, neg_items=4, sparse_embeddings=sparse)
    trainer = PretrainTrainer(ds, cfg)
    assert len(trainer.optimizers) == (2 if sparse else 1)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    assert len(before) >= 10  # id + feature embeddings, linears, batch norms, both towers
    idx = trainer.batches()[0]
    trainer.step(trainer.train_pairs.users[idx], trainer.train_pairs.items[idx])
    unchanged = [n for n, p in trainer.model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []


def test_sparse_step_moves_only_the_batch_rows() -> None:
    ds = planted_block_dataset(n_groups=2, users_per_group=8, items_per_group=8, events_per_user=8)
    trainer = PretrainTrainer(ds, PretrainConfig(lr=0.1, batch_size=8))
    before = trainer.model.user_tower.id_embedding.weight.detach().clone()
    idx = trainer.batches()[0]
    users = trainer.train_pairs.users[idx]
    trainer.step(users, trainer.train_pairs.items[idx])
    moved = (trainer.model.user_tower.id_embedding.weight != before).any(dim=1)
    assert torch.equal(moved.nonzero().ravel(), torch.unique(users))


def test_same_seed_same_embeddings_other_seed_differs() -> None:
    ds = planted_block_dataset(n_groups=2, users_per_group=10, items_per_group=8, events_per_user=8)
    cfg = PretrainConfig(epochs=2, batch_size=32, lr=3e-3)
    a, b = pretrain(ds, cfg), pretrain(ds, cfg)
    assert torch.equal(a.user, b.user) and torch.equal(a.item, b.item)
    assert [e.train_loss for e in a.epochs] == [e.train_loss for e in b.epochs]
    c = pretrain(ds, PretrainConfig(epochs=2, batch_size=32, lr=3e-3, seed=1))
    assert not torch.equal(a.user, c.user)


def test_bf16_on_cpu_learns_the_planted_blocks() -> None:
    result = pretrain(planted_block_dataset(), PretrainConfig(bf16_on_cpu=True, **FAST))
    assert result.eval_auc is not None and result.eval_auc > 0.95
    assert result.user.dtype == torch.float32 and torch.count_nonzero(result.item[-1]) == 0


def test_id_only_towers_without_side_features() -> None:
    ds = planted_block_dataset(with_features=False)
    trainer = PretrainTrainer(ds, PretrainConfig(**FAST))
    assert trainer.model.user_tower.feature_names == [] and trainer.model.item_tower.feature_names == []
    result = trainer.fit()
    assert result.eval_auc is not None and result.eval_auc > 0.95


def test_no_test_split_gives_null_eval() -> None:
    ds = planted_block_dataset(n_groups=2, users_per_group=4, items_per_group=4, events_per_user=4)
    ds.is_test[:] = False
    result = pretrain(ds, PretrainConfig(epochs=1, batch_size=8))
    assert result.eval_auc is None and result.epochs[0].eval_loss is None
    assert result.metrics()["eval_auc"] is None


def test_config_validation() -> None:
    with pytest.raises(TopkrecError, match="--loss"):
        PretrainConfig(loss="hinge")
    with pytest.raises(TopkrecError, match="--batch-size"):
        PretrainConfig(batch_size=1)
    with pytest.raises(TopkrecError, match="--neg-items"):
        PretrainConfig(neg_items=0)
    cfg = PretrainConfig(hidden=(64,))
    assert PretrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.cuda
def test_cuda_run_keeps_data_on_device_and_learns() -> None:
    ds = planted_block_dataset()
    trainer = PretrainTrainer(ds, PretrainConfig(**FAST), device="cuda")
    assert trainer.train_pairs.users.is_cuda and trainer.sampler.sorted_keys.is_cuda
    assert trainer.model.item_tower.feature_codes.is_cuda
    users = trainer.train_pairs.users[:512]
    negs = trainer.sampler.sample(users, 4)  # the sync-free CUDA path
    keys = pair_keys(users[:, None].expand(-1, 4), negs, ds.n_items)
    assert negs.is_cuda and not is_consumed(keys, trainer.sampler.sorted_keys).any()
    result = trainer.fit()
    assert result.eval_auc is not None and result.eval_auc > 0.95
    assert not result.user.is_cuda
