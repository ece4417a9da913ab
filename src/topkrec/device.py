"""The device is decided once, here; and the process's CPU allocator is set up for training (``tune_cpu_allocator``)."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import TYPE_CHECKING

from topkrec.errors import TopkrecError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
"""Blocks below this come from the heap, not a fresh mmap: glibc's largest allowed value on 64-bit."""
TRIM_THRESHOLD = 256 << 20
"""Free memory at the top of the heap that glibc keeps instead of handing back to the system."""
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
    """Keep glibc's malloc from returning the training step's big buffers to the system every step.

    A full-softmax step allocates and frees a few (B, N) and (N, d) buffers every step (25.6 MB and 12.8 MB
    at batch 128 and 50 000 items). glibc's defaults hand such memory back to the system: a block above the
    dynamic mmap threshold is mapped afresh and unmapped on free (the threshold only rises to the size of the
    last mapped block freed, so a larger block is mapped again: sizes change when the π head's rows follow the
    rewarded rows or windows carry different row counts), and the heap is trimmed whenever more than twice
    that threshold is free at its top, as after a step that frees both heads' buffers. Either way the next
    step faults every page in again: 6 548 minor faults per step in ``benchmarks/bench_train.py``'s real
    path. Fixing the mmap threshold at 32 MB and the trim threshold at 256 MB keeps such blocks in the heap;
    after a few steps' warm-up only the pages a block grows by are new
    (0 faults per step in that benchmark). The cost is resident memory the process keeps: +160 to +280 MB
    measured for one 25.6 MB buffer reallocated 100 times.

    Called by the ``topkrec`` command before any command runs. It does nothing (and returns False) off Linux,
    without glibc, when ``TOPKREC_NO_MALLOC_TUNING=1``, or when the user set ``MALLOC_MMAP_THRESHOLD_`` /
    ``MALLOC_TRIM_THRESHOLD_`` themselves. Returns whether both settings were applied.
    """
    if os.environ.get(ALLOCATOR_ENV_OPT_OUT, "") not in ("", "0"):
        return False
    if not sys.platform.startswith("linux") or any(
        k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):  # glibc only (musl has no such thresholds)
            return False
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, ValueError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    logger.debug("glibc malloc: mmap threshold %d, trim threshold %d (%s)", MMAP_THRESHOLD, TRIM_THRESHOLD, ok)
    return ok
