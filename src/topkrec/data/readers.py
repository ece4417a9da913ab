"""Readers of raw logs into one columnar frame, with clear errors naming the file, line and value.

Every reader returns a :class:`RawLog`: an events frame with the columns ``user``, ``item``,
``behavior`` (str), ``ts`` (int64 unix seconds), ``_line`` (the 1-based line — or row, for Parquet —
of the input, for error messages) and optionally ``reward`` (float64), ``propensity`` (float64), ``step``
(int64) and ``category`` (Taobao); plus optional user and item feature frames keyed by the raw id.

Reading is columnar (Polars). A fast path reads the whole file as text columns and casts them; when
anything is off (a ragged row, an empty field, a value that does not parse) a slower diagnostic path
reads the file line by line — still columnar — to name the first bad line exactly, or, with
``skip_bad_rows``, to drop every bad line and count them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from topkrec.errors import DataError

if TYPE_CHECKING:
    import polars as pl

logger = logging.getLogger(__name__)

Kind = Literal["int", "float", "str"] | tuple[str, ...]  # a tuple: one of these labels (a polars Enum)
SKIP_HINT = "fix or delete the line, or pass --skip-bad-rows to drop bad rows"


@dataclass
class RawLog:
    """Raw events plus optional feature tables, before any preparation step."""

    events: pl.DataFrame
    user_features: pl.DataFrame | None = None  # column "user" + raw feature columns
    item_features: pl.DataFrame | None = None  # column "item" + raw feature columns
    files: list[Path] = field(default_factory=list)  # every input file read (hashed into meta.json)
    bad_rows: int = 0  # rows dropped by --skip-bad-rows
    first_bad: str | None = None  # description of the first dropped row


def _require_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{path} not found ({what})")
    if not path.is_file():
        raise DataError(f"{path} is not a file ({what})")
    return path


def _dtype(kind: Kind) -> pl.DataType:
    import polars as pl

    if isinstance(kind, tuple):
        return pl.Enum(list(kind))
    return {"int": pl.Int64(), "float": pl.Float64(), "str": pl.String()}[kind]


def _cast_expr(name: str, kind: Kind) -> pl.Expr:
    import polars as pl

    col = pl.col(name)
    if isinstance(kind, tuple):
        return pl.when(col.is_in(list(kind))).then(col).otherwise(None).cast(_dtype(kind))
    return col.cast(_dtype(kind), strict=False)


def _kind_word(kind: Kind) -> str:
    if isinstance(kind, tuple):
        return "one of " + ", ".join(kind)
    return {"int": "an integer", "float": "a number", "str": "text"}[kind]


@dataclass
class _Table:
    frame: pl.DataFrame  # typed columns + "_line"
    bad_rows: int
    first_bad: str | None


def read_delimited(
    path: Path,
    columns: list[tuple[str, Kind]],
    *,
    header: bool,
    skip_bad_rows: bool,
    separator: str = ",",
    hints: dict[str, str] | None = None,
    quote_char: str | None = None,
) -> _Table:
    """Read a delimited text file whose columns are exactly ``columns`` (in order), typed.

    With ``header`` the first line is skipped (callers check the header names themselves). Every
    row must have exactly ``len(columns)`` fields and every value must parse as its kind; otherwise
    a DataError names the file, line and value, unless ``skip_bad_rows`` drops such rows.
    """
    import polars as pl

    names = [n for n, _ in columns]
    offset = 2 if header else 1  # line number of row 0
    try:
        # Fast path: the CSV parser types every column itself (ints, floats, enums of known labels);
        # anything it cannot parse raises, and empty fields come back null.
        frame = pl.read_csv(
            path,
            has_header=False,
            skip_rows=1 if header else 0,
            schema={n: _dtype(k) for n, k in columns},
            separator=separator,
            quote_char=quote_char,
        )
        if sum(frame[n].null_count() for n in names) == 0:
            return _Table(frame.with_row_index("_line", offset=offset), 0, None)
    except pl.exceptions.NoDataError:
        return _Table(pl.DataFrame(schema={"_line": pl.UInt32, **{n: _dtype(k) for n, k in columns}}), 0, None)
    except (pl.exceptions.ComputeError, pl.exceptions.SchemaError, pl.exceptions.ShapeError):
        pass  # a value that does not parse, or a ragged row: the diagnostic path names it
    # Diagnostic path: one string per line, count fields, parse what has the right shape. (It splits on
    # every separator, so in a quoted CSV a quoted field holding the separator counts as extra fields.)
    try:
        lines = pl.read_csv(
            path,
            has_header=False,
            skip_rows=1 if header else 0,
            schema={"line": pl.String},
            separator="\x1f",
            quote_char=None,
        )
    except pl.exceptions.NoDataError:
        lines = pl.DataFrame(schema={"line": pl.String})
    lines = lines.with_row_index("_line", offset=offset)
    n_fields = pl.col("line").fill_null("").str.count_matches(separator, literal=True) + 1
    shaped = lines.with_columns(n_fields.alias("_nf"), pl.col("line").is_null().alias("_blank"))
    parts = (
        pl.col("line")
        .fill_null("")
        .str.split_exact(separator, len(names) - 1)
        .struct.rename_fields(names)
        .alias("_parts")
    )
    parsed = shaped.with_columns(parts).unnest("_parts")
    typed = parsed.with_columns([_cast_expr(n, k).alias(f"_typed_{n}") for n, k in columns])
    problems: list[pl.Expr] = [
        pl.when(pl.col("_blank")).then(pl.lit("the line is empty")),
        pl.when(pl.col("_nf") != len(names)).then(
            pl.format(
                "expected {} fields ({}), found {}: '{}'",
                pl.lit(len(names)),
                pl.lit(",".join(names)),
                pl.col("_nf"),
                pl.col("line").str.slice(0, 80),
            )
        ),
    ]
    for n, k in columns:
        problems.append(
            pl.when(pl.col(n).is_null() | (pl.col(n).str.strip_chars() == "")).then(pl.lit(f"{n} is empty")),
        )
        problems.append(
            pl.when(pl.col(f"_typed_{n}").is_null()).then(
                pl.format("{} '{}' is not {}", pl.lit(n), pl.col(n).str.slice(0, 40), pl.lit(_kind_word(k)))
            )
        )
    typed = typed.with_columns(pl.coalesce(problems).alias("_problem"))
    bad = typed.filter(pl.col("_problem").is_not_null())
    good = typed.filter(pl.col("_problem").is_null()).select("_line", *[pl.col(f"_typed_{n}").alias(n) for n in names])
    if bad.height == 0:
        return _Table(good, 0, None)
    first = f"{path} line {bad['_line'][0]}: {bad['_problem'][0]}"
    if not skip_bad_rows:
        more = f" ({bad.height} bad lines in all)" if bad.height > 1 else ""
        hint = SKIP_HINT
        bad_col = next((n for n, _ in columns if str(bad["_problem"][0]).startswith(f"{n} '")), None)
        if hints and bad_col in hints:
            value = str(bad[bad_col][0]).strip()
            hint = f"{hints[bad_col].replace('{value}', value)}, or pass --skip-bad-rows to drop bad rows"
        if header is False and bad["_line"][0] == 1 and bad.height == 1:
            hint = "the file must have no header line; " + hint
        raise DataError(f"{first}{more}; {hint}")
    return _Table(good, bad.height, first)


def _resolve(input_path: Path, names: list[str], what: str) -> Path:
    """``input_path`` itself when it is a file, else the first of ``names`` inside it."""
    if input_path.is_file():
        return input_path
    if not input_path.exists():
        raise DataError(f"--input {input_path} not found")
    for n in names:
        if (input_path / n).is_file():
            return input_path / n
    csvs = sorted(input_path.glob("*.csv"))
    if len(csvs) == 1:
        return csvs[0]
    raise DataError(f"{input_path} holds no {' or '.join(names)} ({what}); pass the file itself as --input")


Reward = tuple[tuple[str, float], ...]


def _behavior_hint(reward: Reward) -> dict[str, str]:
    known = ",".join(f"{b}={r:g}" for b, r in reward)
    return {"behavior": f"give it a reward with --reward {known},{{value}}=1 or fix the file"}


def read_tianchi(input_dir: Path, skip_bad_rows: bool, reward: Reward) -> RawLog:
    """Tianchi ECommAI: user.csv, item.csv, user_behavior.csv, headerless (DESIGN §1)."""
    behaviors = tuple(b for b, _ in reward)
    if not input_dir.is_dir():
        raise DataError(f"--input {input_dir} must be a directory holding user.csv, item.csv and user_behavior.csv")
    need = "the tianchi format needs user.csv, item.csv and user_behavior.csv in --input"
    beh_path = _require_file(input_dir / "user_behavior.csv", need)
    user_path = _require_file(input_dir / "user.csv", need)
    item_path = _require_file(input_dir / "item.csv", need)
    ev = read_delimited(
        beh_path,
        [("user", "int"), ("item", "int"), ("behavior", behaviors), ("ts", "int")],
        header=False,
        skip_bad_rows=skip_bad_rows,
        hints=_behavior_hint(reward),
    )
    users = read_delimited(
        user_path,
        [("user", "int"), ("sex", "int"), ("age", "int"), ("pur_power", "int")],
        header=False,
        skip_bad_rows=skip_bad_rows,
    )
    items = read_delimited(
        item_path,
        [("item", "int"), ("category", "int"), ("shop", "int"), ("brand", "int")],
        header=False,
        skip_bad_rows=skip_bad_rows,
    )
    tables = (ev, users, items)
    bad = sum(t.bad_rows for t in tables)
    first = next((t.first_bad for t in tables if t.first_bad), None)
    return RawLog(
        events=ev.frame,
        user_features=users.frame.drop("_line").unique("user", keep="first", maintain_order=True),
        item_features=items.frame.drop("_line").unique("item", keep="first", maintain_order=True),
        files=[beh_path, user_path, item_path],
        bad_rows=bad,
        first_bad=first,
    )


def read_taobao(input_path: Path, skip_bad_rows: bool, reward: Reward) -> RawLog:
    """Taobao UserBehavior.csv: user,item,category,behavior,ts, headerless."""
    behaviors = tuple(b for b, _ in reward)
    path = _resolve(input_path, ["UserBehavior.csv"], "the taobao format reads UserBehavior.csv")
    ev = read_delimited(
        path,
        [("user", "int"), ("item", "int"), ("category", "int"), ("behavior", behaviors), ("ts", "int")],
        header=False,
        skip_bad_rows=skip_bad_rows,
        hints=_behavior_hint(reward),
    )
    return RawLog(events=ev.frame, files=[path], bad_rows=ev.bad_rows, first_bad=ev.first_bad)


def _header(path: Path, separator: str = ",") -> list[str]:
    with path.open("r", encoding="utf-8", errors="replace") as f:
        first = f.readline().rstrip("\r\n")
    if not first:
        raise DataError(f"{path} is empty (expected a header line)")
    return [c.strip().strip('"') for c in first.split(separator)]


def _check_columns(path: Path, have: list[str], want: dict[str, str]) -> None:
    """``want`` maps a column name to the flag that sets it."""
    for name, flag in want.items():
        if name not in have:
            raise DataError(
                f"{path} has no column {name!r} (columns: {', '.join(have)}); "
                f"{'rename it or ' if flag else ''}{('pass ' + flag + ' NAME') if flag else 'fix the file'}"
            )


def read_movielens(input_path: Path, skip_bad_rows: bool) -> RawLog:
    """MovieLens ratings.csv (userId,movieId,rating,timestamp, with header) [+ movies.csv for genres]."""
    import polars as pl

    path = _resolve(input_path, ["ratings.csv"], "the movielens format reads ratings.csv")
    want = ["userId", "movieId", "rating", "timestamp"]
    have = _header(path)
    _check_columns(path, have, {c: "" for c in want})
    if have != want:
        raise DataError(f"{path}: expected the columns {','.join(want)} in that order, found {','.join(have)}")
    ev = read_delimited(
        path,
        [("user", "int"), ("item", "int"), ("reward", "float"), ("ts", "int")],
        header=True,
        skip_bad_rows=skip_bad_rows,
    )
    events = ev.frame.with_columns(pl.lit("rating").alias("behavior"))
    files = [path]
    item_features = None
    movies = path.parent / "movies.csv"
    if movies.is_file():
        try:
            m = pl.read_csv(movies, schema_overrides={"movieId": pl.Int64, "title": pl.String, "genres": pl.String})
        except Exception as e:  # polars raises several kinds for malformed CSV
            raise DataError(f"{movies}: cannot read it ({str(e).splitlines()[0]}); fix or remove the file") from e
        _check_columns(movies, m.columns, {"movieId": "", "genres": ""})
        item_features = m.select(
            pl.col("movieId").alias("item"),
            pl.col("genres").str.split("|").list.first().alias("genre"),
        ).unique("item", keep="first", maintain_order=True)
        files.append(movies)
    return RawLog(events=events, item_features=item_features, files=files, bad_rows=ev.bad_rows, first_bad=ev.first_bad)


@dataclass(frozen=True)
class EventColumns:
    """Column mapping of the generic ``events`` format."""

    user: str = "user"
    item: str = "item"
    time: str = "ts"
    event: str | None = None
    reward: str | None = None
    propensity: str | None = None
    step: str | None = None
    """Integer slate-step column: rows of one slate share a value, non-decreasing within a user."""


def read_events(input_path: Path, cols: EventColumns, skip_bad_rows: bool, reward: Reward) -> RawLog:
    """Any CSV (with header) or Parquet file, with a column mapping."""
    behaviors = tuple(b for b, _ in reward)
    import polars as pl

    if not input_path.is_file():
        raise DataError(f"--input {input_path} not found (the events format reads one CSV or Parquet file)")
    if cols.event is None and cols.reward is None:
        raise DataError("the events format needs --event-col NAME (mapped by --reward) or --reward-col NAME")
    want: dict[str, str] = {cols.user: "--user-col", cols.item: "--item-col", cols.time: "--time-col"}
    if cols.event:
        want[cols.event] = "--event-col"
    if cols.reward:
        want[cols.reward] = "--reward-col"
    if cols.propensity:
        want[cols.propensity] = "--propensity-col"
    if cols.step:
        want[cols.step] = "--step-col"
    rename = {cols.user: "user", cols.item: "item", cols.time: "ts"}
    if cols.event:
        rename[cols.event] = "behavior"
    if cols.reward:
        rename[cols.reward] = "reward"
    if cols.propensity:
        rename[cols.propensity] = "propensity"
    if cols.step:
        rename[cols.step] = "step"
    # Without a reward column the behaviour must be one the --reward map prices.
    kinds: dict[str, Kind] = {"user": "str", "item": "str", "ts": "int", "reward": "float", "propensity": "float"}
    kinds["step"] = "int"
    kinds["behavior"] = "str" if cols.reward else behaviors
    hints = _behavior_hint(reward) if not cols.reward else None

    if input_path.suffix.lower() in (".parquet", ".pq"):
        try:
            frame = pl.read_parquet(input_path)
        except Exception as e:  # polars raises several kinds for corrupt files
            raise DataError(f"{input_path}: cannot read Parquet ({str(e).splitlines()[0]})") from e
        _check_columns(input_path, frame.columns, want)
        frame = frame.select([pl.col(src).alias(dst) for src, dst in rename.items()]).with_row_index("_line", offset=1)
        return _typed_events(frame, input_path, "row", rename, kinds, hints, skip_bad_rows)

    have = _header(input_path)
    _check_columns(input_path, have, want)
    try:
        frame = pl.read_csv(input_path, infer_schema=False, columns=list(rename), quote_char='"')
    except (pl.exceptions.ComputeError, pl.exceptions.SchemaError, pl.exceptions.ShapeError):
        # Ragged rows: the line-level reader names the first one (or drops them with --skip-bad-rows).
        spec: list[tuple[str, Kind]] = [(rename.get(c, f"_unused_{i}"), "str") for i, c in enumerate(have)]
        table = read_delimited(input_path, spec, header=True, skip_bad_rows=skip_bad_rows, quote_char='"')
        frame = table.frame.select("_line", *[n for n, _ in spec if not n.startswith("_unused_")])
        log = _typed_events(frame, input_path, "line", rename, kinds, hints, skip_bad_rows)
        log.bad_rows += table.bad_rows
        log.first_bad = table.first_bad or log.first_bad
        return log
    frame = frame.rename(rename).with_row_index("_line", offset=2)
    return _typed_events(frame, input_path, "line", rename, kinds, hints, skip_bad_rows)


def _typed_events(
    frame: pl.DataFrame,
    path: Path,
    where: str,
    rename: dict[str, str],
    kinds: dict[str, Kind],
    hints: dict[str, str] | None,
    skip_bad_rows: bool,
) -> RawLog:
    """Cast the mapped columns of an ``events`` log to their kinds; a missing or unparsable value is
    an error naming the row (or dropped with ``skip_bad_rows``)."""
    import polars as pl

    if frame.schema["ts"].is_temporal():
        frame = frame.with_columns(pl.col("ts").dt.epoch("s"))
    elif frame.schema["ts"] == pl.String and frame.height:
        as_int = frame["ts"].cast(pl.Int64, strict=False)
        if as_int.null_count() == frame.height:  # not numbers at all: try date-times
            as_time = frame["ts"].str.to_datetime(strict=False)
            if as_time.null_count() < frame.height:
                frame = frame.with_columns(as_time.dt.epoch("s").alias("ts"))
    casts = []
    for name in frame.columns:
        if name == "_line":
            continue
        kind = kinds[name]
        if name in ("user", "item"):  # integer ids stay integers (sorted numerically), others text
            as_int = frame[name].cast(pl.Int64, strict=False)
            ints = frame.schema[name].is_integer() or as_int.null_count() == frame[name].null_count()
            casts.append(pl.col(name).cast(pl.Int64() if ints else pl.String(), strict=False))
        elif name == "behavior":
            frame = frame.with_columns(pl.col(name).cast(pl.String))
            casts.append(_cast_expr(name, kind).cast(pl.String) if isinstance(kind, tuple) else pl.col(name))
        else:
            casts.append(pl.col(name).cast(_dtype(kind), strict=False))
    typed = frame.with_columns(casts)
    bad_mask = pl.any_horizontal([pl.col(c).is_null() for c in typed.columns])
    bad = typed.with_row_index("_i").filter(bad_mask)
    first = None
    if bad.height:
        i = int(bad["_i"][0])
        col = next(c for c in typed.columns if typed[c][i] is None)
        src = next(s for s, d in rename.items() if d == col)
        first = (
            f"{path} {where} {frame['_line'][i]}: column {src!r} value {frame[col][i]!r} is missing or not "
            f"{_kind_word(kinds[col])}"
        )
        if not skip_bad_rows:
            hint = "fix the file"
            if hints and col == "behavior":
                hint = hints["behavior"].replace("{value}", str(frame[col][i]))
            raise DataError(f"{first}; {hint}, or pass --skip-bad-rows to drop bad rows")
    return RawLog(events=typed.filter(~bad_mask), files=[path], bad_rows=bad.height, first_bad=first)
