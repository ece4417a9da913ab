"""CLI commands of the data area: ``synth`` and ``prepare``. Heavy libraries are imported inside them."""

from __future__ import annotations

from pathlib import Path

import typer


def synth(
    out: Path = typer.Option(..., "--out", help="Directory to write user.csv, item.csv, user_behavior.csv into."),
    users: int = typer.Option(1500, "--users", help="Number of users (one journey each)."),
    items: int = typer.Option(3000, "--items", help="Number of items in the catalogue."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed; the same arguments give identical files."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing non-empty --out."),
) -> None:
    """Write synthetic behaviour logs in the Tianchi raw format (headerless CSVs).

    Power-law popularity, category/shop/brand, user tastes, sessions split
    by gaps over an hour, a hidden item-to-item structure, behaviours near
    pv 88 / cart 6 / fav 3 / buy 3 %.
    Then: topkrec prepare --format tianchi --input OUT --out DATASET
    """
    import numpy as np

    from topkrec.data.synth import BEHAVIORS, SynthConfig, generate, write_tianchi
    from topkrec.io import atomic_dir, write_json

    cfg = SynthConfig(n_users=users, n_items=items, seed=seed)
    logs = generate(cfg)
    with atomic_dir(out, force=force) as tmp:
        write_tianchi(logs, tmp)
        counts = np.bincount(logs.ev_behavior, minlength=len(BEHAVIORS))
        info = {
            "n_users": users,
            "n_items": items,
            "n_events": logs.n_events,
            "behavior_counts": {b: int(c) for b, c in zip(BEHAVIORS, counts, strict=True)},
            "seed": seed,
        }
        write_json(tmp / "synth.json", info)
    mix = " ".join(f"{b} {100 * c / max(logs.n_events, 1):.1f}%" for b, c in zip(BEHAVIORS, counts, strict=True))
    typer.echo(f"wrote {out}: {users} users, {items} items, {logs.n_events} events ({mix})")


