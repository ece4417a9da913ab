import subprocess
import sys


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
