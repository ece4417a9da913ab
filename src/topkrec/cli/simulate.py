"""CLI commands of the simulation / off-policy evaluation area: ``simulate`` and ``ope``.

Heavy libraries (polars, torch, matplotlib) are imported inside the command functions.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from topkrec.errors import TopkrecError


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
    n_actions: int | None = typer.Option(
        None, "--n-actions", help="N for --target uniform (default: the number of distinct actions in the log)."
    ),
    model: Path | None = typer.Option(None, "--model", help="A model directory from `topkrec train` as the target."),
    user_col: str | None = typer.Option(
        None, "--user-col", help="With --model: the user column; the state is the user + their earlier logged items."
    ),
    time_col: str | None = typer.Option(None, "--time-col", help="With --model: order each user's rows by this."),
    target_k: int = typer.Option(
        1, "--target-k", help="With --model: K draws per slate; the target probability is 1 − (1 − π)^K."
    ),
    reward_hat_col: str | None = typer.Option(
        None, "--reward-hat-col", help="Reward-model prediction for the logged action (with --value-hat-col: DR)."
    ),
    value_hat_col: str | None = typer.Option(
        None, "--value-hat-col", help="Reward model's expected reward under the target policy, per row (for DR)."
    ),
    cap: float = typer.Option(20.085536923187668, "--cap", help="Weight cap of capped IPS (default e^3)."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the 95 % intervals."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    as_json: bool = typer.Option(False, "--json", help="Print the DESIGN §9 JSON to stdout instead of a table."),
    out: Path | None = typer.Option(None, "--out", help="Also write the JSON to this file."),
) -> None:
    """Off-policy estimates of a target policy's value from logged data: IPS, capped IPS, SNIPS, DR.

    Give exactly one target: --target-prob-col, --target uniform or --model. Every estimate comes with
    a bootstrap 95 % interval, plus the effective sample size (Σw)²/Σw² of the importance weights.
    Open Bandit Dataset CSVs work as they are, e.g.
    `topkrec ope --logs all.csv --action-col item_id --reward-col click --propensity-col propensity_score
    --target uniform`.
    """
    import numpy as np

    from topkrec.io import write_json
    from topkrec.ope import off_policy_report
    from topkrec.ope.logs import direct_method_uniform, read_logged_bandit

    chosen = [
        name for name, v in (("--target-prob-col", target_prob_col), ("--target", target), ("--model", model)) if v
    ]
    if len(chosen) != 1:
        raise TopkrecError(
            "give exactly one target policy: --target-prob-col COL, --target uniform or --model DIR"
            + (f" (got {' and '.join(chosen)})" if chosen else "")
        )
    if target is not None and target != "uniform":
        raise TopkrecError(f"unknown --target {target!r}; the built-in target is 'uniform'")
    if n_actions is not None and target != "uniform":
        raise TopkrecError("--n-actions only applies to --target uniform")
    if (reward_hat_col is None) != (value_hat_col is None):
        raise TopkrecError("doubly robust needs both --reward-hat-col and --value-hat-col")
    if n_boot < 1:
        raise TopkrecError("--n-boot must be at least 1")
    if not cap > 0:
        raise TopkrecError("--cap must be positive")
    if out is not None:
        from topkrec.io import check_output_file

        check_output_file(out, {"--logs": logs, "--model": model})

    data = read_logged_bandit(logs, action_col, reward_col, propensity_col, target_prob_col)
    reward_hat = value_hat = None
    if reward_hat_col is not None and value_hat_col is not None:
        extra = read_logged_bandit(logs, action_col, reward_hat_col, propensity_col, value_hat_col)
        reward_hat, value_hat = extra.reward, extra.target_prob
    if target_prob_col is not None:
        assert data.target_prob is not None
        target_prob = data.target_prob
        target_name = f"column {target_prob_col}"
    elif target == "uniform":
        n = data.n_distinct_actions if n_actions is None else n_actions
        if n < data.n_distinct_actions:
            raise TopkrecError(f"--n-actions {n} is below the {data.n_distinct_actions} distinct actions in the log")
        target_prob = np.full(data.n, 1.0 / n)
        target_name = f"uniform over {n} actions"
        if reward_hat is None:
            reward_hat, value_hat = direct_method_uniform(data.action, data.reward, n)
    else:
        from topkrec.ope.model_target import model_target_prob

        assert model is not None
        if user_col is None:
            raise TopkrecError("--model needs --user-col (the state is the user and their earlier logged items)")
        target_prob = model_target_prob(model, logs, action_col, user_col, time_col, k=target_k)
        target_name = f"model {model}"
    report = off_policy_report(
        data.reward,
        target_prob,
        data.propensity,
        cap=cap,
        reward_hat_logged=reward_hat,
        value_hat_target=value_hat,
        n_boot=n_boot,
        seed=seed,
    )
    result = {**report.as_dict(), "target": target_name, "logs": str(logs), "n_boot": n_boot}
    if out is not None:
        write_json(out, result)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    _print_ope_table(result)


def _print_ope_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"off-policy value of {result['target']} ({result['n']} logged rows)")
    for col in ("estimator", "value", "95% CI"):
        table.add_column(col, justify="right" if col != "estimator" else "left")
    for name, est in result["estimators"].items():
        table.add_row(name, f"{est['value']:.5g}", f"[{est['ci_low']:.5g}, {est['ci_high']:.5g}]")
    console = Console()
    console.print(table)
    console.print(f"effective sample size {result['ess']:.1f} of {result['n']}; capped IPS cap {result['cap']:.4g}")


STATELESS = ("paper-offpolicy", "paper-topk")


def simulate(
    scenario: str = typer.Argument(..., help="paper-offpolicy | paper-topk | sequential"),
    as_json: bool = typer.Option(False, "--json", help="Print the DESIGN §9 JSON to stdout instead of a table."),
    plots: bool = typer.Option(False, "--plots", help="Write PNG figures into --out."),
    out: Path | None = typer.Option(
        None, "--out", help="Directory for result.json and the figures (default ./topkrec-simulate/SCENARIO)."
    ),
    update: str = typer.Option("expected", "--update", help="Stateless: 'expected' (exact over β) or 'sampled'."),
    steps: int | None = typer.Option(None, "--steps", help="Stateless: optimiser steps (default 500 / 1000)."),
    lr: float | None = typer.Option(None, "--lr", help="Stateless: Adam learning rate (default 0.1 / 0.02)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Stateless sampled updates: actions per step."),
    seed: int = typer.Option(0, "--seed", help="Random seed (sequential: the first of --seeds seeds)."),
    seeds: int = typer.Option(3, "--seeds", help="Sequential: independent environments/logs/trainings."),
    quick: bool = typer.Option(False, "--quick", help="Sequential: a small preset that runs in well under a minute."),
    interactions_only: bool = typer.Option(
        False,
        "--interactions-only",
        help="Sequential: log only engagements (Taobao-style) instead of every shown item; state = engaged items.",
    ),
) -> None:
    """Ground-truth simulations where the true value of every policy is known (DESIGN §5).

    paper-offpolicy and paper-topk are the paper's two stateless experiments (§6.1), trained through
    the library's loss code; sequential is a session environment with a biased logging policy whose
    logs go through prepare → train, with true values measured by rollouts.
    """
    from topkrec.cli.common import STATE
    from topkrec.io import check_output_location, write_json

    out_dir = Path(out) if out is not None else Path("topkrec-simulate") / scenario
    check_output_location(out_dir)
    if scenario in STATELESS:
        from topkrec.simulate.stateless import StatelessConfig, run_scenario

        if update not in ("expected", "sampled"):
            raise TopkrecError(f"unknown --update {update!r}; use expected or sampled")
        sampled = update == "sampled"
        config = StatelessConfig(
            update="sampled" if sampled else "expected",
            steps=steps if steps is not None else (1000 if sampled else 500),
            lr=lr if lr is not None else (0.02 if sampled else 0.1),
            batch_size=batch_size,
            seed=seed,
        )
        if config.steps < 1 or config.lr <= 0 or config.batch_size < 1:
            raise TopkrecError("--steps and --batch-size must be at least 1 and --lr positive")
        result = run_scenario(scenario, config)
    elif scenario == "sequential":
        from dataclasses import replace

        from topkrec.simulate.sequential import SequentialConfig, run_sequential

        if seeds < 1:
            raise TopkrecError("--seeds must be at least 1")
        config_seq = (
            SequentialConfig.quick(seed=seed, n_seeds=seeds) if quick else SequentialConfig(seed=seed, n_seeds=seeds)
        )
        config_seq = replace(config_seq, log_impressions=not interactions_only)
        result = run_sequential(config_seq, progress=STATE.progress)
    else:
        raise TopkrecError(f"unknown scenario {scenario!r}; use one of {', '.join((*STATELESS, 'sequential'))}")

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "result.json", result)
    n_plots = 0
    if plots:
        from topkrec.simulate.plots import plot_sequential, plot_stateless

        paths = (plot_stateless if scenario in STATELESS else plot_sequential)(result, out_dir)
        result["plots"] = [str(p) for p in paths]
        n_plots = len(paths)
        write_json(out_dir / "result.json", result)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    _print_simulation_table(result)
    typer.echo(f"wrote {out_dir / 'result.json'}" + (f" and {n_plots} figure(s)" if plots else ""))


def _print_simulation_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    policies = result["policies"]
    if "probs" in next(iter(policies.values())):
        table = Table(title=f"{result['scenario']}: learned π over items 1..{len(result['reward'])}")
        table.add_column("policy", no_wrap=True)
        table.add_column("π (items 1..N)", no_wrap=True)
        table.add_column("E\\[r]", justify="right")
        table.add_column(f"J_{result['k']}", justify="right")
        for name, p in policies.items():
            probs = " ".join(f"{x:.2f}".removeprefix("0") for x in p["probs"])
            table.add_row(name, probs, f"{p['expected_reward']:.3f}", f"{p['topk_value']:.3f}")
    else:
        table = Table(title=f"{result['scenario']}: true value (rollouts) and off-policy estimates")
        for col in ("policy", "true value", "95% CI", "IPS", "capped IPS", "SNIPS"):
            table.add_column(col, justify="left" if col == "policy" else "right")
        for name, p in policies.items():
            est = p.get("estimates", {})
            cells = [f"{est[e]['value']:.3f}" if e in est else "-" for e in ("ips", "capped_ips", "snips")]
            table.add_row(name, f"{p['true_value']:.3f}", f"[{p['ci_low']:.3f}, {p['ci_high']:.3f}]", *cells)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("simulate")(simulate)
    app.command("ope")(ope)