def prepare(
    format: str = typer.Option(..., "--format", help="Raw log format: tianchi, taobao, movielens or events."),
    input: Path = typer.Option(
        ...,
        "--input",
        help="Raw data: a directory (tianchi) or a file (others; a directory "
        "holding UserBehavior.csv, or a MovieLens release's ratings.csv / ratings.dat / u.data, also works).",
    ),
    out: Path = typer.Option(..., "--out", help="Dataset directory to write."),
    sample_short: int | None = typer.Option(
        None,
        "--sample-short",
        help="Users to draw with 5 < n ≤ 50 events (tianchi default 60000; asking for more than exist is an error).",
    ),
    sample_long: int | None = typer.Option(
        None, "--sample-long", help="Users to draw with 50 < n ≤ 200 events (tianchi default 20000)."
    ),
    no_sample: bool = typer.Option(
        False, "--no-sample", help="Keep every user (the default for formats other than tianchi)."
    ),
    no_dedupe: bool = typer.Option(False, "--no-dedupe", help="Keep duplicate (user, item, behaviour) rows."),
    test_size: float = typer.Option(0.2, "--test-size", help="Share of each user's last events held out."),
    session: str = typer.Option("interval", "--session", help="interval (a gap starts a session) or one."),
    session_gap: int = typer.Option(3600, "--session-gap", help="Seconds of inactivity that end a session."),
    reward: str = typer.Option("pv=1,cart=2,fav=2,buy=3", "--reward", help="Behaviour → reward map."),
    gamma: float = typer.Option(0.99, "--gamma", help="Discount of the in-session return."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the user sampling."),
    skip_bad_rows: bool = typer.Option(
        False, "--skip-bad-rows", help="Drop malformed rows (counted and reported) instead of stopping at the first."
    ),
    user_col: str = typer.Option("user", "--user-col", help="events format: user id column."),
    item_col: str = typer.Option("item", "--item-col", help="events format: item id column."),
    time_col: str = typer.Option(
        "ts", "--time-col", help="events format: unix-time (see --time-unit) or date-time column."
    ),
    time_unit: str = typer.Option(
        "s", "--time-unit", help="Unit of numeric timestamps: s, ms, us or ns (converted to whole seconds)."
    ),
    event_col: str | None = typer.Option(
        None, "--event-col", help="events format: behaviour column, mapped by --reward."
    ),
    reward_col: str | None = typer.Option(None, "--reward-col", help="events format: numeric reward column."),
    propensity_col: str | None = typer.Option(
        None, "--propensity-col", help="events format: logging propensity column, kept as events.parquet `propensity`."
    ),
    step_col: str | None = typer.Option(
        None,
        "--step-col",
        help="events format: integer slate-step column (rows of one slate share it, non-decreasing per user); "
        "returns are then discounted once per step. Kept as events.parquet `step`.",
    ),
    separator: str = typer.Option(
        ",", "--separator", help="events format: field separator of a CSV file, one character (tab: 'tab')."
    ),
    columns: str | None = typer.Option(
        None,
        "--columns",
        help="events format: the column names of a CSV file without a header line, comma-separated "
        "(e.g. user,item,rating,ts); the --*-col flags then name these.",
    ),
    context_events: str = typer.Option(
        "",
        "--context-events",
        help="Comma-separated behaviours that are context only (organic views, page visits): they enter "
        "histories but are never training actions nor test targets; their reward is 0.",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing non-empty --out."),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json to stdout instead of the table."),
) -> None:
    """Prepare raw logs into a dataset directory (events.parquet, users/items, maps, meta.json, summary.json).

    Steps: dedupe; reference user sampling (tianchi); features and age
    buckets; chronological per-user split; frequency-ordered ids; sessions;
    rewards and returns.
    """
    import json

    from topkrec.data.prepare import (
        DEFAULT_SAMPLE_LONG,
        DEFAULT_SAMPLE_SHORT,
        FORMATS,
        PrepareConfig,
        SamplingConfig,
        parse_reward,
    )
    from topkrec.data.prepare import (
        prepare as run_prepare,
    )
    from topkrec.data.readers import EventColumns
    from topkrec.errors import TopkrecError
    from topkrec.io import atomic_dir, check_output_dir

    if format not in FORMATS:
        raise TopkrecError(f"unknown --format {format!r}; use one of {', '.join(FORMATS)}")
    inputs = {"--input": input}
    check_output_dir(out, force, inputs)
    sampling: SamplingConfig | None = None
    asked = sample_short is not None or sample_long is not None
    if no_sample and asked:
        raise TopkrecError("--no-sample contradicts --sample-short/--sample-long; pass one or the other")
    if not no_sample and (format == "tianchi" or asked):
        sampling = SamplingConfig(
            short=DEFAULT_SAMPLE_SHORT if sample_short is None else sample_short,
            long=DEFAULT_SAMPLE_LONG if sample_long is None else sample_long,
            strict=asked,
        )
    cfg = PrepareConfig(
        format=format,  # type: ignore[arg-type]  # checked above
        sampling=sampling,
        dedupe=not no_dedupe,
        test_size=test_size,
        session=session,  # type: ignore[arg-type]  # checked in PrepareConfig
        session_gap=session_gap,
        reward=parse_reward(reward),
        gamma=gamma,
        seed=seed,
        skip_bad_rows=skip_bad_rows,
        context_events=tuple(c.strip() for c in context_events.split(",") if c.strip()),
        columns=EventColumns(
            user=user_col,
            item=item_col,
            time=time_col,
            event=event_col,
            reward=reward_col,
            propensity=propensity_col,
            step=step_col,
            separator=separator,
            names=None if columns is None else tuple(columns.split(",")),
        ),
        time_unit=time_unit,
    )
    prepared, warnings = run_prepare(input, cfg)
    with atomic_dir(out, force=force, inputs=inputs) as tmp:
        prepared.save(tmp)
    if as_json:
        typer.echo(json.dumps(prepared.summary, indent=2))
        return
    _print_summary(out, prepared.summary, warnings)


def _print_summary(out: Path, s: dict[str, object], warnings: list[str]) -> None:
    counts = s["behavior_counts"]
    assert isinstance(counts, dict)
    total = max(int(s["n_events"]), 1)  # type: ignore[call-overload]
    mix = ", ".join(f"{b} {c} ({100 * c / total:.1f}%)" for b, c in counts.items())
    lines = [
        f"wrote {out}",
        f"  users {s['n_users']}  items {s['n_items']}  events {s['n_events']} "
        f"(train {s['n_train_events']}, test {s['n_test_events']}, OOV test {s['n_oov_test_events']})",
        f"  sessions {s['n_sessions']}  behaviours: {mix}",
        f"  dropped: {s['n_duplicates_dropped']} duplicates, {s['n_bad_rows_skipped']} bad rows; "
        f"raw events {s['n_raw_events']}",
    ]
    typer.echo("\n".join(lines))
    for w in warnings:
        typer.echo(f"warning: {w}", err=True)


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("synth")(synth)
    app.command("prepare")(prepare)
