"""tune_cpu_allocator: the training step's big buffers stop being faulted in again every step (glibc)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"), reason="glibc only"
)

# A training step's big buffers change size from step to step (the π head's (N, rows) buffer follows the number
# of rewarded rows in the batch): allocate, touch and free a ~20 MB buffer 40 times, 64 KiB larger each time,
# and print whether the tuning was applied and the minor page faults of each of the last 30 rounds.
_PROBE = """
import resource, sys
import torch
from topkrec.device import tune_cpu_allocator

applied = tune_cpu_allocator() if sys.argv[1] == "tune" else None
faults = []
for i in range(40):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(5_000_000 + 16_384 * i).fill_(1.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(applied, max(faults[10:]))
"""


def _probe(mode: str, **env: str) -> tuple[str, float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "TOPKREC_NO_MALLOC_TUNING"}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, env={**clean, **env}
    ).stdout.split()
    return out[0], float(out[1])


def test_tuning_stops_the_per_step_page_faults() -> None:
    _, untuned = _probe("plain")
    applied, tuned = _probe("tune")
    assert applied == "True"
    assert untuned > 4000  # glibc maps and unmaps the block every round: ~5 000 pages of 4 KiB each time
    assert tuned < 100  # only the 16 new pages of each round (after a warm-up of a few rounds)


@pytest.mark.parametrize(
    "env", [{"TOPKREC_NO_MALLOC_TUNING": "1"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}, {"MALLOC_MMAP_THRESHOLD_": "1"}]
)
def test_opt_out_and_the_users_own_malloc_settings_are_respected(env: dict[str, str]) -> None:
    applied, _ = _probe("tune", **env)
    assert applied == "False"


def test_the_cli_tunes_before_any_command() -> None:
    """The `topkrec` entry point calls it (here before `version`), in a fresh interpreter."""
    code = (
        "import sys, topkrec.device as d\n"
        "calls = []\n"
        "d.tune_cpu_allocator = lambda: calls.append(1) or True\n"
        "from topkrec.cli import main\n"
        "sys.argv = ['topkrec', 'version']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('calls', len(calls))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip().splitlines()[-1] == "calls 1"
