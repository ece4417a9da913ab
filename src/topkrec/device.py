"""The device is decided once, here; and the process's CPU allocator is set up for training (``tune_cpu_allocator``)."""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from topkrec.errors import TopkrecError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

THP_PATH = "/sys/kernel/mm/transparent_hugepage/enabled"
ALLOCATOR_ENV_OPT_OUT = "TOPKREC_NO_MALLOC_TUNING"


def check_device_name(name: str) -> None:
    """Refuse a device name that is not auto, cpu, cuda or cuda:N (a settings check: no torch needed)."""
    kind, _, index = name.partition(":")
    if not (name in ("auto", "cpu", "cuda") or (kind == "cuda" and index.isdigit())):
        raise TopkrecError(f"--device must be auto, cpu, cuda or cuda:N (got {name!r})")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → cuda if available else cpu; ``cuda`` without CUDA is a clear error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TopkrecError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise TopkrecError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def tune_cpu_allocator() -> bool:
    """Back PyTorch's large CPU tensors with transparent huge pages (``THP_MEM_ALLOC_ENABLE=1``).

    A training step allocates and frees buffers of tens to hundreds of MB every step (the heads' (B, N)
    logits and their gradient: 160 MB at the default batch 800 and 50 000 items). glibc maps such blocks
    afresh and unmaps them on free, so every step faults every 4 KB page in again: 39 000 minor faults per
    step in ``topkrec train`` on the reference-scale data. With PyTorch's own setting its allocator aligns
    blocks of 2 MB and more to 2 MB and asks the kernel for huge pages (``madvise``), 512 pages per fault:
    the same command trained 1 886–2 287 rows/s against 1 567–1 993 without it (three alternating pairs), with
    the same last loss
    (docs/scale.md, "Set-up, allocation, and a layout that did not pay").

    PyTorch reads the variable once, at its first allocation, so this must run before ``torch`` is imported:
    the ``topkrec`` command calls it first thing. It does nothing (and returns False) off Linux, when the
    kernel's THP mode is ``never``, when ``torch`` is already imported, when ``TOPKREC_NO_MALLOC_TUNING=1``,
    or when the user set ``THP_MEM_ALLOC_ENABLE`` themselves. Returns whether it set the variable.
    """
    if os.environ.get(ALLOCATOR_ENV_OPT_OUT, "") not in ("", "0") or "THP_MEM_ALLOC_ENABLE" in os.environ:
        return False
    if not sys.platform.startswith("linux") or "torch" in sys.modules:
        return False
    try:
        with open(THP_PATH, encoding="ascii") as f:
            mode = f.read()
    except OSError:
        return False
    if "[always]" not in mode and "[madvise]" not in mode:
        return False
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
    logger.debug("THP_MEM_ALLOC_ENABLE=1: PyTorch's large CPU tensors use transparent huge pages")
    return True
