"""The pretraining speed-ups change no result: each faster path against the implementation it replaced.

- ``RowGatherSparseAdam`` against ``torch.optim.SparseAdam`` (bitwise: parameters, moments, state_dict);
- the whole training step against the same trainer with torch's ``SparseAdam`` and default (for-loop) Adam;
- the CPU negative sampler (re-checks only redrawn positions, sorted queries) against the full re-check loop;
- evaluation through distinct ids against towers run on every eval pair;
- the sort-based unique helpers against ``np.unique`` / ``torch.unique``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from topkrec.embeddings.config import PretrainConfig
from topkrec.embeddings.losses import bce_loss, cosine_loss, in_batch_softmax_loss
from topkrec.embeddings.planted import planted_block_dataset
from topkrec.embeddings.sampling import (
    NegativeSampler,
    consumed_keys,
    is_consumed,
    pair_keys,
    sorted_unique,
    unique_keys,
)
from topkrec.embeddings.sparse_adam import RowGatherSparseAdam, coalesced_rows
from topkrec.embeddings.train import PretrainTrainer, _unique_inverse, roc_auc


def _sparse_grad(n_rows: int, width: int, ids: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    emb = torch.nn.Embedding(n_rows, width, sparse=True)
    (emb(ids) * torch.randn(ids.shape[0], width, generator=gen)).sum().backward()
    assert emb.weight.grad is not None and not emb.weight.grad.is_coalesced()
    return emb.weight.grad


@pytest.mark.parametrize(("n_rows", "n_ids"), [(5, 2048), (50, 4096), (4000, 4096), (80000, 2048)])
def test_coalesced_rows_is_coalesce_bitwise(n_rows: int, n_ids: int) -> None:
    gen = torch.Generator().manual_seed(n_rows)
    grad = _sparse_grad(n_rows, 8, torch.randint(0, n_rows, (n_ids,), generator=gen), gen)
    rows, values = coalesced_rows(grad)
    ref = grad.coalesce()
    assert torch.equal(rows, ref.indices()[0])
    assert torch.equal(values, ref.values())  # same sums in the same order: same floats


@pytest.mark.parametrize("maximize", [False, True])
def test_row_gather_sparse_adam_equals_torch_sparse_adam(maximize: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    tables = [(20000, 64, 2048), (6, 16, 2048), (3000, 16, 4096)]
    ours = [torch.nn.Embedding(n, d, sparse=True) for n, d, _ in tables]
    ref = [torch.nn.Embedding(n, d, sparse=True) for n, d, _ in tables]
    for a, b in zip(ours, ref, strict=True):
        b.weight.data.copy_(a.weight.data)
    opt_ours = RowGatherSparseAdam([e.weight for e in ours], lr=0.01, maximize=maximize)
    opt_ref = torch.optim.SparseAdam([e.weight for e in ref], lr=0.01, maximize=maximize)
    for step in range(12):
        for (n, d, b), e_ours, e_ref in zip(tables, ours, ref, strict=True):
            ids = torch.randint(0, n if step % 2 else min(n, 40), (b,), generator=gen)  # many duplicates
            w = torch.randn(b, d, generator=gen)
            (e_ours(ids) * w).sum().backward()
            (e_ref(ids) * w).sum().backward()
        opt_ours.step()
        opt_ref.step()
        opt_ours.zero_grad()
        opt_ref.zero_grad()
    for e_ours, e_ref in zip(ours, ref, strict=True):
        assert torch.equal(e_ours.weight, e_ref.weight)
        s_ours, s_ref = opt_ours.state[e_ours.weight], opt_ref.state[e_ref.weight]
        assert s_ours["step"] == s_ref["step"] == 12
        assert torch.equal(s_ours["exp_avg"], s_ref["exp_avg"])
        assert torch.equal(s_ours["exp_avg_sq"], s_ref["exp_avg_sq"])
    # the state_dict has SparseAdam's layout: one loads into the other
    torch.optim.SparseAdam([e.weight for e in ref], lr=0.01).load_state_dict(opt_ours.state_dict())


def test_row_gather_sparse_adam_refuses_dense_gradients() -> None:
    p = torch.nn.Parameter(torch.zeros(3, 2))
    p.grad = torch.ones(3, 2)
    with pytest.raises(RuntimeError, match="dense gradients"):
        RowGatherSparseAdam([p]).step()


@pytest.mark.parametrize("loss", ["cosine", "softmax"])
def test_training_steps_equal_torch_optimizers_bitwise(loss: str) -> None:
    """The default trainer against the same trainer with torch.optim.SparseAdam and for-loop Adam."""
    ds = planted_block_dataset(n_groups=3, users_per_group=12, items_per_group=10, events_per_user=10)
    cfg = PretrainConfig(batch_size=64, lr=0.01, loss=loss, neg_items=2)
    ours, ref = PretrainTrainer(ds, cfg), PretrainTrainer(ds, cfg)
    assert isinstance(ours.optimizers[1], RowGatherSparseAdam)
    sparse = [m.weight for m in ref.model.modules() if isinstance(m, torch.nn.Embedding)]
    dense = [p for p in ref.model.parameters() if all(p is not s for s in sparse)]
    ref.optimizers = [torch.optim.Adam(dense, lr=cfg.lr, foreach=False), torch.optim.SparseAdam(sparse, lr=cfg.lr)]
    # batches() draws from the generator the negatives come from: both trainers draw their own, in step
    for idx, ref_idx in list(zip(ours.batches(), ref.batches(), strict=True))[:6]:
        assert torch.equal(idx, ref_idx)
        users, items = ours.train_pairs.users[idx], ours.train_pairs.items[idx]
        assert torch.equal(ours.step(users, items), ref.step(users, items))
    for (name, p), q in zip(ours.model.named_parameters(), ref.model.parameters(), strict=True):
        assert torch.equal(p, q), name


def _full_recheck_sample(sampler: NegativeSampler, users: torch.Tensor, k: int) -> torch.Tensor:
    """The sampler's previous CPU loop: re-check every position each round."""
    shape = (users.shape[0], k)
    items = torch.randint(0, sampler.n_items, shape, generator=sampler.generator)
    users_k = users[:, None].expand(shape)
    for _ in range(sampler.max_rounds):
        hit = is_consumed(pair_keys(users_k, items, sampler.n_items), sampler.sorted_keys)
        if not bool(hit.any()):
            return items
        fresh = torch.randint(0, sampler.n_items, shape, generator=sampler.generator)
        items = torch.where(hit, fresh, items)
    return items


