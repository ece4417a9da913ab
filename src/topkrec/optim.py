"""The optimisers of the agent: dense Adam, lazy row-wise Adam for row-sparse heads, and both as one.

``build_optimizer`` makes Adam over π's side (encoder, π head, trainable embeddings) and β̂'s head as two
param groups; sampled-softmax heads get row-sparse gradients and ``RowSparseAdam`` (``SparseDenseAdam``
joins the two). ``optimizer_state_tensors`` / ``load_optimizer_state`` turn an optimizer's state into
safetensors-ready tensors plus JSON and back (the model directory's ``optimizer.*`` files,
:mod:`topkrec.policy.artifact`).

Lazy (row-wise) Adam for parameters with row-sparse COO gradients: ``RowSparseAdam`` updates only the rows
present in a parameter's sparse gradient, with exactly the arithmetic of ``torch.optim.Adam`` on those rows
(``m̂ / (√v̂ + ε)``, ε added after the bias correction). ``torch.optim.SparseAdam`` instead adds ε before the
√ bias correction, which at step 1 acts like a ε about 30 × larger; this class keeps the dense optimizer's
maths so that, with fresh state, one step equals dense Adam exactly on every row (untouched rows have zero
moments and do not move under either).

Lazy Adam's documented difference from dense Adam after the first step: a row's moments decay only on
the steps whose gradient contains that row, while the bias correction uses the parameter's global step
count; dense Adam keeps moving an untouched row on its decaying momentum, lazy Adam leaves it as it is.
A step costs O(rows touched · d) plus a sort of the touched indices, instead of O(N · d).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from topkrec.errors import ArtifactError, TopkrecError

if TYPE_CHECKING:
    from topkrec.policy.config import TrainConfig
    from topkrec.policy.model import Agent

__all__ = [
    "Optimizer",
    "RowSparseAdam",
    "SparseDenseAdam",
    "build_optimizer",
    "load_optimizer_state",
    "optimizer_state_tensors",
]


class RowSparseAdam(torch.optim.Optimizer):
    """Adam over the rows of dim 0 touched by each step's sparse COO gradient (no weight decay)."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if lr <= 0 or eps < 0 or not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid RowSparseAdam settings lr={lr} betas={betas} eps={eps}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("RowSparseAdam does not take a closure")
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not grad.is_sparse:
                    raise RuntimeError("RowSparseAdam needs sparse COO gradients; use torch.optim.Adam for dense ones")
                grad = grad.coalesce()
                rows = grad.indices()[0]
                values = grad.values().to(p.dtype)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] = int(state["step"]) + 1
                t = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                m = exp_avg.index_select(0, rows).lerp_(values, 1.0 - beta1)
                v = exp_avg_sq.index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1.0 - beta2)
                exp_avg.index_copy_(0, rows, m)
                exp_avg_sq.index_copy_(0, rows, v)
                bias_correction1 = 1.0 - beta1**t
                bias_correction2_sqrt = math.sqrt(1.0 - beta2**t)
                denom = v.sqrt_().div_(bias_correction2_sqrt).add_(eps)
                update = m.div_(denom).mul_(-lr / bias_correction1)
                p.index_add_(0, rows, update)


