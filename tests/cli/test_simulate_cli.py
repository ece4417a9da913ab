"""`topkrec simulate` through subprocess."""

from __future__ import annotations

import json
import subprocess
import sys


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "topkrec", "simulate", *args], capture_output=True, text=True)


def test_simulate_paper_topk_json_and_plots(tmp_path):
    out = tmp_path / "sim"
    r = _run("paper-topk", "--json", "--plots", "--out", str(out), "--steps", "200", "--lr", "0.25")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["scenario"] == "paper-topk"
    assert {"none", "is", "topk", "behavior"} <= set(res["policies"])
    assert res["policies"]["topk"]["probs"][0] < 0.65 < res["policies"]["is"]["probs"][0]
    assert (out / "paper-topk.png").stat().st_size > 5000
    assert json.loads((out / "result.json").read_text())["policies"] == res["policies"]


def test_simulate_paper_offpolicy_table(tmp_path):
    r = _run("paper-offpolicy", "--out", str(tmp_path), "--steps", "150", "--lr", "0.3")
    assert r.returncode == 0, r.stderr
    assert "is_capped" in r.stdout and "E[r]" in r.stdout


def test_simulate_bad_arguments_exit_2(tmp_path):
    r = _run("nope", "--out", str(tmp_path))
    assert r.returncode == 2 and r.stderr.startswith("error:") and "paper-topk" in r.stderr
    r = _run("paper-topk", "--update", "bogus", "--out", str(tmp_path))
    assert r.returncode == 2 and "expected or sampled" in r.stderr