def test_cpu_sampler_draws_what_the_full_recheck_loop_draws() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 300, 40  # dense consumption: many collisions and several rounds
    users = torch.from_numpy(rng.integers(0, n_users, 6000))
    items = torch.from_numpy(rng.integers(0, n_items, 6000))
    keys = consumed_keys(users, items, n_items)
    ours = NegativeSampler(keys, n_items, torch.Generator().manual_seed(3))
    ref = NegativeSampler(keys, n_items, torch.Generator().manual_seed(3))
    for b in (1, 70, 500):  # below and above the sorted-query threshold
        batch = torch.from_numpy(rng.integers(0, n_users, b))
        got, want = ours.sample(batch, 3), _full_recheck_sample(ref, batch, 3)
        assert torch.equal(got, want)
        assert torch.equal(ours.generator.get_state(), ref.generator.get_state())  # same number of draws


def test_is_consumed_with_sorted_queries_matches_isin() -> None:
    gen = torch.Generator().manual_seed(0)
    table = torch.unique(torch.randint(0, 10_000, (3000,), generator=gen))
    for n in (5, 64, 65, 4096):
        queries = torch.randint(0, 10_001, (n,), generator=gen)
        assert torch.equal(is_consumed(queries, table), torch.isin(queries, table))
    grid = torch.randint(0, 10_000, (100, 3), generator=gen)
    assert torch.equal(is_consumed(grid, table), torch.isin(grid, table))


def _per_pair_evaluate(trainer: PretrainTrainer) -> tuple[float, float]:
    """The previous evaluation: the towers on every eval pair, batch by batch."""
    cfg, model = trainer.config, trainer.model
    model.eval()
    loss_sum, n_rows, pos_all, neg_all = 0.0, 0, [], []
    with torch.no_grad():
        for s in range(0, len(trainer.eval_pairs), cfg.batch_size):
            users = trainer.eval_pairs.users[s : s + cfg.batch_size]
            items = trainer.eval_pairs.items[s : s + cfg.batch_size]
            negs = trainer.eval_negatives[s : s + cfg.batch_size]
            scores = model(users, torch.cat([items[:, None], negs], dim=1)).float()
            pos_all.append(scores[:, 0])
            neg_all.append(scores[:, 1:])
            if cfg.loss == "softmax":
                u, v = model.user_tower(users), model.item_tower(items)
                batch_loss = in_batch_softmax_loss(u, v, items, trainer.item_log_q[items], cfg.temperature)
            elif cfg.loss == "cosine":
                batch_loss = cosine_loss(scores[:, 0], scores[:, 1:])
            else:
                batch_loss = bce_loss(scores[:, 0], scores[:, 1:], cfg.temperature)
            loss_sum += float(batch_loss) * users.shape[0]
            n_rows += users.shape[0]
    auc = roc_auc(torch.cat(pos_all).numpy(), torch.cat(neg_all).numpy())
    return loss_sum / n_rows, auc


@pytest.mark.parametrize("loss", ["cosine", "bce", "softmax"])
def test_evaluate_over_distinct_ids_equals_per_pair_towers(loss: str) -> None:
    ds = planted_block_dataset(n_groups=4, users_per_group=15, items_per_group=12, events_per_user=12)
    trainer = PretrainTrainer(ds, PretrainConfig(batch_size=48, lr=0.01, loss=loss, neg_items=2))
    for idx in trainer.batches()[:5]:
        trainer.step(trainer.train_pairs.users[idx], trainer.train_pairs.items[idx])
    want_loss, want_auc = _per_pair_evaluate(trainer)
    got_loss, got_auc = trainer.evaluate()
    assert got_loss == pytest.approx(want_loss, rel=1e-6) and got_auc == pytest.approx(want_auc, abs=1e-9)
    assert 0.0 < got_auc < 1.0


def test_sorted_unique_and_unique_keys_equal_numpy_and_torch_unique() -> None:
    rng = np.random.default_rng(0)
    cases = (rng.integers(0, 50, 1000), rng.integers(0, 10**12, 5000), np.array([], dtype=np.int64), np.array([7]))
    for values in cases:
        assert np.array_equal(sorted_unique(values), np.unique(values))
        assert torch.equal(unique_keys(torch.from_numpy(values)), torch.unique(torch.from_numpy(values)))


def test_unique_inverse_equals_torch_unique() -> None:
    gen = torch.Generator().manual_seed(0)
    for shape, n in (((1000,), 30), ((500, 3), 2000), ((1,), 5)):
        ids = torch.randint(0, n, shape, generator=gen)
        got, want = _unique_inverse(ids, n), torch.unique(ids, return_inverse=True)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
