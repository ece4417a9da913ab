"""`topkrec ope` through subprocess, on an Open Bandit Dataset-style CSV."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from topkrec.ope import ips, snips

N_ITEMS = 8


def _obd_csv(path: Path, n: int = 600, seed: int = 0) -> dict[str, np.ndarray]:
    """Columns and layout of the Open Bandit Dataset's all.csv (unnamed index column first)."""
    rng = np.random.default_rng(seed)
    beta = np.linspace(2.0, 0.5, N_ITEMS)
    beta /= beta.sum()
    item = rng.choice(N_ITEMS, size=n, p=beta)
    ctr = np.linspace(0.01, 0.2, N_ITEMS)
    click = (rng.random(n) < ctr[item]).astype(int)
    position = rng.integers(1, 4, size=n)
    target = np.full(n, 0.5)
    lines = [",timestamp,item_id,position,click,propensity_score,user_feature_0,target_prob"]
    for i in range(n):
        lines.append(
            f"{i},2019-11-24 00:00:{i % 60:02d}.000000+00:00,{item[i]},{position[i]},{click[i]},"
            f"{beta[item[i]]:.10f},81ce1234,{target[i]}"
        )
    path.write_text("\n".join(lines) + "\n")
    return {"item": item, "click": click.astype(float), "propensity": beta[item], "target": target}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "topkrec", "ope", *args], capture_output=True, text=True)


BASE = ["--action-col", "item_id", "--reward-col", "click", "--propensity-col", "propensity_score"]


def test_ope_uniform_on_obd_csv(tmp_path):
    cols = _obd_csv(tmp_path / "all.csv")
    r = _run("--logs", str(tmp_path / "all.csv"), *BASE, "--target", "uniform", "--n-boot", "200", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) >= {"estimators", "ess", "n"}
    assert set(out["estimators"]) == {"ips", "capped_ips", "snips", "dr"}
    for est in out["estimators"].values():
        assert est["ci_low"] <= est["value"] <= est["ci_high"]
    t = np.full(cols["item"].shape, 1.0 / N_ITEMS)
    assert out["n"] == 600
    assert out["estimators"]["ips"]["value"] == pytest.approx(float(ips(cols["click"], t, cols["propensity"])))
    assert out["estimators"]["snips"]["value"] == pytest.approx(float(snips(cols["click"], t, cols["propensity"])))
    # the uniform policy's true value here is the mean CTR, 0.105; the estimates are near it
    assert abs(out["estimators"]["snips"]["value"] - 0.105) < 0.05


def test_ope_target_prob_column_parquet_and_table(tmp_path):
    import polars as pl

    cols = _obd_csv(tmp_path / "all.csv")
    pl.read_csv(tmp_path / "all.csv").write_parquet(tmp_path / "all.parquet")
    r = _run("--logs", str(tmp_path / "all.parquet"), *BASE, "--target-prob-col", "target_prob", "--n-boot", "50")
    assert r.returncode == 0, r.stderr
    assert "snips" in r.stdout and "effective sample size" in r.stdout
    r = _run(
        "--logs", str(tmp_path / "all.csv"), *BASE, "--target-prob-col", "target_prob", "--n-boot", "50", "--json",
        "--out", str(tmp_path / "ope.json"),
    )  # fmt: skip
    out = json.loads(r.stdout)
    assert json.loads((tmp_path / "ope.json").read_text())["estimators"] == out["estimators"]
    assert "dr" not in out["estimators"]  # no reward model given
    expected = float(ips(cols["click"], cols["target"], cols["propensity"]))
    assert out["estimators"]["ips"]["value"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "mutate, args, message",
    [
        (None, ["--action-col", "nope", "--reward-col", "click", "--propensity-col", "propensity_score"], "nope"),
        ("zero", BASE, "(0, 1]"),
        ("nan", BASE, "non-finite"),
        (None, [*BASE, "--target-prob-col", "target_prob"], "exactly one target"),
        (None, BASE[:4] + ["--propensity-col", "user_feature_0"], "not numeric"),
    ],
)
def test_ope_input_errors_are_one_line_exit_2(tmp_path, mutate, args, message):
    _obd_csv(tmp_path / "all.csv", n=50)
    text = (tmp_path / "all.csv").read_text().splitlines()
    if mutate:
        fields = text[3].split(",")
        fields[5] = "0" if mutate == "zero" else ""
        text[3] = ",".join(fields)
        (tmp_path / "all.csv").write_text("\n".join(text) + "\n")
    r = _run("--logs", str(tmp_path / "all.csv"), *args, "--target", "uniform")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr


def test_ope_missing_file(tmp_path):
    r = _run("--logs", str(tmp_path / "none.csv"), *BASE, "--target", "uniform")
    assert r.returncode == 2 and "not found" in r.stderr
