"""The device is decided once, here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from topkrec.errors import TopkrecError

if TYPE_CHECKING:
    import torch


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
