"""Data-parallel training across processes: PyTorch DDP launched by ``torchrun`` (DESIGN §8).

Nothing home-made: gradients are averaged by ``torch.nn.parallel.DistributedDataParallel``; this
module only reads the environment ``torchrun`` sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``), starts the process group once (NCCL on CUDA, Gloo on CPU), and
gives the training loops the few things they need:

- ``DistContext.shard(idx)`` — this rank's contiguous part of a global batch of indices. Every rank
  draws the same seeded permutation, so the ranks together see exactly the global batch a single
  process would see.
- ``DistContext.loss_scale(n_local, n_global)`` — the factor on a rank's mean loss that makes DDP's
  gradient average the single-process gradient of the global batch mean, also for unequal parts.
- ``DistContext.all_reduce_sum(t)`` — sums of metrics over ranks (at logging time, not per step).
- ``DistContext.is_main`` — only rank 0 writes artifacts, checkpoints, logs and progress bars.

Without ``torchrun`` (no ``TORCHELASTIC_RUN_ID`` and ``WORLD_SIZE`` unset or 1) everything here is a
no-op and nothing from ``torch.distributed`` is touched. Under torchrun with one process the group is
started all the same, so the DDP path runs (and can be checked on a machine with one GPU).
"""

from __future__ import annotations

import atexit
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from topkrec.errors import TopkrecError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = ["DistContext", "env_rank", "env_world_size", "setup", "teardown"]

_OWNED = False  # True when setup() started the process group (teardown() then destroys it)


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun (1 without it)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError as e:
        raise TopkrecError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from e


def env_rank() -> int:
    """``RANK`` as set by torchrun (0 without it): lets the CLI quiet every rank but the first."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError as e:
        raise TopkrecError(f"RANK={os.environ['RANK']!r} is not an integer") from e


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the group; the default is the single-process case."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # a process group is up (torchrun), also with a single process

    @property
    def enabled(self) -> bool:
        """Data-parallel: DDP wraps the model, metrics are all-reduced, sparse gradients are avoided. True
        under torchrun even with one process, so ``--nproc-per-node 1`` runs the same code path."""
        return self.launched or self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of ``idx`` (parts differ in length by at most one)."""
        if not self.enabled:
            return idx
        import torch

        return torch.tensor_split(idx, self.world_size)[self.rank]

    def loss_scale(self, n_local: int, n_global: int) -> float:
        """Factor on this rank's mean loss so that DDP's gradient *average* over ranks is the gradient of the
        global batch mean, also when the ranks' shares differ in size.

        DDP averages: (1/W) Σ_r ∇(c_r · mean_r) = Σ_r (n_r / n) ∇mean_r = ∇(Σ_r sum_r / n) for c_r = W · n_r / n.
        A rank with no rows gets 0.
        """
        if n_global < 1 or not 0 <= n_local <= n_global:
            raise ValueError(f"bad shard: {n_local} of {n_global} rows on {self.world_size} ranks")
        return self.world_size * n_local / n_global

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over ranks in place (no-op for one process); returns ``t``."""
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def wrap(self, module: torch.nn.Module, device: torch.device, **ddp_kwargs: Any) -> torch.nn.Module:
        """``module`` itself for one process, else ``DistributedDataParallel(module)`` on ``device``.

        Buffers are not re-broadcast before every forward (DDP's default): the agent's buffers (sampled
        heads' proposal tables, up to n_items long) are identical on every rank by construction, and
        pretraining keeps per-rank batch-norm statistics (docs/pretrain.md).
        """
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        kwargs = {**_no_forward_buffer_sync(), **ddp_kwargs}
        return DistributedDataParallel(module, device_ids=ids, output_device=ids[0] if ids else None, **kwargs)


def _no_forward_buffer_sync() -> dict[str, bool]:
    """DDP keyword that turns off the buffer broadcast before every forward: ``forward_sync_buffers=False``
    where torch has it (``broadcast_buffers`` is deprecated there), ``broadcast_buffers=False`` before."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": False}


def setup(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join (or start) the process group when launched by torchrun; return the context and the device.

    On CUDA each rank trains on ``cuda:LOCAL_RANK``. Called without torchrun it returns the
    single-process context and ``device`` unchanged. Idempotent: a group already started (by us or by
    the caller's own script) is reused.
    """
    global _OWNED
    import torch

    world = env_world_size()
    if world == 1 and "TORCHELASTIC_RUN_ID" not in os.environ:  # torchrun sets it, also for one process
        return DistContext(), device
    import torch.distributed as dist

    rank = env_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise TopkrecError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s): "
                "use --nproc-per-node <= the number of GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
        _OWNED = True
        # A caller that never calls teardown() (a script around train_agent) still destroys the group while
        # the interpreter is alive: left to interpreter exit, Gloo aborted rank 1 here now and then.
        atexit.register(teardown)
        logger.info("process group started: rank %d of %d (%s, %s)", rank, world, backend, device)
    ctx = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, launched=True)
    return ctx, device


def teardown() -> None:
    """Destroy the process group if ``setup`` started it (a caller's own group is left alone)."""
    global _OWNED
    if _OWNED:
        import gc

        import torch.distributed as dist

        # DDP wrappers sit in reference cycles: collect them while the group is alive, not at interpreter
        # exit, where a Gloo worker thread torn down late aborts the process ("terminate called without an
        # active exception", seen here on rank 1 after a run had finished).
        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()
        _OWNED = False
