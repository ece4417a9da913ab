"""Bad inputs for every command (issue 14): each case must exit 2 with one ``error:`` line naming the
file/line/value (or click's usage block for usage errors), print no traceback, create no output and leave
every input as it was.

The table is run in-process through ``topkrec.cli.main`` (the same entry point as the console script, with
``sys.argv`` set) because a fresh interpreter per case costs seconds; ``proc=True`` cases — at least one per
command — run a real ``python -m topkrec`` subprocess. Fixtures (raw logs of every format, a dataset,
embeddings, a trained model) are built once for the module. ``train``/``compare``/``demo``/``pretrain`` cases
are path and file problems, or checks that already exit 2; setting validation is tested elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest

# ------------------------------------------------------------------------------------------ fixtures
RO = next((Path(p) for p in ("/proc/sys", "/proc/self") if Path(p).is_dir() and not os.access(p, os.W_OK)), None)
"""A directory nobody may write into, root included (root ignores chmod); None where there is none."""


@dataclass
class World:
    root: Path
    paths: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Path:
        return Path(self.paths[key])


def run_inprocess(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """``topkrec argv`` through ``topkrec.cli.main`` in this process: (status, stdout, stderr). An exception
    escaping main is what a user would see as a traceback, so it is written to stderr as one."""
    from topkrec.cli import main

    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cwd = sys.argv, os.getcwd()
    sys.argv = ["topkrec", *argv]
    code: int
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # noqa: BLE001 - this is what the user would see
                err.write(traceback.format_exc())
                code = 1
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    return code, out.getvalue(), err.getvalue()


def run_subprocess(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    r = subprocess.run([sys.executable, "-m", "topkrec", *argv], capture_output=True, text=True, timeout=300, cwd=cwd)
    return r.returncode, r.stdout, r.stderr


def _synth(out: Path, users: int, items: int, seed: int) -> None:
    from topkrec.data.synth import SynthConfig, generate, write_tianchi

    out.mkdir(parents=True)
    write_tianchi(generate(SynthConfig(n_users=users, n_items=items, seed=seed)), out)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("bad-inputs")
    w = World(root)
    p = w.paths
    _synth(root / "raw", 60, 100, 0)
    p["raw"] = str(root / "raw")
    beh = pl.read_csv(root / "raw" / "user_behavior.csv", has_header=False, new_columns=["u", "i", "b", "t"])
    # taobao: user,item,category,behavior,ts
    (root / "taobao").mkdir()
    beh.select("u", "i", (pl.col("i") % 7).alias("c"), "b", "t").write_csv(
        root / "taobao" / "UserBehavior.csv", include_header=False
    )
    p["taobao"] = str(root / "taobao" / "UserBehavior.csv")
    # movielens: ratings.csv (+ movies.csv)
    (root / "ml").mkdir()
    ratings = beh.select(
        pl.col("u").alias("userId"),
        pl.col("i").alias("movieId"),
        ((pl.col("i") % 5) + 1).cast(pl.Float64).alias("rating"),
        pl.col("t").alias("timestamp"),
    ).unique(["userId", "movieId"], keep="first", maintain_order=True)
    ratings.write_csv(root / "ml" / "ratings.csv")
    movies = ratings.select(pl.col("movieId").unique().sort())
    movies.with_columns(
        pl.format("Movie {}", "movieId").alias("title"), pl.lit("Drama|Comedy").alias("genres")
    ).write_csv(root / "ml" / "movies.csv")
    p["ml"] = str(root / "ml")
    # events: CSV, Parquet, JSON lines
    ev = beh.select(
        pl.col("u").alias("user"), pl.col("i").alias("item"), pl.col("t").alias("ts"), pl.col("b").alias("event")
    )
    (root / "ev").mkdir()
    ev.write_csv(root / "ev" / "log.csv")
    ev.write_parquet(root / "ev" / "log.parquet")
    ev.write_ndjson(root / "ev" / "log.jsonl")
    p.update(evcsv=str(root / "ev" / "log.csv"), evpq=str(root / "ev" / "log.parquet"))
    p["evjsonl"] = str(root / "ev" / "log.jsonl")
    # a dataset, embeddings and a trained model (through the CLI, as a user makes them)
    quiet = ["--no-progress"]
    for argv in (
        [*quiet, "prepare", "--format", "tianchi", "--input", p["raw"], "--out", str(root / "ds"), "--no-sample"],
        [
            *quiet,
            "pretrain",
            "--data",
            str(root / "ds"),
            "--out",
            str(root / "emb"),
            "--epochs",
            "1",
            "--device",
            "cpu",
        ],
        [*quiet, "train", "--data", str(root / "ds"), "--embeddings", str(root / "emb"), "--out", str(root / "model")]
        + ["--max-steps", "2", "--device", "cpu"],
    ):
        code, _, err = run_inprocess(argv, root)
        assert code == 0, err
    p.update(ds=str(root / "ds"), emb=str(root / "emb"), model=str(root / "model"))
    # a dataset of other sizes, and one of the same sizes whose user ids differ (another fingerprint)
    _synth(root / "raw_small", 30, 60, 1)
    code, _, err = run_inprocess(
        [*quiet, "prepare", "--format", "tianchi", "--input", str(root / "raw_small"), "--out", str(root / "ds_small")]
        + ["--no-sample"],
        root,
    )
    assert code == 0, err
    p["ds_small"] = str(root / "ds_small")
    shutil.copytree(root / "ds", root / "ds_ids")
    umap = pl.read_parquet(root / "ds_ids" / "maps" / "user_map.parquet")
    umap.with_columns(pl.format("x{}", "raw").alias("raw")).write_parquet(root / "ds_ids" / "maps" / "user_map.parquet")
    p["ds_ids"] = str(root / "ds_ids")
    # ope logs, recommend's users file, a plain file
    (root / "ope.csv").write_text("a,r,p\n" + "".join(f"{i % 5},{i % 2},0.2\n" for i in range(40)))
    p["ope"] = str(root / "ope.csv")
    users = pl.read_parquet(root / "ds" / "maps" / "user_map.parquet")["raw"].head(5)
    (root / "users.csv").write_text("user\n" + "\n".join(users) + "\n")
    p["users"] = str(root / "users.csv")
    p["user"] = str(users[0])
    (root / "afile").write_text("just a file\n")
    p["afile"] = str(root / "afile")
    p["ro"] = str(RO) if RO is not None else ""
    with socket.socket() as busy:  # a port in use for serve's case
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        p["port"] = str(busy.getsockname()[1])
        yield w


# ------------------------------------------------------------------------------------------ the cases
Setup = Callable[[World, Path], None]


@dataclass(frozen=True)
class Case:
    id: str
    args: str  # a command line; {name} is a path of the world, {d} this case's own directory
    needles: tuple[str, ...] = ()  # substrings of the error line (file, line, value, flag)
    setup: Setup | None = None  # builds this case's bad input under {d}
    out: str | None = None  # an output path that must not be created
    usage: bool = False  # a usage error: click's usage block, not an `error:` line
    proc: bool = False  # run as a real subprocess
    needs: str | None = None  # "ro": a read-only directory; "user": a non-root user


def case(id: str, args: str, *needles: str, **kw: object) -> Case:
    return Case(id, args, tuple(needles), **kw)  # type: ignore[arg-type]


def copy_raw(w: World, d: Path, name: str = "raw") -> Path:
    shutil.copytree(w["raw"], d / name)
    return d / name


def edit_line(path: Path, index: int, edit: Callable[[bytes], bytes]) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[index] = edit(lines[index])
    path.write_bytes(b"\n".join(lines))


def raw_with(file: str, index: int, edit: Callable[[bytes], bytes]) -> Setup:
    def setup(w: World, d: Path) -> None:
        edit_line(copy_raw(w, d) / file, index, edit)

    return setup


def appended(name: str, data: bytes) -> Setup:
    def setup(w: World, d: Path) -> None:
        with (d / name).open("ab") as f:
            f.write(data)

    return setup


def raw_appended(file: str, data: bytes) -> Setup:
    def setup(w: World, d: Path) -> None:
        with (copy_raw(w, d) / file).open("ab") as f:
            f.write(data)

    return setup


def ff_in_first_field(line: bytes) -> bytes:
    return b"\xff" + line


def copy_to(key: str, name: str, edit: Callable[[bytes], bytes] | None = None, index: int = 3) -> Setup:
    def setup(w: World, d: Path) -> None:
        target = d / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(w[key], target)
        if edit is not None:
            edit_line(target, index, edit)

    return setup


def write(name: str, content: bytes | str) -> Setup:
    def setup(w: World, d: Path) -> None:
        target = d / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else content.encode())

    return setup


def parquet(name: str, frame: Callable[[], pl.DataFrame]) -> Setup:
    def setup(w: World, d: Path) -> None:
        frame().write_parquet(d / name)

    return setup


def non_empty(name: str) -> Setup:
    return write(f"{name}/keep.txt", "mine")


def times(factor: int) -> Setup:
    def setup(w: World, d: Path) -> None:
        path = copy_raw(w, d) / "user_behavior.csv"
        beh = pl.read_csv(path, has_header=False, new_columns=["u", "i", "b", "t"])
        beh.with_columns(pl.col("t") * factor).write_csv(path, include_header=False)

    return setup


def copy_dir(key: str, name: str, edit: Callable[[Path], None]) -> Setup:
    def setup(w: World, d: Path) -> None:
        shutil.copytree(w[key], d / name)
        edit(d / name)

    return setup


def both(*setups: Setup) -> Setup:
    def setup(w: World, d: Path) -> None:
        for s in setups:
            s(w, d)

    return setup


T0 = 1_511_569_589
EV_HEAD = "user,item,ts,reward,p\n"


def ev_rows(*rows: str) -> str:
    good = [f"{u},{i},{T0 + 60 * i},1,0.5" for u in (1, 2) for i in range(1, 6)]
    return EV_HEAD + "\n".join([*good, *rows]) + "\n"


EVR = "--format events --reward-col reward"  # events with a numeric reward column
EVE = "--format events --event-col event --time-col ts"

SYNTH = [
    case("synth-out-is-a-file", "synth --out {afile}", "afile", "not a directory", proc=True),
    case("synth-out-under-a-file", "synth --out {afile}/x", "afile", "is a file, not a directory", out="{afile}/x"),
    case("synth-out-not-empty", "synth --out {d}/o", "already exists", "--force", setup=non_empty("o")),
    case("synth-users-0", "synth --out {d}/o --users 0", "--users", out="{d}/o"),
    case("synth-users-negative", "synth --out {d}/o --users -5", "--users", "-5", out="{d}/o"),
    case("synth-items-5", "synth --out {d}/o --items 5", "--items", out="{d}/o"),
    case("synth-seed-negative", "synth --out {d}/o --seed -1", usage=True, out="{d}/o"),
    case("synth-users-abc", "synth --out {d}/o --users abc", usage=True, out="{d}/o"),
    case("synth-no-out", "synth", usage=True),
    case("synth-out-read-only", "synth --out {ro}/topkrec-o", "choose another", needs="ro"),
]

P = "prepare --no-sample"
PREPARE = [
    # flags
    case("prepare-unknown-format", "prepare --format csv --input {raw} --out {d}/o", "--format 'csv'", out="{d}/o"),
    case("prepare-no-format", "prepare --input {raw} --out {d}/o", usage=True, out="{d}/o"),
    case("prepare-bogus-option", "prepare --bogus", usage=True),
    case(
        "prepare-input-missing",
        f"{P} --format tianchi --input {{d}}/nope --out {{d}}/o",
        "nope",
        "not found",
        out="{d}/o",
        proc=True,
    ),
    case(
        "prepare-tianchi-input-is-a-file",
        f"{P} --format tianchi --input {{raw}}/user.csv --out {{d}}/o",
        "user.csv",
        "must be a directory",
        out="{d}/o",
    ),
    case(
        "prepare-tianchi-missing-user-csv",
        f"{P} --format tianchi --input {{d}}/raw --out {{d}}/o",
        "user.csv not found",
        setup=lambda w, d: (copy_raw(w, d) / "user.csv").unlink(),
        out="{d}/o",
    ),
    case(
        "prepare-tianchi-user-csv-is-a-dir",
        f"{P} --format tianchi --input {{d}}/raw --out {{d}}/o",
        "user.csv is not a file",
        setup=lambda w, d: ((copy_raw(w, d) / "user.csv").unlink(), (d / "raw" / "user.csv").mkdir()),
        out="{d}/o",
    ),
    case("prepare-events-input-is-a-dir", f"{P} {EVE} --input {{raw}} --out {{d}}/o", "is a directory", out="{d}/o"),
    case(
        "prepare-events-no-event-or-reward-col",
        f"{P} --format events --input {{evcsv}} --out {{d}}/o",
        "--event-col",
        out="{d}/o",
    ),
    case(
        "prepare-events-missing-column",
        f"{P} {EVE} --input {{evcsv}} --out {{d}}/o --user-col uid",
        "log.csv",
        "no column 'uid'",
        "--user-col",
        out="{d}/o",
    ),
    case(
        "prepare-test-size-1.5",
        f"{P} --format tianchi --input {{raw}} --out {{d}}/o --test-size 1.5",
        "--test-size",
        out="{d}/o",
    ),
    case(
        "prepare-test-size-nan",
        f"{P} --format tianchi --input {{raw}} --out {{d}}/o --test-size nan",
        "--test-size",
        out="{d}/o",
    ),
    case("prepare-gamma-2", f"{P} --format tianchi --input {{raw}} --out {{d}}/o --gamma 2", "--gamma", out="{d}/o"),
    case(
        "prepare-gamma-nan", f"{P} --format tianchi --input {{raw}} --out {{d}}/o --gamma nan", "--gamma", out="{d}/o"
    ),
    case(
        "prepare-session-bogus",
        f"{P} --format tianchi --input {{raw}} --out {{d}}/o --session daily",
        "--session",
        "'daily'",
        out="{d}/o",
    ),
    case(
        "prepare-session-gap-0",
        f"{P} --format tianchi --input {{raw}} --out {{d}}/o --session-gap 0",
        "--session-gap",
        out="{d}/o",
    ),
    case(
        "prepare-reward-no-equals",
        f"{P} --format tianchi --input {{raw}} --out {{d}}/o --reward pv:1",
        "--reward",
        "behaviour=number",
        out="{d}/o",
    ),
    case(
        "prepare-reward-nan",
        f"{P} --format tianchi --input {{raw}} --out {{d}}/o --reward pv=nan",
        "--reward",
        out="{d}/o",
    ),
    case(
        "prepare-reward-twice",
        f"{P} --format tianchi --input {{raw}} --out {{d}}/o --reward pv=1,pv=2",
        "twice",
        out="{d}/o",
    ),
    case(
        "prepare-sample-negative",
        "prepare --format tianchi --input {raw} --out {d}/o --sample-short -1",
        "--sample-short",
        out="{d}/o",
    ),
    case(
        "prepare-no-sample-and-sample",
        "prepare --format tianchi --input {raw} --out {d}/o --no-sample --sample-short 5",
        "--no-sample",
        out="{d}/o",
    ),
    case(
        "prepare-sample-too-many",
        "prepare --format tianchi --input {raw} --out {d}/o --sample-short 100000",
        "--sample-short 100000",
        "more users than exist",
        out="{d}/o",
    ),
    case(
        "prepare-seed-negative",
        f"{P} --format tianchi --input {{raw}} --out {{d}}/o --seed -1",
        usage=True,
        out="{d}/o",
    ),
    case(
        "prepare-time-unit-bogus",
        f"{P} --format tianchi --input {{raw}} --out {{d}}/o --time-unit h",
        "--time-unit 'h'",
        out="{d}/o",
    ),
    case(
        "prepare-propensity-col-tianchi",
        f"{P} --format tianchi --input {{raw}} --out {{d}}/o --propensity-col p",
        "--propensity-col",
        "no logged propensities",
        out="{d}/o",
    ),
    case(
        "prepare-user-col-taobao",
        f"{P} --format taobao --input {{taobao}} --out {{d}}/o --user-col uid",
        "--user-col",
        "taobao",
        out="{d}/o",
    ),
    case(
        "prepare-reward-col-movielens",
        f"{P} --format movielens --input {{ml}} --out {{d}}/o --reward-col r",
        "--reward-col",
        out="{d}/o",
    ),
    case(
        "prepare-step-col-movielens",
        f"{P} --format movielens --input {{ml}} --out {{d}}/o --step-col s",
        "--step-col",
        "no slate steps",
        out="{d}/o",
    ),
    # where the output goes
    case(
        "prepare-out-under-a-file",
        f"{P} --format tianchi --input {{raw}} --out {{afile}}/o",
        "is a file, not a directory",
    ),
    case("prepare-out-is-a-file", f"{P} --format tianchi --input {{raw}} --out {{afile}}", "not a directory"),
    case(
        "prepare-out-not-empty", f"{P} --format tianchi --input {{raw}} --out {{d}}/o", "--force", setup=non_empty("o")
    ),
    case(
        "prepare-out-read-only",
        f"{P} --format tianchi --input {{raw}} --out {{ro}}/topkrec-o",
        "choose another",
        needs="ro",
    ),
    # bytes that are not UTF-8, in every CSV of every format
    case(
        "prepare-0xff-tianchi-behavior",
        f"{P} --format tianchi --input {{d}}/raw --out {{d}}/o",
        "user_behavior.csv line 4",
        "not valid UTF-8",
        "--skip-bad-rows",
        setup=raw_with("user_behavior.csv", 3, ff_in_first_field),
        out="{d}/o",
    ),
    case(
        "prepare-0xff-tianchi-user",
        f"{P} --format tianchi --input {{d}}/raw --out {{d}}/o",
        "user.csv line 2",
        "not valid UTF-8",
        setup=raw_with("user.csv", 1, ff_in_first_field),
        out="{d}/o",
    ),
    case(
        "prepare-0xff-tianchi-item",
        f"{P} --format tianchi --input {{d}}/raw --out {{d}}/o",
        "item.csv line 7",
        "not valid UTF-8",
        setup=raw_with("item.csv", 6, lambda x: x + b"\xff"),
        out="{d}/o",
    ),
    case(
        "prepare-0xff-tianchi-last-byte",
        f"{P} --format tianchi --input {{d}}/raw --out {{d}}/o",
        "user_behavior.csv line",
        "not valid UTF-8",
        setup=raw_appended("user_behavior.csv", b"\xff"),
        out="{d}/o",
    ),
    case(
        "prepare-0xff-taobao",
        f"{P} --format taobao --input {{d}}/UserBehavior.csv --out {{d}}/o",
        "UserBehavior.csv line 4",
        "not valid UTF-8",
        setup=copy_to("taobao", "UserBehavior.csv", ff_in_first_field),
        out="{d}/o",
    ),
    case(
        "prepare-0xff-movielens-ratings",
        f"{P} --format movielens --input {{d}}/ml --out {{d}}/o",
        "ratings.csv line 4",
        "not valid UTF-8",
        setup=copy_dir("ml", "ml", lambda m: edit_line(m / "ratings.csv", 3, ff_in_first_field)),
        out="{d}/o",
    ),
    case(
        "prepare-0xff-movielens-genres",
        f"{P} --format movielens --input {{d}}/ml --out {{d}}/o",
        "movies.csv line 3",
        "not valid UTF-8",
        setup=copy_dir("ml", "ml", lambda m: edit_line(m / "movies.csv", 2, lambda x: x + b"\xff")),
        out="{d}/o",
    ),
    case(
        "prepare-0xff-events-csv",
        f"{P} {EVE} --input {{d}}/log.csv --out {{d}}/o",
        "log.csv line 4",
        "not valid UTF-8",
        setup=copy_to("evcsv", "log.csv", ff_in_first_field),
        out="{d}/o",
    ),
    case(
        "prepare-0xff-events-jsonl",
        f"{P} {EVE} --input {{d}}/log.jsonl --out {{d}}/o",
        "log.jsonl line 4",
        "not valid UTF-8",
        setup=copy_to("evjsonl", "log.jsonl", lambda x: x.replace(b'"pv"', b'"p\xffv"')),
        out="{d}/o",
    ),
    # timestamps
    case(
        "prepare-tianchi-fractional-ts",
        f"{P} --format tianchi --input {{d}}/raw --out {{d}}/o",
        "user_behavior.csv line 5",
        "'1",
        "is not an integer",
        setup=raw_with("user_behavior.csv", 4, lambda x: x + b".5"),
        out="{d}/o",
    ),
    case(
        "prepare-events-ts-garbage-row",
        f"{P} {EVR} --input {{d}}/e.csv --out {{d}}/o",
        "e.csv line 12",
        "'ts'",
        "'soon'",
        setup=write("e.csv", ev_rows("3,7,soon,1,0.5")),
        out="{d}/o",
    ),
    case(
        "prepare-events-ts-all-garbage",
        f"{P} {EVR} --input {{d}}/e.csv --out {{d}}/o",
        "e.csv line 2",
        "not a timestamp",
        setup=write("e.csv", EV_HEAD + "1,2,soon,1,0.5\n1,3,later,1,0.5\n"),
        out="{d}/o",
    ),
    case(
        "prepare-tianchi-milliseconds",
        f"{P} --format tianchi --input {{d}}/raw --out {{d}}/o",
        "user_behavior.csv",
        "milliseconds",
        "--time-unit ms",
        setup=times(1000),
        out="{d}/o",
    ),
    case(
        "prepare-tianchi-microseconds",
        f"{P} --format tianchi --input {{d}}/raw --out {{d}}/o",
        "microseconds",
        "--time-unit us",
        setup=times(1_000_000),
        out="{d}/o",
    ),
    case(
        "prepare-events-milliseconds",
        f"{P} {EVR} --input {{d}}/e.csv --out {{d}}/o",
        "e.csv",
        "--time-unit ms",
        setup=write("e.csv", EV_HEAD + "".join(f"1,{i},{(T0 + i) * 1000},1,0.5\n" for i in range(5))),
        out="{d}/o",
    ),
    case(
        "prepare-time-unit-on-seconds",
        f"{P} --format tianchi --input {{raw}} --out {{d}}/o --time-unit ms",
        "look like seconds",
        "drop --time-unit",
        out="{d}/o",
    ),
    case(
        "prepare-time-unit-on-date-times",
        f"{P} {EVR} --input {{d}}/e.csv --out {{d}}/o --time-unit ms",
        "date-time",
        setup=write("e.csv", EV_HEAD + "1,2,2024-01-01 10:00:00,1,0.5\n"),
        out="{d}/o",
    ),
    case(
        "prepare-taobao-cut-mid-timestamp",
        f"{P} --format taobao --input {{d}}/UserBehavior.csv --out {{d}}/o",
        "UserBehavior.csv line",
        "far from the other timestamps",
        "--skip-bad-rows",
        setup=both(copy_to("taobao", "UserBehavior.csv"), appended("UserBehavior.csv", b"1,2,3,pv,151\n")),
        out="{d}/o",
    ),
    case(
        "prepare-tianchi-ts-far-future",
        f"{P} --format tianchi --input {{d}}/raw --out {{d}}/o",
        "line 9",
        "far from the other timestamps",
        setup=raw_with("user_behavior.csv", 8, lambda x: x.rsplit(b",", 1)[0] + b",99999999999"),
        out="{d}/o",
    ),
    # Parquet column types and values
    case(
        "prepare-parquet-list-user",
        f"{P} {EVR} --input {{d}}/l.parquet --out {{d}}/o",
        "l.parquet",
        "'user'",
        "List",
        setup=parquet(
            "l.parquet", lambda: pl.DataFrame({"user": [[1], [2]], "item": [1, 2], "ts": [1, 2], "reward": [1.0, 0.0]})
        ),
        out="{d}/o",
    ),
    case(
        "prepare-parquet-struct-item",
        f"{P} {EVR} --input {{d}}/s.parquet --out {{d}}/o",
        "'item'",
        "Struct",
        setup=parquet(
            "s.parquet",
            lambda: pl.DataFrame({"user": [1, 2], "item": [{"a": 1}, {"a": 2}], "ts": [1, 2], "reward": [1.0, 0.0]}),
        ),
        out="{d}/o",
    ),
    case(
        "prepare-parquet-fractional-float-ids",
        f"{P} {EVR} --input {{d}}/f.parquet --out {{d}}/o",
        "f.parquet row 1",
        "0.2",
        "not a whole number",
        setup=parquet(
            "f.parquet", lambda: pl.DataFrame({"user": [0.2, 0.7], "item": [1, 2], "ts": [1, 2], "reward": [1.0, 0.0]})
        ),
        out="{d}/o",
    ),
    case(
        "prepare-parquet-nan-float-id",
        f"{P} {EVR} --input {{d}}/n.parquet --out {{d}}/o",
        "n.parquet row 2",
        "'user'",
        "nan",
        setup=parquet(
            "n.parquet",
            lambda: pl.DataFrame({"user": [107.0, float("nan")], "item": [1, 2], "ts": [1, 2], "reward": [1.0, 0.0]}),
        ),
        out="{d}/o",
    ),
    case(
        "prepare-parquet-nan-reward",
        f"{P} {EVR} --input {{d}}/r.parquet --out {{d}}/o",
        "r.parquet row 2",
        "'reward'",
        "not a finite number",
        setup=parquet(
            "r.parquet",
            lambda: pl.DataFrame({"user": [1, 1], "item": [1, 2], "ts": [1, 2], "reward": [1.0, float("nan")]}),
        ),
        out="{d}/o",
    ),
    case(
        "prepare-parquet-corrupt",
        f"{P} {EVR} --input {{d}}/c.parquet --out {{d}}/o",
        "c.parquet",
        "cannot read Parquet",
        setup=write("c.parquet", b"PAR1 this is not parquet"),
        out="{d}/o",
    ),
    case(
        "prepare-parquet-missing-column",
        f"{P} {EVE} --input {{evpq}} --out {{d}}/o --time-col when",
        "log.parquet",
        "no column 'when'",
        out="{d}/o",
    ),
    # MovieLens
    case(
        "prepare-movielens-nan-rating",
        f"{P} --format movielens --input {{d}}/ml --out {{d}}/o",
        "ratings.csv line 3",
        "'nan'",
        "not a finite number",
        setup=copy_dir(
            "ml",
            "ml",
            lambda m: edit_line(
                m / "ratings.csv", 2, lambda x: b",".join([*x.split(b",")[:2], b"nan", x.split(b",")[3]])
            ),
        ),
        out="{d}/o",
    ),
    case(
        "prepare-movielens-inf-rating",
        f"{P} --format movielens --input {{d}}/ml --out {{d}}/o",
        "ratings.csv line 6",
        "'inf'",
        setup=copy_dir(
            "ml",
            "ml",
            lambda m: edit_line(
                m / "ratings.csv", 5, lambda x: b",".join([*x.split(b",")[:2], b"inf", x.split(b",")[3]])
            ),
        ),
        out="{d}/o",
    ),
    case(
        "prepare-movielens-header-only",
        f"{P} --format movielens --input {{d}}/ratings.csv --out {{d}}/o",
        "ratings.csv",
        "no events",
        setup=write("ratings.csv", "userId,movieId,rating,timestamp\n"),
        out="{d}/o",
    ),
    case(
        "prepare-movielens-columns-reordered",
        f"{P} --format movielens --input {{d}}/ratings.csv --out {{d}}/o",
        "ratings.csv",
        "in that order",
        setup=write("ratings.csv", "movieId,userId,rating,timestamp\n1,2,3,4\n"),
        out="{d}/o",
    ),
    case(
        "prepare-movielens-missing-column",
        f"{P} --format movielens --input {{d}}/ratings.csv --out {{d}}/o",
        "no column 'rating'",
        setup=write("ratings.csv", "userId,movieId,timestamp\n1,2,3\n"),
        out="{d}/o",
    ),
    case(
        "prepare-movielens-empty-file",
        f"{P} --format movielens --input {{d}}/ratings.csv --out {{d}}/o",
        "ratings.csv is empty",
        setup=write("ratings.csv", ""),
        out="{d}/o",
    ),
    # events rows
    case(
        "prepare-events-inf-reward",
        f"{P} {EVR} --input {{d}}/e.csv --out {{d}}/o",
        "e.csv line 12",
        "'reward'",
        setup=write("e.csv", ev_rows("3,7,1511569999,inf,0.5")),
        out="{d}/o",
    ),
    case(
        "prepare-events-reward-text",
        f"{P} {EVR} --input {{d}}/e.csv --out {{d}}/o",
        "e.csv line 12",
        "'lots'",
        setup=write("e.csv", ev_rows("3,7,1511569999,lots,0.5")),
        out="{d}/o",
    ),
    case(
        "prepare-events-propensity-0",
        f"{P} {EVR} --input {{d}}/e.csv --out {{d}}/o --propensity-col p",
        "e.csv line 12",
        "propensity 0.0",
        setup=write("e.csv", ev_rows("3,7,1511569999,1,0")),
        out="{d}/o",
    ),
    case(
        "prepare-events-propensity-nan",
        f"{P} {EVR} --input {{d}}/e.csv --out {{d}}/o --propensity-col p",
        "e.csv line 12",
        "'p'",
        setup=write("e.csv", ev_rows("3,7,1511569999,1,nan")),
        out="{d}/o",
    ),
    case(
        "prepare-events-empty-user",
        f"{P} {EVR} --input {{d}}/e.csv --out {{d}}/o",
        "e.csv line 12",
        "'user'",
        "missing",
        setup=write("e.csv", ev_rows(",7,1511569999,1,0.5")),
        out="{d}/o",
    ),
    case(
        "prepare-events-nan-user",
        f"{P} {EVR} --input {{d}}/e.csv --out {{d}}/o",
        "e.csv line 12",
        "'user'",
        "missing",
        setup=write("e.csv", ev_rows("NaN,7,1511569999,1,0.5")),
        out="{d}/o",
    ),
    case(
        "prepare-events-ragged-row",
        f"{P} {EVR} --input {{d}}/e.csv --out {{d}}/o",
        "e.csv line 12",
        "expected",
        setup=write("e.csv", ev_rows("3,7,1511569999,1,0.5,extra")),
        out="{d}/o",
    ),
    case(
        "prepare-events-unknown-behaviour",
        f"{P} {EVE} --input {{d}}/log.csv --out {{d}}/o",
        "log.csv line 4",
        "'click'",
        "--reward pv=1,cart=2,fav=2,buy=3,click=1",
        setup=copy_to("evcsv", "log.csv", lambda x: b",".join([*x.split(b",")[:3], b"click"])),
        out="{d}/o",
    ),
    case(
        "prepare-jsonl-bad-json",
        f"{P} {EVE} --input {{d}}/log.jsonl --out {{d}}/o",
        "log.jsonl line 4",
        "not valid JSON",
        setup=copy_to("evjsonl", "log.jsonl", lambda x: x[:-3]),
        out="{d}/o",
    ),
    case(
        "prepare-jsonl-not-an-object",
        f"{P} {EVE} --input {{d}}/log.jsonl --out {{d}}/o",
        "log.jsonl line 4",
        "JSON object",
        setup=copy_to("evjsonl", "log.jsonl", lambda x: b"[1, 2]"),
        out="{d}/o",
    ),
    case(
        "prepare-jsonl-null-user",
        f"{P} {EVE} --input {{d}}/log.jsonl --out {{d}}/o",
        "log.jsonl line 4",
        "'user'",
        "missing",
        setup=copy_to("evjsonl", "log.jsonl", lambda x: x.replace(b'"user":', b'"user":null,"u":')),
        out="{d}/o",
    ),
    # tianchi rows
    case(
        "prepare-tianchi-ragged-row",
        f"{P} --format tianchi --input {{d}}/raw --out {{d}}/o",
        "user_behavior.csv line 10",
        "expected 4 fields",
        "found 5",
        setup=raw_with("user_behavior.csv", 9, lambda x: x + b",extra"),
        out="{d}/o",
    ),
    case(
        "prepare-tianchi-unknown-behaviour",
        f"{P} --format tianchi --input {{d}}/raw --out {{d}}/o",
        "line 5",
        "'click'",
        setup=raw_with("user_behavior.csv", 4, lambda x: b",".join([*x.split(b",")[:2], b"click", x.split(b",")[3]])),
        out="{d}/o",
    ),
    case(
        "prepare-tianchi-blank-line",
        f"{P} --format tianchi --input {{d}}/raw --out {{d}}/o",
        "line 3",
        "empty",
        setup=raw_with("user_behavior.csv", 2, lambda x: b""),
        out="{d}/o",
    ),
    case(
        "prepare-tianchi-empty-file",
        f"{P} --format tianchi --input {{d}}/raw --out {{d}}/o",
        "user_behavior.csv",
        "no events",
        setup=lambda w, d: (copy_raw(w, d) / "user_behavior.csv").write_text(""),
        out="{d}/o",
    ),
    case(
        "prepare-tianchi-user-age-text",
        f"{P} --format tianchi --input {{d}}/raw --out {{d}}/o",
        "user.csv line 2",
        "'old'",
        setup=raw_with("user.csv", 1, lambda x: b",".join([*x.split(b",")[:2], b"old", x.split(b",")[3]])),
        out="{d}/o",
    ),
    case(
        "prepare-unreadable-input",
        f"{P} {EVE} --input {{d}}/log.csv --out {{d}}/o",
        "log.csv",
        "Permission denied",
        setup=lambda w, d: (copy_to("evcsv", "log.csv")(w, d), (d / "log.csv").chmod(0)),
        out="{d}/o",
        needs="user",
    ),
]

PRETRAIN = [
    case("pretrain-data-missing", "pretrain --data {d}/nope --out {d}/e", "nope", out="{d}/e", proc=True),
    case("pretrain-data-is-a-file", "pretrain --data {afile} --out {d}/e", "afile", "not a directory", out="{d}/e"),
    case(
        "pretrain-data-not-a-dataset",
        "pretrain --data {d}/empty --out {d}/e",
        "not a dataset directory",
        setup=lambda w, d: (d / "empty").mkdir(),
        out="{d}/e",
    ),
    case(
        "pretrain-data-corrupt-meta",
        "pretrain --data {d}/ds --out {d}/e",
        "meta.json",
        "not valid JSON",
        setup=copy_dir("ds", "ds", lambda p: (p / "meta.json").write_text("{oops")),
        out="{d}/e",
    ),
    case(
        "pretrain-data-other-version",
        "pretrain --data {d}/ds --out {d}/e",
        "format_version",
        setup=copy_dir("ds", "ds", lambda p: (p / "meta.json").write_text('{"format_version": 99}')),
        out="{d}/e",
    ),
    case(
        "pretrain-data-events-missing",
        "pretrain --data {d}/ds --out {d}/e",
        "cannot read dataset files",
        setup=copy_dir("ds", "ds", lambda p: (p / "events.parquet").unlink()),
        out="{d}/e",
    ),
    case("pretrain-out-under-a-file", "pretrain --data {ds} --out {afile}/e", "is a file, not a directory"),
    case("pretrain-out-is-a-file", "pretrain --data {ds} --out {afile}", "not a directory"),
    case("pretrain-out-not-empty", "pretrain --data {ds} --out {d}/e", "--force", setup=non_empty("e")),
    case("pretrain-out-read-only", "pretrain --data {ds} --out {ro}/topkrec-e", "choose another", needs="ro"),
    case("pretrain-hidden-abc", "pretrain --data {ds} --out {d}/e --hidden abc", "--hidden", "'abc'", out="{d}/e"),
    case("pretrain-npy-prefix-path", "pretrain --data {ds} --out {d}/e --npy-prefix a/b", "--npy-prefix", out="{d}/e"),
    case("pretrain-loss-bogus", "pretrain --data {ds} --out {d}/e --loss hinge", "--loss", "'hinge'", out="{d}/e"),
    case("pretrain-epochs-abc", "pretrain --data {ds} --out {d}/e --epochs abc", usage=True, out="{d}/e"),
]

TRAIN = [
    case("train-data-missing", "train --data {d}/nope --out {d}/m", "nope", out="{d}/m", proc=True),
    case(
        "train-data-not-a-dataset",
        "train --data {d}/empty --out {d}/m",
        "not a dataset directory",
        setup=lambda w, d: (d / "empty").mkdir(),
        out="{d}/m",
    ),
    case(
        "train-data-corrupt-meta",
        "train --data {d}/ds --out {d}/m",
        "meta.json",
        "not valid JSON",
        setup=copy_dir("ds", "ds", lambda p: (p / "meta.json").write_bytes(b"\xff\xfe")),
        out="{d}/m",
    ),
    case("train-out-under-a-file", "train --data {ds} --out {afile}/m", "is a file, not a directory"),
    case("train-out-is-a-file", "train --data {ds} --out {afile}", "not a directory"),
    case("train-out-not-empty", "train --data {ds} --embeddings {emb} --out {model}", "--force"),
    case("train-out-read-only", "train --data {ds} --out {ro}/topkrec-m", "choose another", needs="ro"),
    case("train-resume-without-checkpoint", "train --data {ds} --out {d}/m --resume", "--resume", "no checkpoint"),
    case("train-embeddings-missing", "train --data {ds} --embeddings {d}/nope --out {d}/m", "nope", out="{d}/m"),
    case(
        "train-embeddings-other-dataset", "train --data {ds_small} --embeddings {emb} --out {d}/m", "emb", out="{d}/m"
    ),
    case(
        "train-correction-bogus",
        "train --data {ds} --out {d}/m --correction double",
        "--correction",
        "'double'",
        out="{d}/m",
    ),
    case("train-device-bogus", "train --data {ds} --out {d}/m --device tpu", "'tpu'", out="{d}/m"),
    case("train-epochs-abc", "train --data {ds} --out {d}/m --epochs abc", usage=True, out="{d}/m"),
    case("train-no-data", "train --out {d}/m", usage=True, out="{d}/m"),
]

EVALUATE = [
    case("evaluate-model-missing", "evaluate --model {d}/nope --data {ds}", "nope", proc=True),
    case("evaluate-model-is-a-dataset", "evaluate --model {ds} --data {ds}", "config.json"),
    case(
        "evaluate-model-corrupt-config",
        "evaluate --model {d}/m --data {ds}",
        "config.json",
        "not valid JSON",
        setup=copy_dir("model", "m", lambda p: (p / "config.json").write_text("{")),
        out="{d}/m/metrics.json",
    ),
    case(
        "evaluate-model-weights-missing",
        "evaluate --model {d}/m --data {ds}",
        "policy_head.safetensors",
        setup=copy_dir("model", "m", lambda p: (p / "policy_head.safetensors").unlink()),
        out="{d}/m/metrics.json",
    ),
    case(
        "evaluate-model-weights-garbage",
        "evaluate --model {d}/m --data {ds}",
        "policy_head.safetensors",
        setup=copy_dir("model", "m", lambda p: (p / "policy_head.safetensors").write_bytes(b"\x00" * 40)),
        out="{d}/m/metrics.json",
    ),
    case("evaluate-data-missing", "evaluate --model {model} --data {d}/nope", "nope"),
    case(
        "evaluate-data-not-a-dataset",
        "evaluate --model {model} --data {d}/empty",
        "not a dataset directory",
        setup=lambda w, d: (d / "empty").mkdir(),
    ),
    case("evaluate-data-other-sizes", "evaluate --model {model} --data {ds_small}", "trained on"),
    case("evaluate-data-other-ids", "evaluate --model {model} --data {ds_ids}", "id maps differ"),
    case("evaluate-out-is-a-dir", "evaluate --model {model} --data {ds} --out {d}", "--out", "is a directory"),
    case(
        "evaluate-out-under-a-file",
        "evaluate --model {model} --data {ds} --out {afile}/m.json",
        "is a file, not a directory",
    ),
    case(
        "evaluate-out-replaces-dataset-file",
        "evaluate --model {model} --data {ds} --out {ds}/events.parquet",
        "--out",
        "--data",
    ),
    case(
        "evaluate-out-replaces-model-config",
        "evaluate --model {model} --data {ds} --out {model}/config.json",
        "--out",
        "--model",
    ),
    case(
        "evaluate-out-read-only", "evaluate --model {model} --data {ds} --out {ro}/m.json", "choose another", needs="ro"
    ),
    case("evaluate-k-0", "evaluate --model {model} --data {ds} --k 0", "--k"),
    case("evaluate-k-abc", "evaluate --model {model} --data {ds} --k abc", usage=True),
]

COMPARE = [
    case("compare-data-missing", "compare --data {d}/nope --out {d}/c", "nope", out="{d}/c", proc=True),
    case("compare-out-under-a-file", "compare --data {ds} --out {afile}/c", "is a file, not a directory"),
    case("compare-out-is-a-file", "compare --data {ds} --out {afile}", "is a file"),
    case("compare-out-read-only", "compare --data {ds} --out {ro}/topkrec-c", "choose another", needs="ro"),
    case("compare-corrections-empty", "compare --data {ds} --out {d}/c --corrections ,", "--corrections", out="{d}/c"),
    case(
        "compare-corrections-bogus",
        "compare --data {ds} --out {d}/c --corrections double",
        "'double'",
        out="{d}/c/double",
    ),
    case("compare-embeddings-missing", "compare --data {ds} --embeddings {d}/nope --out {d}/c", "nope", out="{d}/c"),
    case("compare-epochs-abc", "compare --data {ds} --out {d}/c --epochs abc", usage=True, out="{d}/c"),
]

DEMO = [
    case("demo-out-is-a-file", "demo --out {afile}", "not a directory", proc=True),
    case("demo-out-under-a-file", "demo --out {afile}/x", "is a file, not a directory"),
    case("demo-out-not-empty", "demo --out {d}/o", "--force", setup=non_empty("o")),
    case("demo-out-read-only", "demo --out {ro}/topkrec-demo", "choose another", needs="ro"),
    case("demo-users-abc", "demo --out {d}/o --users abc", usage=True, out="{d}/o"),
]

R = "recommend --model {model}"
RECOMMEND = [
    case("recommend-model-missing", "recommend --model {d}/nope --user 1", "nope", proc=True),
    case("recommend-model-is-a-dataset", "recommend --model {ds} --user 1", "config.json"),
    case("recommend-nothing-to-recommend-for", R, "--user"),
    case(
        "recommend-users-and-user",
        f"{R} --users {{users}} --user 1 --out {{d}}/r.csv",
        "--users",
        "--user",
        out="{d}/r.csv",
    ),
    case("recommend-users-without-out", f"{R} --users {{users}}", "--out"),
    case("recommend-out-without-users", f"{R} --user {{user}} --out {{d}}/r.csv", "--users", out="{d}/r.csv"),
    case("recommend-users-file-missing", f"{R} --users {{d}}/nope.csv --out {{d}}/r.csv", "nope.csv", out="{d}/r.csv"),
    case(
        "recommend-users-file-0xff",
        f"{R} --users {{d}}/u.csv --out {{d}}/r.csv",
        "u.csv",
        setup=write("u.csv", b"user\n1\n\xff\n"),
        out="{d}/r.csv",
    ),
    case("recommend-out-is-a-dir", f"{R} --users {{users}} --out {{d}}", "is a directory"),
    case("recommend-out-bad-suffix", f"{R} --users {{users}} --out {{d}}/r.json", ".csv", out="{d}/r.json"),
    case("recommend-out-is-the-users-file", f"{R} --users {{users}} --out {{users}}", "--users"),
    case(
        "recommend-out-replaces-dataset-file",
        f"{R} --users {{users}} --dataset {{ds}} --out {{ds}}/events.parquet",
        "--dataset",
    ),
    case("recommend-out-under-a-file", f"{R} --users {{users}} --out {{afile}}/r.csv", "is a file, not a directory"),
    case("recommend-out-read-only", f"{R} --users {{users}} --out {{ro}}/r.csv", "choose another", needs="ro"),
    case("recommend-dataset-other-ids", f"{R} --user {{user}} --dataset {{ds_ids}}", "ds_ids", "id maps differ"),
    case("recommend-dataset-other-sizes", f"{R} --user {{user}} --dataset {{ds_small}}", "ds_small"),
    case("recommend-dataset-missing", f"{R} --user {{user}} --dataset {{d}}/nope", "nope"),
    case("recommend-temperature-0", f"{R} --user {{user}} --temperature 0", "--temperature"),
    case("recommend-temperature-nan", f"{R} --user {{user}} --temperature nan", "--temperature"),
    case("recommend-k-0", f"{R} --user {{user}} --k 0", usage=True),
    case("recommend-m-0", f"{R} --user {{user}} --m 0 --explore", usage=True),
]

S = "serve --model {model} --device cpu"
SERVE = [
    case("serve-port-in-use", f"{S} --port {{port}}", "--port", "in use", proc=True),
    case("serve-model-missing", "serve --model {d}/nope", "nope"),
    case("serve-model-is-a-dataset", "serve --model {ds}", "config.json"),
    case("serve-host-unresolvable", f"{S} --host no.such.host.invalid --port 0", "--host", "'no.such.host.invalid'"),
    case("serve-log-is-a-dir", f"{S} --port 0 --log-impressions {{d}}", "--log-impressions", "is a directory"),
    case("serve-log-under-a-file", f"{S} --port 0 --log-impressions {{afile}}/i.jsonl", "is a file, not a directory"),
    case("serve-log-replaces-model-file", f"{S} --port 0 --log-impressions {{model}}/config.json", "--model"),
    case("serve-log-read-only", f"{S} --port 0 --log-impressions {{ro}}/i.jsonl", "choose another", needs="ro"),
    case("serve-dataset-other-ids", f"{S} --port 0 --dataset {{ds_ids}}", "id maps differ"),
    case("serve-port-99999", f"{S} --port 99999", usage=True),
    case("serve-max-batch-0", f"{S} --max-batch 0", usage=True),
    case("serve-read-timeout-0", f"{S} --read-timeout 0", usage=True),
    case("serve-log-max-bytes-negative", f"{S} --log-max-bytes -1", usage=True),
]

OPE_ARGS = "ope --logs {ope} --action-col a --reward-col r --propensity-col p"
OPE = [
    case(
        "ope-logs-missing",
        "ope --logs {d}/nope.csv --action-col a --reward-col r --propensity-col p --target uniform",
        "nope.csv",
        proc=True,
    ),
    case("ope-no-target", OPE_ARGS, "target"),
    case("ope-two-targets", f"{OPE_ARGS} --target uniform --target-prob-col p", "--target", "--target-prob-col"),
    case("ope-target-bogus", f"{OPE_ARGS} --target greedy", "'greedy'"),
    case("ope-n-actions-without-uniform", f"{OPE_ARGS} --target-prob-col p --n-actions 5", "--n-actions"),
    case("ope-cap-0", f"{OPE_ARGS} --target uniform --cap 0", "--cap"),
    case("ope-n-boot-0", f"{OPE_ARGS} --target uniform --n-boot 0", "--n-boot"),
    case(
        "ope-missing-column",
        "ope --logs {ope} --action-col item --reward-col r --propensity-col p --target uniform",
        "item",
    ),
    case("ope-half-doubly-robust", f"{OPE_ARGS} --target uniform --reward-hat-col r", "--value-hat-col"),
    case(
        "ope-0xff",
        "ope --logs {d}/l.csv --action-col a --reward-col r --propensity-col p --target uniform",
        "l.csv",
        setup=write("l.csv", b"a,r,p\n1,1,0.5\n\xff,0,0.5\n"),
    ),
    case("ope-model-without-user-col", f"{OPE_ARGS} --model {{model}}", "--user-col"),
    case("ope-out-is-a-dir", f"{OPE_ARGS} --target uniform --out {{d}}", "--out", "is a directory"),
    case("ope-out-is-the-logs", f"{OPE_ARGS} --target uniform --out {{ope}}", "--out", "--logs"),
    case("ope-out-under-a-file", f"{OPE_ARGS} --target uniform --out {{afile}}/o.json", "is a file, not a directory"),
    case("ope-out-read-only", f"{OPE_ARGS} --target uniform --out {{ro}}/o.json", "choose another", needs="ro"),
    case("ope-n-boot-abc", f"{OPE_ARGS} --target uniform --n-boot abc", usage=True),
]

SIMULATE = [
    case("simulate-unknown-scenario", "simulate paper-bandit --out {d}/s", "'paper-bandit'", out="{d}/s", proc=True),
    case("simulate-out-is-a-file", "simulate paper-topk --out {afile}", "is a file"),
    case("simulate-out-under-a-file", "simulate paper-topk --out {afile}/s", "is a file, not a directory"),
    case("simulate-out-read-only", "simulate paper-topk --out {ro}/topkrec-s", "choose another", needs="ro"),
    case("simulate-update-bogus", "simulate paper-topk --update exact --out {d}/s", "--update", out="{d}/s"),
    case("simulate-steps-0", "simulate paper-offpolicy --steps 0 --out {d}/s", "--steps", out="{d}/s"),
    case("simulate-lr-negative", "simulate paper-offpolicy --lr -1 --out {d}/s", "--lr", out="{d}/s"),
    case("simulate-seeds-0", "simulate sequential --seeds 0 --out {d}/s", "--seeds", out="{d}/s"),
    case("simulate-steps-abc", "simulate paper-topk --steps abc", usage=True),
    case("simulate-no-scenario", "simulate", usage=True),
]

# --force with an output that is, contains or lies inside an input: every command that replaces a directory.
OVERLAP_PLAN: list[tuple[str, str, str, Setup, list[tuple[str, str]]]] = [
    (
        "prepare",
        f"{P} --format tianchi --input {{d}}/in/raw",
        "--input",
        lambda w, d: copy_raw(w, d / "in") and None,
        [("is", "{d}/in/raw"), ("contains", "{d}/in"), ("lies inside", "{d}/in/raw/o")],
    ),
    (
        "prepare-events",
        f"{P} {EVE} --input {{d}}/in/log.csv",
        "--input",
        copy_to("evcsv", "in/log.csv"),
        [("is", "{d}/in/log.csv"), ("contains", "{d}/in")],
    ),
    (
        "prepare-taobao",
        f"{P} --format taobao --input {{d}}/in",
        "--input",
        copy_to("taobao", "in/UserBehavior.csv"),
        [("is", "{d}/in"), ("contains", "{d}"), ("lies inside", "{d}/in/o")],
    ),
    (
        "pretrain",
        "pretrain --data {d}/in/ds",
        "--data",
        copy_dir("ds", "in/ds", lambda p: None),
        [("is", "{d}/in/ds"), ("contains", "{d}/in"), ("lies inside", "{d}/in/ds/e")],
    ),
    (
        "train",
        "train --data {d}/in/ds",
        "--data",
        copy_dir("ds", "in/ds", lambda p: None),
        [("is", "{d}/in/ds"), ("contains", "{d}/in"), ("lies inside", "{d}/in/ds/m")],
    ),
    (
        "train",
        "train --data {ds} --embeddings {d}/in/emb",
        "--embeddings",
        copy_dir("emb", "in/emb", lambda p: None),
        [("is", "{d}/in/emb"), ("contains", "{d}/in"), ("lies inside", "{d}/in/emb/m")],
    ),
    (
        "compare",
        "compare --data {d}/in/ds",
        "--data",
        copy_dir("ds", "in/ds", lambda p: None),
        [("is", "{d}/in/ds"), ("contains", "{d}/in"), ("lies inside", "{d}/in/ds/c")],
    ),
    (
        "compare",
        "compare --data {ds} --embeddings {d}/in/emb",
        "--embeddings",
        copy_dir("emb", "in/emb", lambda p: None),
        [("is", "{d}/in/emb"), ("contains", "{d}/in"), ("lies inside", "{d}/in/emb/c")],
    ),
]
OVERLAPS = [
    case(
        f"{name}-force-out-{how.replace(' ', '-')}-{flag[2:]}",
        f"{args} --out {out} --force",
        f"--out {out}",
        f" {how} {flag} ",
        setup=setup,
    )
    for name, args, flag, setup, variants in OVERLAP_PLAN
    for how, out in variants
]


CASES = [
    *SYNTH,
    *PREPARE,
    *PRETRAIN,
    *TRAIN,
    *EVALUATE,
    *COMPARE,
    *DEMO,
    *RECOMMEND,
    *SERVE,
    *OPE,
    *SIMULATE,
    *OVERLAPS,
]
COMMANDS = (
    "synth",
    "prepare",
    "pretrain",
    "train",
    "evaluate",
    "compare",
    "recommend",
    "serve",
    "ope",
    "simulate",
    "demo",
)


def test_the_table_covers_every_command() -> None:
    assert len(CASES) >= 150 and len({c.id for c in CASES}) == len(CASES)
    for command in COMMANDS:
        mine = [c for c in CASES if c.args.split()[0] == command]
        assert mine and any(c.proc for c in mine), command


# ------------------------------------------------------------------------------------------ checks
def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` (mode, size, sha1) and every directory: anything lost or changed shows."""
    found: dict[str, str] = {}
    for root in roots:
        for p in [root, *root.rglob("*")] if root.exists() else []:
            if p.is_symlink() or not p.exists():
                continue
            st = p.stat()
            found[str(p)] = (
                "dir"
                if p.is_dir()
                else f"{st.st_mode:o}:{st.st_size}:"
                + (hashlib.sha1(p.read_bytes()).hexdigest() if os.access(p, os.R_OK) and st.st_mode & 0o444 else "?")
            )
    return found


