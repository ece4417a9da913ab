"""CLI commands of the data area: ``synth`` and ``prepare``. Heavy libraries are imported inside them."""

from __future__ import annotations

from pathlib import Path

import typer


def synth(
    out: Path = typer.Option(..., "--out", help="Directory to write user.csv, item.csv, user_behavior.csv into."),
    users: int = typer.Option(1500, "--users", help="Number of users (one journey each)."),
    items: int = typer.Option(3000, "--items", help="Number of items in the catalogue."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same arguments give identical files."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing non-empty --out."),
) -> None:
    """Write synthetic behaviour logs in the Tianchi raw format (headerless CSVs).

    Power-law item popularity, category/shop/brand hierarchy, user tastes, sessions split by gaps
    over an hour, a hidden item-to-item structure, behaviours near pv 88 % / cart 6 % / fav 3 % /
    buy 3 %. Prepare them with `topkrec prepare --format tianchi --input OUT --out DATASET`.
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


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("synth")(synth)
