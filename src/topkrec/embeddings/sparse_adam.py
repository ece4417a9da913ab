"""``torch.optim.SparseAdam``'s update, computed on gathered rows instead of through sparse tensors.

``RowGatherSparseAdam`` is a drop-in ``SparseAdam`` (same constructor, state and ``state_dict``) whose step
gives **bitwise the same parameters and moments**: the same float32 operations in the same order on the
same values (checked against ``SparseAdam`` in tests/embeddings/test_pretrain_speed.py). What it skips is the
sparse-tensor machinery around them, which dominated the pretraining step on CPU (profiled on the
reference-scale data, batch 2 048: ``SparseAdam.step`` 20–28 ms of an 86 ms step, the update maths on
the ~6 000 touched rows well under 1 ms of it):

- ``grad.coalesce()`` builds a new sparse tensor around its sort and row sums: here the same sort
  and sums, kept as plain tensors (``coalesced_rows``);
- ``exp_avg.sparse_mask(grad)`` ×2 and three ``dense.add_(sparse)`` per table: here ``index_select`` /
  ``index_add_`` on the unique rows (``index_add_`` with unique indices is ``row + update`` per element,
  as the sparse add is).
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["RowGatherSparseAdam", "coalesced_rows"]


def coalesced_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted unique row indices, summed values) of a row-sparse COO gradient: the indices and values of
    ``grad.coalesce()``, bitwise, without building the coalesced tensor.

    Coalescing sorts the indices with ``torch.sort`` (not stable) and sums the values of equal indices
    one after the other in that sorted order; the same sort and an ``index_add_`` of the permuted values
    (sequential per row on CPU) give the same floats (checked in tests/embeddings/test_pretrain_speed.py). On other
    devices it calls ``coalesce`` itself."""
    indices, values = grad._indices(), grad._values()
    if indices.shape[0] != 1:
        raise ValueError("only row-sparse gradients (one sparse dimension, as nn.Embedding emits) are supported")
    if grad.is_coalesced():
        return indices[0], values
    if grad.device.type != "cpu":
        # CUDA's index_add_ sums duplicates with atomics (run-to-run order); its coalesce is deterministic.
        coalesced = grad.coalesce()
        return coalesced._indices()[0], coalesced._values()
    sorted_indices, order = torch.sort(indices[0])
    rows, inverse = torch.unique_consecutive(sorted_indices, return_inverse=True)
    summed = values.new_zeros((rows.shape[0], *values.shape[1:]))
    return rows, summed.index_add_(0, inverse, values.index_select(0, order))


class RowGatherSparseAdam(torch.optim.SparseAdam):
    """``torch.optim.SparseAdam`` with the same results, computed on gathered rows (module docstring)."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            eps, lr, maximize = group["eps"], float(group["lr"]), group.get("maximize", False)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError("SparseAdam does not support dense gradients, please consider Adam instead")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                rows, grad_values = coalesced_rows(-p.grad if maximize else p.grad)
                if grad_values.numel() == 0:
                    continue
                exp_avg, exp_avg_sq, step = state["exp_avg"], state["exp_avg_sq"], state["step"]
                # The operations of torch.optim._functional.sparse_adam, in its order, on the gathered rows.
                old_exp_avg_values = exp_avg.index_select(0, rows)
                exp_avg_update_values = grad_values.sub(old_exp_avg_values).mul_(1 - beta1)
                exp_avg.index_add_(0, rows, exp_avg_update_values)
                old_exp_avg_sq_values = exp_avg_sq.index_select(0, rows)
                exp_avg_sq_update_values = grad_values.pow(2).sub_(old_exp_avg_sq_values).mul_(1 - beta2)
                exp_avg_sq.index_add_(0, rows, exp_avg_sq_update_values)
                numer = exp_avg_update_values.add_(old_exp_avg_values)
                exp_avg_sq_update_values.add_(old_exp_avg_sq_values)
                denom = exp_avg_sq_update_values.sqrt_().add_(eps)
                bias_correction1 = 1 - beta1**step
                bias_correction2 = 1 - beta2**step
                step_size = lr * math.sqrt(bias_correction2) / bias_correction1
                p.index_add_(0, rows, -step_size * numer.div_(denom))
        return loss
