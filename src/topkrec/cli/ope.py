"""CLI command of the off-policy evaluation area: ``ope``.

Heavy libraries (polars, torch) are imported inside the command function.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import typer

from topkrec.errors import TopkrecError

SLATE_LOGGING = ("product", "uniform")


def ope(
    logs: Path = typer.Option(..., "--logs", help="Logged-bandit file, .csv or .parquet, one row per logged decision."),
    action_col: str = typer.Option(..., "--action-col", help="Column of the logged action (item id)."),
    reward_col: str = typer.Option(..., "--reward-col", help="Column of the observed reward (e.g. click)."),
    propensity_col: str = typer.Option(
        ..., "--propensity-col", help="Column of the logging policy's probability of the logged action, in (0, 1]."
    ),
    target_prob_col: str | None = typer.Option(
        None, "--target-prob-col", help="Column of the target policy's probability of the logged action."
    ),
    target: str | None = typer.Option(
        None, "--target", help="A built-in target policy: 'uniform' (probability 1/N for every action)."
    ),
    target_dist: Path | None = typer.Option(
        None,
        "--target-dist",
        help="A .npy target distribution per row: (n, n_actions) or (n, n_actions, n_positions); actions are "
        "integer ids indexing its second axis.",
    ),
    n_actions: int | None = typer.Option(
        None, "--n-actions", help="N for --target uniform (default: the number of distinct actions in the log)."
    ),
    model: Path | None = typer.Option(None, "--model", help="A model directory from `topkrec train` as the target."),
    user_col: str | None = typer.Option(
        None, "--user-col", help="With --model: the user column; the state is the user + their earlier logged items."
    ),
    time_col: str | None = typer.Option(None, "--time-col", help="With --model: order each user's rows by this."),
    event_col: str | None = typer.Option(
        None,
        "--event-col",
        help="With --model: the event type of each row (pv, cart, ...), for a model whose history tokens carry it.",
    ),
    step_col: str | None = typer.Option(
        None, "--step-col", help="With --model: the slate step of each row (a row's state excludes its slate-mates)."
    ),
    target_k: int = typer.Option(
        1, "--target-k", help="With --model: K draws per slate; the target probability is 1 − (1 − π)^K."
    ),
    position_col: str | None = typer.Option(
        None, "--position-col", help="Column of the row's position in its slate: per-position breakdown."
    ),
    slate_col: str | None = typer.Option(
        None, "--slate-col", help="Column of the slate (impression) id: adds the slate estimators pi, sn_pi, iips."
    ),
    slate_logging: str = typer.Option(
        "product",
        "--slate-logging",
        help="How the logger built slates, for PI: 'product' (positions drawn independently) or 'uniform' "
        "(distinct items uniformly at random; needs --target-dist with positions).",
    ),
    reward_model: str | None = typer.Option(
        None,
        "--reward-model",
        help="mean | linear | gbm: reward model for DM and the DR family, cross-fitted (default mean when the "
        "target's whole distribution is known: --target uniform or --target-dist).",
    ),
    context_cols: str | None = typer.Option(
        None, "--context-cols", help="Comma-separated context columns for the reward model (text columns one-hot)."
    ),
    folds: int = typer.Option(5, "--folds", help="Cross-fitting folds of the reward model (1 = no cross-fitting)."),
    reward_hat_col: str | None = typer.Option(
        None, "--reward-hat-col", help="Reward-model prediction for the logged action (with --value-hat-col: DR)."
    ),
    value_hat_col: str | None = typer.Option(
        None, "--value-hat-col", help="Reward model's expected reward under the target policy, per row (for DR)."
    ),
    cap: float = typer.Option(20.085536923187668, "--cap", help="Weight cap of capped IPS (default e^3)."),
    switch_tau: float | None = typer.Option(
        None, "--switch-tau", help="Switch-DR: DR correction only on rows with weight ≤ τ (default: --cap)."
    ),
    dros_lambda: float | None = typer.Option(
        None, "--dros-lambda", help="DRos shrinkage λ: weights become λw/(w²+λ) (default: --cap squared)."
    ),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the intervals (1 to 100000)."),
    level: float = typer.Option(0.95, "--level", help="Confidence level of the bootstrap intervals, in (0, 1)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap and cross-fitting seed."),
    as_json: bool = typer.Option(False, "--json", help="Print the DESIGN §9 JSON to stdout instead of a table."),
    out: Path | None = typer.Option(None, "--out", help="Also write the JSON to this file."),
) -> None:
    """Off-policy estimates of a target policy's value from logged data.

    Give exactly one target: --target-prob-col, --target uniform, --target-dist or --model. Always: IPS,
    capped IPS, SNIPS. With a reward model (--reward-hat-col/--value-hat-col, or fitted when the target's
    distribution is known): DM, DR, SNDR, Switch-DR, DRos. With --slate-col: PI, SN-PI and IIPS per slate.
    Every estimate comes with a percentile bootstrap interval, plus the effective sample size
    (Σw)²/Σw² of the importance weights. Open Bandit Dataset CSVs work as they are, e.g.
    `topkrec ope --logs all.csv --action-col item_id --reward-col click --propensity-col propensity_score
    --target uniform`.
    """
    import numpy as np

    from topkrec.io import write_json
    from topkrec.ope import MAX_BOOT, off_policy_report
    from topkrec.ope.logs import position_slots, read_logged_bandit, read_target_distribution
    from topkrec.ope.reward_model import REWARD_MODELS, RewardData, cross_fit
    from topkrec.ope.slates import (
        pi_weights_product,
        pi_weights_uniform_without_replacement,
        position_breakdown,
        slate_codes,
        slate_estimates,
    )

    if out is not None:  # before any work: not an input, not a directory, writable
        from topkrec.io import check_output_file

        check_output_file(out, {"--logs": logs, "--model": model})
    chosen = [
        name
        for name, v in (
            ("--target-prob-col", target_prob_col),
            ("--target", target),
            ("--target-dist", target_dist),
            ("--model", model),
        )
        if v
    ]
    if len(chosen) != 1:
        raise TopkrecError(
            "give exactly one target policy: --target-prob-col COL, --target uniform, --target-dist FILE.npy or "
            "--model DIR" + (f" (got {' and '.join(chosen)})" if chosen else "")
        )
    if target is not None and target != "uniform":
        raise TopkrecError(f"unknown --target {target!r}; the built-in target is 'uniform'")
    if n_actions is not None and target != "uniform":
        raise TopkrecError("--n-actions only applies to --target uniform")
    if n_actions is not None and n_actions < 1:
        raise TopkrecError("--n-actions must be at least 1")
    if (reward_hat_col is None) != (value_hat_col is None):
        raise TopkrecError("doubly robust needs both --reward-hat-col and --value-hat-col")
    if reward_hat_col is not None and reward_model is not None:
        raise TopkrecError("give either a fitted reward model (--reward-model) or its columns (--reward-hat-col)")
    if reward_model is not None and reward_model not in REWARD_MODELS:
        raise TopkrecError(f"unknown --reward-model {reward_model!r}; use one of {', '.join(REWARD_MODELS)}")
    if reward_model is not None and target_dist is None and target != "uniform":
        raise TopkrecError(
            "--reward-model needs the target's whole distribution to compute DM (--target uniform or --target-dist); "
            "with --target-prob-col or --model pass --reward-hat-col and --value-hat-col"
        )
    if not 1 <= n_boot <= MAX_BOOT:
        raise TopkrecError(f"--n-boot must be between 1 and {MAX_BOOT}, got {n_boot}")
    if not 0 < level < 1:
        raise TopkrecError(f"--level must lie strictly between 0 and 1 (e.g. 0.95), got {level}")
    if not (math.isfinite(cap) and cap > 0):
        raise TopkrecError("--cap must be a positive number")
    for flag, value in (("--switch-tau", switch_tau), ("--dros-lambda", dros_lambda)):
        if value is not None and not value >= 0:  # inf is allowed: Switch-DR / DRos are then DR
            raise TopkrecError(f"{flag} must be >= 0 (inf allowed), got {value}")
    if folds < 1:
        raise TopkrecError("--folds must be at least 1")
    if slate_logging not in SLATE_LOGGING:
        raise TopkrecError(f"unknown --slate-logging {slate_logging!r}; use one of {', '.join(SLATE_LOGGING)}")
    if slate_logging == "uniform" and (slate_col is None or target_dist is None or position_col is None):
        raise TopkrecError("--slate-logging uniform needs --slate-col, --position-col and --target-dist")
    contexts = [c.strip() for c in context_cols.split(",") if c.strip()] if context_cols else []

    data = read_logged_bandit(
        logs,
        action_col,
        reward_col,
        propensity_col,
        target_prob_col,
        position_col=position_col,
        slate_col=slate_col,
        context_cols=contexts,
    )
    warnings: list[str] = []
    slot = n_slots = None
    if data.position is not None:
        slot, position_values = position_slots(data.position)
        n_slots = int(position_values.shape[0])
    reward_hat = value_hat = None
    if reward_hat_col is not None and value_hat_col is not None:
        extra = read_logged_bandit(logs, action_col, reward_hat_col, propensity_col, value_hat_col)
        reward_hat, value_hat = extra.reward, extra.target_prob
    dist_fn: Callable[[np.ndarray], np.ndarray] | None = None  # rows -> (m, n_actions) target distribution
    action_codes = None
    n_codes = 0
    dist = None
    if target_prob_col is not None:
        assert data.target_prob is not None
        target_prob = data.target_prob
        target_name = f"column {target_prob_col}"
    elif target == "uniform":
        uniq, action_codes = np.unique(data.action, return_inverse=True)
        action_codes = action_codes.reshape(-1)
        n = len(uniq) if n_actions is None else n_actions
        if n < len(uniq):
            raise TopkrecError(f"--n-actions {n} is below the {len(uniq)} distinct actions in the log")
        if n_actions is None:
            warnings.append(
                f"--target uniform: N = {n}, the number of distinct actions in the log; if the catalogue has more "
                "items the estimates are of the uniform policy over these only — pass --n-actions N"
            )
        target_prob = np.full(data.n, 1.0 / n)
        target_name = f"uniform over {n} actions"
        n_codes = n

        dist_fn = partial(_uniform_dist, n=n)

    elif target_dist is not None:
        dist, action_codes = read_target_distribution(target_dist, data.n, data.action, slot, n_slots or 1)
        target_prob = dist.probs[np.arange(data.n), action_codes, slot if slot is not None else 0]
        target_name = f"distribution {target_dist}"
        n_codes = dist.n_actions
        dist_fn = partial(dist.at, slot=slot)
    else:
        from topkrec.ope.model_target import model_target

        assert model is not None
        if user_col is None:
            raise TopkrecError("--model needs --user-col (the state is the user and their earlier logged items)")
        target_prob, known = model_target(
            model,
            logs,
            action_col,
            user_col,
            time_col,
            k=target_k,
            reward_col=reward_col,
            event_col=event_col,
            step_col=step_col,
        )
        if not known.any():
            raise TopkrecError(
                f"none of the {data.n} logged actions of {logs} is in the catalogue of model {model}, so the model "
                "gives every row probability 0; check --action-col and that the log and model use the same item ids"
            )
        if not known.all():
            warnings.append(
                f"{int((~known).sum())} of {data.n} logged actions are not in the model's catalogue; the model gives "
                "them probability 0"
            )
        target_name = f"model {model}"

    reward_model_info: dict[str, Any] | str | None = None
    if reward_hat is None and dist_fn is not None:
        assert action_codes is not None
        kind = reward_model or "mean"
        context = data.context if data.context is not None else np.zeros((data.n, 0))
        rdata = RewardData(
            action=action_codes.astype(np.int64),
            n_actions=n_codes,
            context=context,
            position=slot,
            n_positions=n_slots or 1,
        )
        reward_hat, value_hat = cross_fit(kind, rdata, data.reward, dist_fn, folds=min(folds, data.n), seed=seed)
        reward_model_info = {
            "kind": kind,
            "folds": min(folds, data.n),
            "context": list(data.context_names),
            "position": position_col,
        }
    elif reward_hat is not None:
        reward_model_info = "columns"

    report = off_policy_report(
        data.reward,
        target_prob,
        data.propensity,
        cap=cap,
        reward_hat_logged=reward_hat,
        value_hat_target=value_hat,
        n_boot=n_boot,
        seed=seed,
        level=level,
        switch_tau=switch_tau,
        dros_lambda=dros_lambda,
    )
    result: dict[str, Any] = report.as_dict()
    estimators: dict[str, Any] = result["estimators"]
    units = {"per_row": list(estimators)}
    if data.slate is not None:
        codes, n_slates = slate_codes(data.slate, data.position)
        pi_weights = None
        if slate_logging == "uniform":
            assert dist is not None and slot is not None and action_codes is not None
            anywhere = dist.probs[np.arange(data.n), action_codes, :].sum(axis=1)
            pi_weights = pi_weights_uniform_without_replacement(codes, target_prob, anywhere, dist.n_actions, n_slates)
        else:
            pi_weights = pi_weights_product(codes, target_prob, data.propensity, n_slates)
        slate_results, slate_ess = slate_estimates(
            codes,
            n_slates,
            data.reward,
            target_prob,
            data.propensity,
            pi_weights=pi_weights,
            n_boot=n_boot,
            seed=seed,
            level=level,
        )
        for name, res in slate_results.items():
            estimators[name] = res.as_dict()
        units["per_slate"] = list(slate_results)
        result["n_slates"] = n_slates
        result["slate_ess"] = slate_ess
        result["slate_logging"] = slate_logging
    result["units"] = units
    if data.position is not None:
        result["positions"] = position_breakdown(
            data.position, data.reward, target_prob, data.propensity, cap=cap, n_boot=n_boot, seed=seed, level=level
        )
    result["warnings"] = warnings + result["warnings"]
    result.update({"target": target_name, "logs": str(logs), "n_boot": n_boot, "reward_model": reward_model_info})
    for w in result["warnings"]:
        typer.echo(f"warning: {w}", err=True)
    text = json.dumps(result, indent=2, allow_nan=False)
    if out is not None:
        if out.is_dir():
            raise TopkrecError(f"--out {out} is a directory; give a file name such as {out / 'ope.json'}")
        try:
            write_json(out, result)
        except OSError as e:
            raise TopkrecError(f"cannot write --out {out}: {e.strerror or e}") from e
    if as_json:
        typer.echo(text)
        return
    _print_ope_table(result)


def _uniform_dist(rows: Any, n: int) -> Any:
    import numpy as np

    return np.full((rows.shape[0], n), 1.0 / n)


def _print_ope_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    level = f"{100 * result['level']:g}% CI"
    per_slate = set(result["units"].get("per_slate", []))
    table = Table(title=f"off-policy value of {result['target']} ({result['n']} logged rows)")
    for col in ("estimator", "value", level, "unit"):
        table.add_column(col, justify="left" if col in ("estimator", "unit") else "right")
    for name, est in result["estimators"].items():
        unit = "per slate" if name in per_slate else "per row"
        table.add_row(name, f"{est['value']:.5g}", f"[{est['ci_low']:.5g}, {est['ci_high']:.5g}]", unit)
    console = Console()
    console.print(table)
    if "positions" in result:
        pos_table = Table(title="per position (row-level estimates at each position)")
        for col in ("position", "rows", "ESS", "ips", "snips", level + " (snips)"):
            pos_table.add_column(col, justify="right")
        for pos, entry in result["positions"].items():
            est = entry["estimators"]
            pos_table.add_row(
                pos,
                str(entry["n"]),
                f"{entry['ess']:.1f}",
                f"{est['ips']['value']:.5g}",
                f"{est['snips']['value']:.5g}",
                f"[{est['snips']['ci_low']:.5g}, {est['snips']['ci_high']:.5g}]",
            )
        console.print(pos_table)
    line = f"effective sample size {result['ess']:.1f} of {result['n']}; capped IPS cap {result['cap']:.4g}"
    if "n_slates" in result:
        line += f"; {result['n_slates']} slates (PI weights' ESS {result['slate_ess']:.1f})"
    console.print(line)


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("ope")(ope)
