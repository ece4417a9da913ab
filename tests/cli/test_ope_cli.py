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
    assert set(out["estimators"]) == {"ips", "capped_ips", "snips", "dm", "dr", "sndr", "switch_dr", "dros"}
    assert out["reward_model"] == {"kind": "mean", "folds": 5, "context": [], "position": None}
    # N was inferred from the log: said on stderr and in the JSON
    assert "N = 8, the number of distinct actions in the log" in r.stderr and len(out["warnings"]) == 1
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


# --- slates, positions, target distributions, reward models, warnings --------------------------------------------

N_POS = 3


def _slate_files(tmp: Path, n_slates: int = 500, seed: int = 0) -> dict[str, np.ndarray]:
    """A slate log in the OBD layout plus a slate id: per slate, positions 1..3 each drawn independently from
    μ_j (product logging); click rate depends on (item, position) and on a context feature; and a target
    distribution (n, N_ITEMS, N_POS) saved as .npy (row i's distribution at every position)."""
    rng = np.random.default_rng(seed)
    mu = rng.dirichlet(np.full(N_ITEMS, 2.0), size=N_POS)  # (L, A)
    target = rng.dirichlet(np.full(N_ITEMS, 0.7), size=N_POS)
    ctr = rng.uniform(0.05, 0.4, size=(N_POS, N_ITEMS))
    items = np.stack([rng.choice(N_ITEMS, size=n_slates, p=mu[j]) for j in range(N_POS)], axis=1).reshape(-1)
    pos = np.tile(np.arange(N_POS), n_slates)
    feature = rng.choice(["a", "b"], size=items.shape)
    rate = np.clip(ctr[pos, items] + np.where(feature == "a", 0.05, -0.05), 0, 1)
    click = (rng.random(items.shape) < rate).astype(int)
    lines = ["slate,item_id,position,click,propensity_score,user_feature_0,target_prob"]
    for i in range(items.shape[0]):
        lines.append(
            f"s{i // N_POS},{items[i]},{pos[i] + 1},{click[i]},{mu[pos[i], items[i]]:.17g},{feature[i]},"
            f"{target[pos[i], items[i]]:.17g}"
        )
    (tmp / "slates.csv").write_text("\n".join(lines) + "\n")
    dist = np.broadcast_to(target.T[None, :, :], (items.shape[0], N_ITEMS, N_POS)).copy()
    np.save(tmp / "target.npy", dist)
    return {"items": items, "pos": pos, "click": click.astype(float), "mu": mu, "target": target, "ctr": ctr}


SLATE_BASE = ["--action-col", "item_id", "--reward-col", "click", "--propensity-col", "propensity_score"]