class SparseDenseAdam:
    """Adam for the dense parameters plus a lazy row-wise Adam for row-sparse ones, as one optimizer.

    The sampled-softmax heads' (N, d) weight and (N,) bias get row-sparse gradients (only the logged
    actions' and the shared negatives' rows), and ``RowSparseAdam`` updates
    only those rows and their moments ("lazy Adam"), so a step costs O((B + S)·d) there instead of
    O(N·d). On the touched rows the arithmetic is Adam's; with fresh state, one step equals dense
    Adam's on every row (dense Adam moves no untouched row on its first step either). The documented
    difference afterwards: a row's moments decay only on the steps that touch it, while the bias
    correction uses the global step count, and untouched rows do not keep moving on their old
    momentum as under dense Adam.

    ``state_dict()`` numbers the dense optimizer's parameters first and the sparse ones after them,
    with the sparse param groups marked ``"sparse": True``; ``load_state_dict`` splits it back.
    """

    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.Optimizer) -> None:
        self.dense = dense
        self.sparse = sparse

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [*self.dense.param_groups, *self.sparse.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.sparse.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()
        self.sparse.step()

    def _n_dense(self) -> int:
        return sum(len(g["params"]) for g in self.dense.param_groups)

    def state_dict(self) -> dict[str, Any]:
        dense, sparse = self.dense.state_dict(), self.sparse.state_dict()
        off = self._n_dense()
        state = dict(dense["state"])
        state.update({int(pid) + off: st for pid, st in sparse["state"].items()})
        groups = list(dense["param_groups"])
        groups += [dict(g, params=[int(p) + off for p in g["params"]], sparse=True) for g in sparse["param_groups"]]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = state_dict["param_groups"]
        n_groups = len(self.dense.param_groups)
        if len(groups) != n_groups + len(self.sparse.param_groups) or any(
            bool(g.get("sparse", False)) != (i >= n_groups) for i, g in enumerate(groups)
        ):
            raise ValueError("the saved optimizer's dense/sparse param groups do not match this model's")
        off = self._n_dense()
        state = {int(k): v for k, v in state_dict["state"].items()}
        self.dense.load_state_dict(
            {"state": {k: v for k, v in state.items() if k < off}, "param_groups": groups[:n_groups]}
        )
        sparse_groups = [
            {k: v for k, v in dict(g, params=[int(p) - off for p in g["params"]]).items() if k != "sparse"}
            for g in groups[n_groups:]
        ]
        self.sparse.load_state_dict(
            {"state": {k - off: v for k, v in state.items() if k >= off}, "param_groups": sparse_groups}
        )


Optimizer = torch.optim.Optimizer | SparseDenseAdam


def build_optimizer(agent: Agent, config: TrainConfig, allow_sparse: bool = True) -> Optimizer:
    """Adam over π's side (encoder, π head, trainable embeddings) and β̂'s head, as two param groups.

    Sampled-softmax heads (``--softmax sampled``) train with row-sparse gradients and a lazy row-wise
    Adam over their weight and bias (see ``SparseDenseAdam``), unless weight decay is set (decay
    touches every row each step, so the heads then keep dense gradients and dense Adam) or
    ``allow_sparse`` is false (several processes: DDP all-reduces dense gradients on every backend).
    """
    from topkrec.heads.sampled import SampledSoftmaxHead

    behavior_lr = config.behavior_lr if config.behavior_lr is not None else config.lr
    sparse_ok = allow_sparse and config.weight_decay == 0.0
    sparse_groups: list[dict[str, Any]] = []
    sparse_ids: set[int] = set()
    for head, lr in ((agent.policy_head, config.lr), (agent.behavior_head, behavior_lr)):
        if isinstance(head, SampledSoftmaxHead):
            head.sparse_grad = sparse_ok
            params = [p for p in (head.weight, head.bias) if p.requires_grad]
            if sparse_ok and params:
                sparse_groups.append({"params": params, "lr": lr})
                sparse_ids.update(id(p) for p in params)
    behavior = [p for p in agent.behavior_head.parameters() if p.requires_grad and id(p) not in sparse_ids]
    behavior_ids = {id(p) for p in agent.behavior_head.parameters()}
    policy = [p for p in agent.parameters() if p.requires_grad and id(p) not in behavior_ids | sparse_ids]
    groups = [{"params": policy, "lr": config.lr}, {"params": behavior, "lr": behavior_lr}]
    device = next(agent.parameters()).device
    # The fused kernel does the whole update in one pass over each tensor (CPU and CUDA).
    fused = device.type in ("cpu", "cuda")
    dense = torch.optim.Adam(groups, weight_decay=config.weight_decay, fused=fused)
    if not sparse_groups:
        return dense
    return SparseDenseAdam(dense, RowSparseAdam(sparse_groups))


def optimizer_state_tensors(optimizer: Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    meta = {"param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, meta


def load_optimizer_state(
    optimizer: Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any], source: str
) -> None:
    """Restore ``optimizer`` from ``optimizer_state_tensors``' output (``source`` names the files in errors)."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, extra in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    saved_sparse = any(g.get("sparse") for g in groups)
    if saved_sparse != isinstance(optimizer, SparseDenseAdam):
        kinds = {True: "row-sparse Adam (one process)", False: "dense Adam (several processes, or weight decay)"}
        raise TopkrecError(
            f"--resume: the sampled-softmax heads in {source} were trained with {kinds[saved_sparse]}, this run "
            f"would use {kinds[not saved_sparse]}; resume on the same number of processes (one vs several)"
        )
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise ArtifactError(f"{source}: optimizer state does not match the model ({e}); cannot --resume") from e
