import subprocess
import sys
from pathlib import Path

import pytest


def test_help_and_version_run_fast_without_heavy_imports():
    code = (
        "import sys, topkrec.cli as c; "
        "heavy=[m for m in ('torch','polars','fastapi','matplotlib') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"CLI import pulled in heavy modules: {out.stdout}"
    r = subprocess.run([sys.executable, "-m", "topkrec", "version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip()


def _installed_topkrec() -> list[str]:
    """The console script pip installed beside this interpreter (how a user runs it), else ``-m topkrec``."""
    import shutil
    from pathlib import Path

    script = Path(sys.executable).parent / "topkrec"
    if script.exists():
        return [str(script)]
    found = shutil.which("topkrec")
    return [found] if found else [sys.executable, "-m", "topkrec"]


@pytest.mark.parametrize(
    "args",
    [
        ["prepare", "--bogus"],
        ["train", "--epochs", "abc", "--data", "d", "--out", "o"],
        ["train"],
        ["recommend", "--k", "0", "--model", "m", "--user", "1"],
        ["serve", "--port", "99999", "--model", "m"],
        ["nosuchcommand"],
    ],
)
def test_usage_errors_print_the_usage_line_and_exit_2(args: list[str]) -> None:
    # typer >= 0.29 bundles its own click: its usage errors are not click.exceptions.* and once escaped as
    # tracebacks with status 1.
    r = subprocess.run([*_installed_topkrec(), *args], capture_output=True, text=True)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert "Usage:" in r.stderr and "Error:" in r.stderr


@pytest.mark.parametrize("command", ["train", "compare", "pretrain"])
def test_print_config_needs_no_data_or_out_but_a_run_does(command: str) -> None:
    r = subprocess.run([*_installed_topkrec(), command, "--print-config"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "epochs = " in r.stdout  # the resolved settings as TOML
    # without --print-config the same line is a usage error naming the first missing option
    r = subprocess.run([*_installed_topkrec(), command, "--out", "somewhere"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "Usage:" in r.stderr and "Missing option '--data'" in r.stderr
    assert not Path("somewhere").exists()


def test_summaries_count_in_the_noun_s_number() -> None:
    from topkrec.cli.common import counted

    assert counted(1, "epoch") == "1 epoch" and counted(0, "epoch") == "0 epochs" and counted(15, "step") == "15 steps"
    assert counted(1, "process", "processes") == "1 process" and counted(2, "process", "processes") == "2 processes"