def test_ope_slates_positions_and_target_distribution(tmp_path):
    from topkrec.ope import pi_weights_product, pseudo_inverse, slate_codes, slate_sums

    cols = _slate_files(tmp_path)
    r = _run(
        "--logs", str(tmp_path / "slates.csv"), *SLATE_BASE, "--target-dist", str(tmp_path / "target.npy"),
        "--position-col", "position", "--slate-col", "slate", "--reward-model", "linear",
        "--context-cols", "user_feature_0", "--n-boot", "100", "--level", "0.9", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    per_row = {"ips", "capped_ips", "snips", "dm", "dr", "sndr", "switch_dr", "dros"}
    assert set(out["estimators"]) == per_row | {"pi", "sn_pi", "iips"}
    assert set(out["units"]["per_row"]) == per_row and out["units"]["per_slate"] == ["pi", "sn_pi", "iips"]
    assert out["n"] == 1500 and out["n_slates"] == 500 and out["level"] == 0.9
    assert list(out["positions"]) == ["1", "2", "3"] and out["positions"]["2"]["n"] == 500
    assert out["reward_model"]["context"] == ["user_feature_0=a", "user_feature_0=b"]
    assert out["reward_model"]["position"] == "position"
    # the numbers are the library's on the same arrays
    t = cols["target"][cols["pos"], cols["items"]]
    p = cols["mu"][cols["pos"], cols["items"]]
    codes, n_slates = slate_codes(np.arange(1500) // 3)
    w = pi_weights_product(codes, t, p, n_slates)
    assert out["estimators"]["pi"]["value"] == pytest.approx(
        float(pseudo_inverse(slate_sums(codes, cols["click"], n_slates), w))
    )
    assert out["estimators"]["ips"]["value"] == pytest.approx(float(ips(cols["click"], t, p)))
    # iips is per slate: 3 positions × the per-row IPS here (every slate has 3 rows)
    assert out["estimators"]["iips"]["value"] == pytest.approx(3 * out["estimators"]["ips"]["value"])
    # true value per slate (additive clicks, the context's ±0.05 averages out): Σ_j Σ_a π_j(a) ctr_j(a)
    truth = float((cols["target"] * cols["ctr"]).sum())
    for name in ("pi", "iips"):
        assert abs(out["estimators"][name]["value"] - truth) < 0.15, (name, out["estimators"][name], truth)
    # the same with the column as the target gives the same IPS and PI
    r2 = _run(
        "--logs", str(tmp_path / "slates.csv"), *SLATE_BASE, "--target-prob-col", "target_prob",
        "--slate-col", "slate", "--n-boot", "100", "--json",
    )  # fmt: skip
    out2 = json.loads(r2.stdout)
    assert out2["estimators"]["pi"]["value"] == pytest.approx(out["estimators"]["pi"]["value"])
    assert "dm" not in out2["estimators"]  # no target distribution, no reward model
    # the table shows the per-position breakdown
    r3 = _run(
        "--logs", str(tmp_path / "slates.csv"), *SLATE_BASE, "--target-prob-col", "target_prob",
        "--slate-col", "slate", "--position-col", "position", "--n-boot", "20",
    )  # fmt: skip
    assert r3.returncode == 0 and "per position" in r3.stdout and "per slate" in r3.stdout


@pytest.mark.parametrize("kind", ["mean", "gbm"])
def test_ope_reward_models_by_name(tmp_path, kind):
    if kind == "gbm":
        pytest.importorskip("sklearn")
    _slate_files(tmp_path, n_slates=200)
    r = _run(
        "--logs", str(tmp_path / "slates.csv"), *SLATE_BASE, "--target-dist", str(tmp_path / "target.npy"),
        "--position-col", "position", "--reward-model", kind, "--folds", "3", "--n-boot", "20", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["reward_model"]["kind"] == kind and out["reward_model"]["folds"] == 3
    assert {"dm", "dr", "sndr", "switch_dr", "dros"} <= set(out["estimators"])


def test_ope_target_distribution_errors(tmp_path):
    _slate_files(tmp_path, n_slates=20)
    log = ["--logs", str(tmp_path / "slates.csv"), *SLATE_BASE]
    dist = np.load(tmp_path / "target.npy")
    cases = [
        (dist[:-1], ["--position-col", "position"], "one distribution per row"),
        (dist[:, :, :2], ["--position-col", "position"], "2 position slot(s) but the log has 3"),
        (dist, [], "pass --position-col"),
        (dist * 0.5, ["--position-col", "position"], "does not sum to 1"),
        (dist[:, :5, :], ["--position-col", "position"], "integers in [0, 5)"),
    ]
    for array, extra, message in cases:
        np.save(tmp_path / "bad.npy", array)
        r = _run(*log, "--target-dist", str(tmp_path / "bad.npy"), *extra, "--n-boot", "5")
        assert r.returncode == 2 and message in r.stderr, (message, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n-boot", "1000001"], "--n-boot must be between 1 and 100000"),
        (["--n-boot", "0"], "--n-boot must be between"),
        (["--level", "1.5"], "--level must lie strictly between 0 and 1"),
        (["--level", "0"], "--level"),
        (["--folds", "0"], "--folds"),
        (["--switch-tau", "-1"], "--switch-tau"),
        (["--reward-model", "forest"], "unknown --reward-model"),
        (["--slate-logging", "uniform"], "--slate-logging uniform needs"),
        (["--n-actions", "0"], "--n-actions must be at least 1"),
    ],
)
def test_ope_option_errors(tmp_path, args, message):
    _obd_csv(tmp_path / "all.csv", n=30)
    r = _run("--logs", str(tmp_path / "all.csv"), *BASE, "--target", "uniform", *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_ope_header_only_file_is_one_clear_error(tmp_path):
    (tmp_path / "empty.csv").write_text("item_id,click,propensity_score\n")
    r = _run("--logs", str(tmp_path / "empty.csv"), *BASE, "--target", "uniform")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "no rows" in r.stderr  # no numpy warnings


def test_ope_tiny_propensity_gives_valid_json_and_a_low_ess_warning(tmp_path):
    rows = ["item_id,click,propensity_score,target_prob"] + [f"{i % 3},1,0.5,0.5" for i in range(99)]
    rows.append("1,1,1e-300,0.5")
    (tmp_path / "tiny.csv").write_text("\n".join(rows) + "\n")
    args = ["--logs", str(tmp_path / "tiny.csv"), *BASE, "--target-prob-col", "target_prob", "--n-boot", "50"]
    r = _run(*args, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
    assert out["ess"] == pytest.approx(1.0)
    assert "effective sample size 1.0" in r.stderr and any("effective sample size" in w for w in out["warnings"])
    (tmp_path / "tiny.csv").write_text("\n".join([*rows[:-1], "1,1,1e-310,0.5"]) + "\n")
    r = _run(*args, "--json")
    assert r.returncode == 2 and "overflows" in r.stderr


def test_ope_out_that_cannot_be_written_is_one_line(tmp_path):
    _obd_csv(tmp_path / "all.csv", n=30)
    (tmp_path / "file").write_text("x")
    cases = ((tmp_path, "is a directory"), (tmp_path / "file" / "ope.json", "is a file, not a directory"))
    for out, message in cases:
        args = ["--logs", str(tmp_path / "all.csv"), *BASE, "--target", "uniform", "--n-actions", "8"]
        r = _run(*args, "--out", str(out))
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_ope_slate_logging_uniform_without_replacement(tmp_path):
    from topkrec.ope import pi_weights_uniform_without_replacement, pseudo_inverse, slate_codes, slate_sums

    rng = np.random.default_rng(4)
    m, n_slates = 6, 300
    items = np.stack([rng.permutation(m)[:N_POS] for _ in range(n_slates)]).reshape(-1)  # uniform, distinct
    pos = np.tile(np.arange(N_POS), n_slates)
    click = (rng.random(items.shape) < 0.1 + 0.05 * items).astype(int)
    lines = ["slate,item_id,position,click,propensity_score"]
    lines += [f"{i // N_POS},{items[i]},{pos[i]},{click[i]},{1 / m!r}" for i in range(items.shape[0])]
    (tmp_path / "u.csv").write_text("\n".join(lines) + "\n")
    target = rng.dirichlet(np.ones(m), size=N_POS)  # (L, m)
    np.save(tmp_path / "t.npy", np.broadcast_to(target.T[None], (items.shape[0], m, N_POS)).copy())
    args = ["--logs", str(tmp_path / "u.csv"), *SLATE_BASE, "--target-dist", str(tmp_path / "t.npy")]
    args += ["--position-col", "position", "--slate-col", "slate", "--n-boot", "20", "--json"]
    r = _run(*args, "--slate-logging", "uniform")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    codes, n = slate_codes(np.arange(items.shape[0]) // N_POS)
    w = pi_weights_uniform_without_replacement(codes, target[pos, items], target.sum(0)[items], m, n)
    expected = float(pseudo_inverse(slate_sums(codes, click, n), w))
    assert out["slate_logging"] == "uniform" and out["estimators"]["pi"]["value"] == pytest.approx(expected)
    product = json.loads(_run(*args).stdout)["estimators"]["pi"]["value"]
    assert product != pytest.approx(expected)  # the product form is the wrong one for this logger
