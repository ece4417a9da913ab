"""CLI command of the simulation area: ``simulate`` (``ope`` lives in ``cli/ope.py``).

Heavy libraries (polars, torch, matplotlib) are imported inside the command functions.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from topkrec.errors import TopkrecError

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
    seeds: int = typer.Option(5, "--seeds", help="Sequential: independent environments/logs/trainings."),
    world: str = typer.Option(
        "default", "--world", help="Sequential: default | costly-bias | many-good (see docs/simulate.md)."
    ),
    quick: bool = typer.Option(False, "--quick", help="Sequential: a small preset that runs in well under a minute."),
    ope_pl: bool = typer.Option(
        False, "--ope-pl", help="Sequential: also estimate the Plackett–Luce forms off-policy (~2 CPU-min per seed)."
    ),
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

        from topkrec.simulate.sequential import WORLDS, SequentialConfig, run_sequential

        if seeds < 1:
            raise TopkrecError("--seeds must be at least 1")
        if world not in WORLDS:
            raise TopkrecError(f"unknown --world {world!r}; use one of {', '.join(WORLDS)}")
        config_seq = (
            SequentialConfig.quick(seed=seed, n_seeds=seeds, world=world)
            if quick
            else SequentialConfig.for_world(world, seed=seed, n_seeds=seeds)
        )
        config_seq = replace(config_seq, log_impressions=not interactions_only, ope_pl=ope_pl)
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
        n_seeds = len(next(iter(policies.values()))["per_seed"])
        title = f"{result['scenario']} ({result.get('world', 'default')} world, {n_seeds} seeds): true value and OPE"
        table = Table(title=title)
        for col in ("policy", "slate form", "true value", "95% CI", "IPS", "capped IPS", "SNIPS"):
            table.add_column(col, justify="left" if col in ("policy", "slate form") else "right")
        for name, p in policies.items():
            est = p.get("estimates", {})
            cells = [f"{est[e]['value']:.3f}" if e in est else "-" for e in ("ips", "capped_ips", "snips")]
            ci = f"[{p['ci_low']:.3f}, {p['ci_high']:.3f}]"
            table.add_row(name, p.get("form", ""), f"{p['true_value']:.3f}", ci, *cells)
        console.print(table)
        table = Table(
            title="paired differences A − B (same world, users and noise per seed; 95% t interval over seeds)"
        )
        for col in ("A − B", "mean", "95% CI", "per seed"):
            table.add_column(col, justify="left" if col == "A − B" else "right")
        for pair, d in result.get("paired", {}).items():
            per_seed = " ".join(f"{x:+.2f}" for x in d["per_seed"])
            table.add_row(
                pair.replace("-", " − "), f"{d['mean']:+.3f}", f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]", per_seed
            )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("simulate")(simulate)
