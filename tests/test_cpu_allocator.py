"""tune_cpu_allocator: PyTorch's large CPU tensors on transparent huge pages, so a training step's big buffers
stop being faulted in 4 KB at a time every step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from topkrec.device import THP_PATH


def _thp_mode() -> str:
    try:
        return Path(THP_PATH).read_text()
    except OSError:
        return ""


thp = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not ({"[always]", "[madvise]"} & set(_thp_mode().split())),
    reason="needs Linux with transparent huge pages in always or madvise mode",
)

# A training step's big buffers, allocated and freed every step with sizes that change (the π head's rows
# follow the rewarded rows, windows carry different row counts): a ~20 MB buffer 40 times, 64 KiB larger
# each time. Prints whether the tuning was applied and the most minor page faults of one of the last 30 rounds.
_PROBE = """
import sys
from topkrec.device import tune_cpu_allocator

applied = tune_cpu_allocator() if sys.argv[1] == "tune" else None
import resource
import torch

faults = []
for i in range(40):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(5_000_000 + 16_384 * i).fill_(1.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(applied, max(faults[10:]))
"""


def _clean_env(**env: str) -> dict[str, str]:
    """This process's environment without either allocator setting, plus ``env``."""
    keep = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "TOPKREC_NO_MALLOC_TUNING")}
    return {**keep, **env}


def _probe(mode: str, **env: str) -> tuple[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, env=_clean_env(**env)
    ).stdout.split()
    return out[0], float(out[1])


@thp
def test_huge_pages_stop_the_per_step_page_faults() -> None:
    _, plain = _probe("plain")
    applied, tuned = _probe("tune")
    assert applied == "True"
    assert plain > 4000  # every round maps the block afresh: ~5 000 pages of 4 KiB
    assert tuned < plain / 4  # 2 MB pages (measured: at most 510–800 faults per round, most rounds ~15)


@pytest.mark.parametrize("env", [{"TOPKREC_NO_MALLOC_TUNING": "1"}, {"THP_MEM_ALLOC_ENABLE": "0"}])
def test_opt_out_and_the_users_own_setting_are_respected(env: dict[str, str]) -> None:
    applied, _ = _probe("tune", **env)
    assert applied == "False"


def test_too_late_once_torch_is_imported() -> None:
    code = "import torch\nfrom topkrec.device import tune_cpu_allocator\nprint(tune_cpu_allocator())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_clean_env())
    assert r.stdout.strip() == "False"


def test_the_cli_tunes_before_any_command_imports_torch() -> None:
    """The `topkrec` entry point calls it (here before `version`) while torch is not imported yet."""
    code = (
        "import sys, topkrec.device as d\n"
        "calls = []\n"
        "d.tune_cpu_allocator = lambda: calls.append('torch' in sys.modules) or True\n"
        "from topkrec.cli import main\n"
        "sys.argv = ['topkrec', 'version']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('calls', calls)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip().splitlines()[-1] == "calls [False]"