def check(c: Case, w: World, d: Path) -> None:
    if c.needs == "ro" and RO is None:
        pytest.skip("no read-only directory here")
    if c.needs == "user" and os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    if c.setup is not None:
        c.setup(w, d)
    names = {**w.paths, "d": str(d)}
    argv = ["--no-progress", *[part.format(**names) for part in c.args.split()]]
    out = Path(c.out.format(**names)) if c.out else None
    out_existed = out is not None and out.exists()
    before = snapshot(w.root, d)
    code, stdout, stderr = (run_subprocess if c.proc else run_inprocess)(argv, d)
    shown = f"{c.id}: status {code}\nstdout: {stdout[-2000:]}\nstderr: {stderr[-3000:]}"
    assert code == 2, shown
    assert "Traceback" not in stderr, shown
    if c.usage:
        assert "Usage:" in stderr and "Error:" in stderr, shown
    else:
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, shown
        others = [
            line
            for line in stderr.splitlines()
            if line.strip() and not line.startswith(("error:", "warning:")) and " WARNING " not in line
        ]
        assert not others, shown
        for needle in c.needles:
            assert needle.format(**names) in errors[0], (needle, shown)
    # nothing lost: every input (the shared world and this case's own files) is as it was
    after = snapshot(w.root, d)
    assert after == before, f"{c.id}: files changed: {sorted(set(before.items()) ^ set(after.items()))[:6]}"
    if out is not None and not out_existed:
        assert not out.exists(), f"{c.id}: {out} was created"
    for parent in {d, w.root}:
        leftovers = [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".new-" in p.name or ".old-" in p.name]
        assert not leftovers, leftovers


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input(c: Case, world: World, tmp_path: Path) -> None:
    check(c, world, tmp_path)


