"""Triton kernels checked without a GPU by Triton's interpreter (skipped where triton is not installed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1] / "support"

PROBE = """
import torch, triton, triton.language as tl
@triton.jit
def k(X, BLOCK: tl.constexpr):
    r = tl.arange(0, BLOCK)
    start = tl.program_id(0) * 0  # a loop bound computed in the kernel, as the real kernels have
    for i in range(start, start + 1, 1):
        tl.store(X + r, tl.load(X + r) + 1.0)
x = torch.zeros(16)
k[(1,)](x, BLOCK=16)
assert float(x.sum()) == 16.0
"""


def _interpret_env() -> dict[str, str]:
    return {**os.environ, "TRITON_INTERPRET": "1"}


@pytest.fixture(scope="module")
def interpreter() -> None:
    pytest.importorskip("triton")
    probe = subprocess.run([sys.executable, "-c", PROBE], env=_interpret_env(), capture_output=True, text=True)
    if probe.returncode != 0:  # e.g. Triton 3.6's interpreter with NumPy >= 2.3 ("only 0-dimensional arrays…")
        pytest.skip(f"Triton's interpreter does not run here: {probe.stderr.strip().splitlines()[-1]}")


def test_kernels_match_the_pytorch_maths_in_the_interpreter(interpreter: None) -> None:
    proc = subprocess.run(
        [sys.executable, str(HERE / "triton_interpret_check.py")],
        env=_interpret_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(" ok") == 6


def test_autotune_key_buckets_the_row_count() -> None:
    pytest.importorskip("triton")
    from topkrec.kernels.triton_softmax import _rows_bucket

    assert [_rows_bucket(n) for n in (1, 2, 3, 64, 65, 4000, 4096)] == [1, 2, 4, 64, 128, 4096, 4096]
