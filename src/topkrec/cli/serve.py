"""``topkrec recommend`` and ``topkrec serve`` (DESIGN §6). Heavy imports stay inside the commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from topkrec.errors import TopkrecError

_BATCH_CHUNK = 1024  # users per recommend_batch call in --users mode (chunks are spread over threads)
OUT_SUFFIXES = (".csv", ".tsv", ".parquet")


def _split_ids(text: str) -> list[str]:
    return [x for x in (p.strip() for p in text.replace(",", " ").split()) if x]


def _read_users_file(path: Path) -> tuple[list[str], list[list[str] | None] | None]:
    """Users (and optional histories) from .csv/.parquet (column ``user``, optional ``history`` of ids
    separated by spaces or commas) or a plain text file with one user id per line."""
    if not path.exists():
        raise TopkrecError(f"--users file {path} not found")
    suffix = path.suffix.lower()
    if suffix in (".txt", ""):
        users = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return users, None
    from topkrec.ope.logs import read_table

    df = read_table(path)
    if df.width == 0 or df.height == 0:
        raise TopkrecError(f"--users file {path} is empty")
    col = "user" if "user" in df.columns else df.columns[0]
    users = [str(u) for u in df[col].cast(str).to_list()]
    histories: list[list[str] | None] | None = None
    if "history" in df.columns:
        histories = [None if h is None else _split_ids(str(h)) for h in df["history"].cast(str).to_list()]
    return users, histories


def _write_table(path: Path, rows: dict[str, list[Any]]) -> None:
    import polars as pl

    from topkrec.io import atomic_write_bytes

    df = pl.DataFrame(
        rows,
        schema={"user": pl.String, "rank": pl.Int32, "item": pl.String, "score": pl.Float64, "propensity": pl.Float64},
    )
    import io

    buf = io.BytesIO()
    if path.suffix.lower() == ".parquet":
        df.write_parquet(buf)
    elif path.suffix.lower() in (".csv", ".tsv"):
        df.write_csv(buf, separator="\t" if path.suffix.lower() == ".tsv" else ",")
    else:  # checked before any work by recommend_command
        raise TopkrecError(f"--out {path}: use a .csv, .tsv or .parquet file name")
    atomic_write_bytes(path, buf.getvalue())


def recommend_command(
    model: Path = typer.Option(..., "--model", help="Model directory written by `topkrec train`."),
    user: str | None = typer.Option(None, "--user", help="Raw user id."),
    history: str | None = typer.Option(
        None, "--history", help="Raw item ids the user consumed, oldest first, separated by commas or spaces."
    ),
    users: Path | None = typer.Option(
        None, "--users", help="Batch mode: .csv/.parquet with a `user` column (optional `history`) or .txt."
    ),
    out: Path | None = typer.Option(None, "--out", help="Batch mode output, .csv or .parquet (long format)."),
    k: int = typer.Option(10, "--k", min=1, max=1000, help="Number of items to recommend."),
    exclude_seen: bool = typer.Option(
        True, "--exclude-seen/--include-seen", help="Leave out items the user already consumed."
    ),
    explore: bool = typer.Option(False, "--explore", help="Boltzmann exploration (paper §5) instead of top-K."),
    m: int = typer.Option(200, "--m", min=1, max=10000, help="Exploration: candidate pool, the top M by logit."),
    k_prime: int | None = typer.Option(
        None, "--k-prime", min=0, help="Exploration: items shown deterministically (default k // 2)."
    ),
    temperature: float = typer.Option(1.0, "--temperature", help="Exploration: softmax temperature (> 0)."),
    seed: int | None = typer.Option(None, "--seed", min=0, help="Exploration: seed for identical slates."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    dataset: Path | None = typer.Option(
        None, "--dataset", help="Dataset dir to take known users' histories from (if the model dir lacks them)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    threads: int = typer.Option(
        0, "--threads", min=0, max=256, help="Batch mode: scoring threads (0 = one per CPU core)."
    ),
    candidates: Path | None = typer.Option(
        None,
        "--candidates",
        help="Only these items may be recommended (ads, in-stock items): a .txt with one item id per line, or a "
        ".csv/.parquet with an `item` column.",
    ),
) -> None:
    """Recommend items for one user (--user and/or --history) or many (--users FILE --out FILE)."""
    from topkrec.cli.common import STATE
    from topkrec.io import check_output_file

    if users is None and user is None and history is None:
        raise TopkrecError("give --user ID, --history IDS or --users FILE")
    if users is not None and (user is not None or history is not None):
        raise TopkrecError("--users (batch mode) cannot be combined with --user or --history")
    if users is not None and out is None:
        raise TopkrecError("--users needs --out FILE.csv or FILE.parquet for the recommendations")
    if not (temperature > 0 and temperature < float("inf")):
        raise TopkrecError(f"--temperature must be a positive number, got {temperature}")
    if out is not None:
        if users is None:
            raise TopkrecError("--out is the batch-mode output: pass --users FILE too (or drop --out)")
        check_output_file(out, {"--users": users, "--model": model, "--dataset": dataset})
        if out.suffix.lower() not in OUT_SUFFIXES:
            raise TopkrecError(f"--out {out}: use a .csv, .tsv or .parquet file name")
    from topkrec.serve.recommender import Recommender

    rec = Recommender.load(model, device=device, dataset=dataset)
    kwargs: dict[str, Any] = dict(
        k=k, exclude_seen=exclude_seen, explore=explore, m=m, k_prime=k_prime, temperature=temperature, seed=seed
    )
    if candidates is not None:
        from topkrec.cli.common import read_item_ids

        kwargs["candidates"] = read_item_ids(candidates)
    if users is None:
        result = rec.recommend(user=user, history=_split_ids(history) if history else None, **kwargs)
        if as_json:
            typer.echo(json.dumps({"user": user, **result.to_dict()}))
            return
        if not result.user_known and user is not None:
            typer.echo(f"note: user {user!r} is not in the model; served from the given history", err=True)
        if result.unknown_history_items:
            shown = ", ".join(result.unknown_history_items[:10])
            typer.echo(f"note: ignored {len(result.unknown_history_items)} unknown history item(s): {shown}", err=True)
        typer.echo(f"{'rank':>4}  {'item':<20} {'score':>10} {'propensity':>10}")
        for rank, (item, score, prop) in enumerate(
            zip(result.items, result.scores, result.propensities, strict=True), 1
        ):
            typer.echo(f"{rank:>4}  {item:<20} {score:>10.4f} {prop:>10.4f}")
        return

    import os

    from topkrec.progress import progress_bar
    from topkrec.serve.recommender import recommend_in_chunks

    assert out is not None
    user_ids, histories = _read_users_file(users)
    rows: dict[str, list[Any]] = {"user": [], "rank": [], "item": [], "score": [], "propensity": []}
    n_unknown = 0
    workers = threads or (os.cpu_count() or 1)
    if workers > 1 and rec.device.type == "cpu":
        import torch

        torch.set_num_threads(1)  # parallel over chunks instead: no oversubscription, no spin-waits
    chunks = recommend_in_chunks(rec, user_ids, histories, chunk_size=_BATCH_CHUNK, workers=workers, **kwargs)
    with progress_bar(len(user_ids), "recommend", enabled=STATE.progress) as bar:
        start = 0
        for results in chunks:
            chunk_users = user_ids[start : start + len(results)]
            start += len(results)
            for u, r in zip(chunk_users, results, strict=True):
                n_unknown += not r.user_known
                n = len(r.items)
                rows["user"].extend([u] * n)
                rows["rank"].extend(range(1, n + 1))
                rows["item"].extend(r.items)
                rows["score"].extend(r.scores)
                rows["propensity"].extend(r.propensities)
            bar.update(len(results))
    _write_table(out, rows)
    summary = {"users": len(user_ids), "unknown_users": n_unknown, "rows": len(rows["item"]), "out": str(out)}
    typer.echo(
        json.dumps(summary)
        if as_json
        else f"wrote {summary['rows']} rows for {len(user_ids)} users to {out}"
        + (f" ({n_unknown} unknown users served from history only)" if n_unknown else "")
    )


def serve_command(
    model: Path = typer.Option(..., "--model", help="Model directory written by `topkrec train`."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 for all)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port."),
    log_impressions: Path | None = typer.Option(
        None,
        "--log-impressions",
        help="Append what is served, with propensities, as JSONL (`prepare --format events` reads it).",
    ),
    log_max_bytes: int = typer.Option(
        100_000_000, "--log-max-bytes", min=0, help="Rotate the impressions log beyond this size (0: never)."
    ),
    log_backups: int = typer.Option(
        5, "--log-backups", min=0, max=1000, help="Rotated impressions logs kept (FILE.1 … FILE.N)."
    ),
    read_timeout: float = typer.Option(
        30.0, "--read-timeout", min=0.1, max=3600, help="Seconds to wait for the next piece of a request body."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    dataset: Path | None = typer.Option(
        None, "--dataset", help="Dataset dir to take known users' histories from (if the model dir lacks them)."
    ),
    max_batch: int = typer.Option(64, "--max-batch", min=1, max=1024, help="Most requests scored together."),
    max_body_bytes: int = typer.Option(1_000_000, "--max-body-bytes", min=1024, help="Largest request body."),
    max_history: int = typer.Option(1000, "--max-history", min=1, help="Longest history accepted per user."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request (slower)."),
    workers: int = typer.Option(
        1, "--workers", min=1, max=64, help="Server processes (each loads the model; requests are spread)."
    ),
    threads: int = typer.Option(
        0,
        "--threads",
        min=0,
        max=256,
        help="Torch intra-op threads per worker (0 = auto: the cores per worker minus one for HTTP, at least 1).",
    ),
) -> None:
    """Serve the model over HTTP: POST /recommend, POST /recommend/batch, GET /health, GET /model, /docs."""
    import os

    import uvicorn

    from topkrec.io import check_output_file
    from topkrec.serve.app import ServeLimits, create_app
    from topkrec.serve.recommender import Recommender

    if log_impressions is not None:
        check_output_file(log_impressions, {"--model": model, "--dataset": dataset}, flag="--log-impressions")
    limits = ServeLimits(
        max_body_bytes=max_body_bytes,
        max_history=max_history,
        max_micro_batch=max_batch,
        read_timeout_s=read_timeout,
    )
    if not threads:
        # Measured on 2 busy cores: 1 torch thread costs 1.0 CPU-ms per request at 64 clients, torch's
        # default (2) 1.4 ms — its threads fight the event loop for the cores.
        threads = max(1, (os.cpu_count() or 2) // workers - 1)
    import torch

    torch.set_num_threads(threads)
    if workers > 1:
        import dataclasses

        from topkrec.serve.app import SERVE_CONFIG_ENV

        Recommender.load(model, device=device, dataset=dataset)  # fail here, once, on a bad model dir
        _listen(host, port).close()  # fail here on a port in use (uvicorn exits 3 with a log line)
        os.environ[SERVE_CONFIG_ENV] = json.dumps(
            {
                "model": str(model),
                "device": device,
                "dataset": str(dataset) if dataset else None,
                "impressions": str(log_impressions) if log_impressions else None,
                "impressions_max_bytes": log_max_bytes,
                "impressions_backups": log_backups,
                "limits": dataclasses.asdict(limits),
                "threads": threads,
            }
        )
        typer.echo(f"serving {model} with {workers} workers on http://{host}:{port} — docs at /docs", err=True)
        uvicorn.run(
            "topkrec.serve.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
            access_log=access_log,
        )
        return
    rec = Recommender.load(model, device=device, dataset=dataset)
    sock = _listen(host, port)  # bound here: a port in use is a one-line error, and --port 0 picks a free one
    app = create_app(
        rec,
        limits=limits,
        impressions=log_impressions,
        impressions_max_bytes=log_max_bytes,
        impressions_backups=log_backups,
    )
    bound = sock.getsockname()[1]
    typer.echo(
        f"serving {model} ({rec.n_items} items, {rec.device}) on http://{host}:{bound} — docs at /docs", err=True
    )
    config = uvicorn.Config(app, host=host, port=bound, log_level="warning", access_log=access_log)
    uvicorn.Server(config).run(sockets=[sock])


def _listen(host: str, port: int) -> Any:
    """A listening TCP socket on ``host``:``port`` (as uvicorn binds it), or a one-line error saying why not."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise TopkrecError(
            f"--host {host!r}: cannot resolve it ({e.strerror}); pass an address such as 127.0.0.1"
        ) from e
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        why = {
            errno.EADDRINUSE: "the port is in use (another server?); stop it or pass another --port",
            errno.EACCES: "permission denied (ports below 1024 need privileges); pass another --port",
            errno.EADDRNOTAVAIL: "the address is not one of this machine's; pass another --host",
        }.get(e.errno or 0, f"{e.strerror}; pass another --host or --port")
        raise TopkrecError(f"cannot listen on {host}:{port}: {why}") from e
    sock.set_inheritable(True)
    return sock


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("recommend")(recommend_command)
    app.command("serve")(serve_command)