def test_force_refuses_every_overlap_of_input_and_output(world: World, tmp_path: Path) -> None:
    """For each command that replaces a directory and each of its inputs, --out that is, contains or lies
    inside the input is refused even with --force, and the input survives (the cases above, run together)."""
    covered: dict[tuple[str, str], set[str]] = {}
    for i, (name, _, flag, _, variants) in enumerate(OVERLAP_PLAN):
        for how, _ in variants:
            c = next(c for c in OVERLAPS if c.id == f"{name}-force-out-{how.replace(' ', '-')}-{flag[2:]}")
            d = tmp_path / f"{i}-{how.replace(' ', '-')}"
            d.mkdir()
            check(c, world, d)
            covered.setdefault((name.split("-")[0], flag), set()).add(how)
    assert set(covered) == {
        ("prepare", "--input"),
        ("pretrain", "--data"),
        ("train", "--data"),
        ("train", "--embeddings"),
        ("compare", "--data"),
        ("compare", "--embeddings"),
    }
    assert all(kinds == {"is", "contains", "lies inside"} for kinds in covered.values()), covered


def test_unreadable_input_is_one_line_even_for_root(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root reads any file whatever its mode, so a permission error is injected where topkrec opens it."""
    target = tmp_path / "log.csv"
    shutil.copy(world["evcsv"], target)
    real_open = Path.open

    def guarded_open(self: Path, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if self == target:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", guarded_open)
    argv = [
        "prepare",
        "--format",
        "events",
        "--event-col",
        "event",
        "--input",
        str(target),
        "--out",
        str(tmp_path / "o"),
    ]
    code, _, err = run_inprocess(argv, tmp_path)
    assert code == 2 and "Traceback" not in err, err
    assert err.strip() == f"error: cannot read {target}: Permission denied; check its permissions"
    assert not (tmp_path / "o").exists()


def test_write_failure_during_a_command_is_one_line(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fills up (or a directory made read-only) while the output is being written."""
    import errno

    import topkrec.io as tio

    real = tio.tempfile.mkstemp

    def full_disk(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if "summary.json" in str(kwargs.get("prefix", "")):
            raise OSError(errno.ENOSPC, "No space left on device", str(kwargs.get("dir")))
        return real(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(tio.tempfile, "mkstemp", full_disk)
    out = tmp_path / "o"
    argv = ["prepare", "--format", "tianchi", "--no-sample", "--input", world.paths["raw"], "--out", str(out)]
    code, _, err = run_inprocess(argv, tmp_path)
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith("error: cannot write") and "No space left on device" in err and "disk is full" in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []
