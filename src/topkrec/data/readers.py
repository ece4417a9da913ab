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
    import gzip
    import io

    import polars as pl

logger = logging.getLogger(__name__)

Kind = Literal["int", "float", "str"] | tuple[str, ...]  # a tuple: one of these labels (a polars Enum)
SKIP_HINT = "fix or delete the line, or pass --skip-bad-rows to drop bad rows"
UTF8_REPLACEMENT = "\ufffd"  # what a byte that is not UTF-8 becomes in a lossy read
NOT_UTF8 = "is not valid UTF-8 text"
UTF8_HINT = (
    "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8) or fix the line, or pass --skip-bad-rows to drop bad rows"
)


@dataclass
class RawLog:
    """Raw events plus optional feature tables, before any preparation step."""

    events: pl.DataFrame
    user_features: pl.DataFrame | None = None  # column "user" + raw feature columns
    item_features: pl.DataFrame | None = None  # column "item" + raw feature columns
    files: list[Path] = field(default_factory=list)  # every input file read (hashed into meta.json)
    bad_rows: int = 0  # rows dropped by --skip-bad-rows
    first_bad: str | None = None  # description of the first dropped row
    warnings: list[str] = field(default_factory=list)  # conversions the user should know about
    ts_is_datetime: bool = False  # ts came from date-times (already seconds: --time-unit does not apply)


def _require_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{path} not found ({what})")
    if not path.is_file():
        raise DataError(f"{path} is not a file ({what})")
    _require_readable(path)
    return path


def _require_readable(path: Path) -> None:
    """A clear error for a file this process may not read (before a reader's own, less clear one)."""
    try:
        with path.open("rb"):
            pass
    except OSError as e:
        from topkrec.io import os_error_message

        raise DataError(os_error_message(e, path, "read")) from e


def _read_error(path: Path, e: Exception) -> DataError:
    """A DataError for an exception a reader raised: an OSError from the system says why, anything else (also
    polars' errno-less OSError for a truncated or corrupt compressed stream) its first line."""
    if isinstance(e, OSError) and e.errno is not None:
        from topkrec.io import os_error_message

        return DataError(os_error_message(e, path, "read"))
    return DataError(f"{path}: cannot read it ({(str(e).splitlines() or [type(e).__name__])[0]}); fix the file")


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
    source: bytes | None = None,
) -> _Table:
    """Read a delimited text file whose columns are exactly ``columns`` (in order), typed.

    With ``header`` the first line is skipped (callers check the header names themselves). Every
    row must have exactly ``len(columns)`` fields and every value must parse as its kind; otherwise
    a DataError names the file, line and value, unless ``skip_bad_rows`` drops such rows. ``source``, when
    given, is the file's content to parse instead of reading ``path`` (which still names it in errors):
    :func:`read_movielens` passes the 1M and 10M releases' ``::``-separated files with the separator translated.
    """
    import io

    import polars as pl

    def data() -> Path | io.BytesIO:
        return path if source is None else io.BytesIO(source)

    names = [n for n, _ in columns]
    offset = 2 if header else 1  # line number of row 0
    try:
        # Fast path: the CSV parser types every column itself (ints, floats, enums of known labels);
        # anything it cannot parse raises, and empty fields come back null.
        frame = pl.read_csv(
            data(),
            has_header=False,
            skip_rows=1 if header else 0,
            schema={n: _dtype(k) for n, k in columns},
            separator=separator,
            quote_char=quote_char,
        )
        complete = sum(frame[n].null_count() for n in names) == 0
        finite = all(bool(frame[n].is_finite().all()) for n, k in columns if k == "float")
        if complete and finite:
            return _Table(frame.with_row_index("_line", offset=offset), 0, None)
    except pl.exceptions.NoDataError:
        return _Table(pl.DataFrame(schema={"_line": pl.UInt32, **{n: _dtype(k) for n, k in columns}}), 0, None)
    except (pl.exceptions.ComputeError, pl.exceptions.SchemaError, pl.exceptions.ShapeError):
        pass  # a value that does not parse, a ragged row, bytes that are not UTF-8: the diagnostic path names it
    except OSError as e:
        raise _read_error(path, e) from e
    # Diagnostic path: one string per line, count fields, parse what has the right shape. (It splits on
    # every separator, so in a quoted CSV a quoted field holding the separator counts as extra fields.)
    # Bytes that are not UTF-8 become U+FFFD here and are reported as such (never silently kept).
    try:
        lines = pl.read_csv(
            data(),
            has_header=False,
            skip_rows=1 if header else 0,
            schema={"line": pl.String},
            separator="\x1f",
            quote_char=None,
            encoding="utf8-lossy",
        )
    except pl.exceptions.NoDataError:
        lines = pl.DataFrame(schema={"line": pl.String})
    except (pl.exceptions.ComputeError, OSError) as e:
        raise _read_error(path, e) from e
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
    every_column_read = not any(n.startswith("_unused_") for n in names)
    problems: list[pl.Expr] = [
        pl.when(pl.col("_blank")).then(pl.lit("the line is empty")),
        pl.when(pl.lit(every_column_read) & pl.col("line").str.contains(UTF8_REPLACEMENT, literal=True)).then(
            pl.format("the line {}: '{}'", pl.lit(NOT_UTF8), pl.col("line").str.slice(0, 80))
        ),
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
        if not n.startswith("_unused_"):  # a column the caller does not read may hold anything
            problems.append(
                pl.when(pl.col(n).str.contains(UTF8_REPLACEMENT, literal=True)).then(
                    pl.format("{} '{}' {}", pl.lit(n), pl.col(n).str.slice(0, 40), pl.lit(NOT_UTF8))
                )
            )
        problems.append(
            pl.when(pl.col(n).is_null() | (pl.col(n).str.strip_chars() == "")).then(pl.lit(f"{n} is empty")),
        )
        problems.append(
            pl.when(pl.col(f"_typed_{n}").is_null()).then(
                pl.format("{} '{}' is not {}", pl.lit(n), pl.col(n).str.slice(0, 40), pl.lit(_kind_word(k)))
            )
        )
        if k == "float":  # "nan" and "inf" parse as floats, but no reward or rating is infinite
            problems.append(
                pl.when(~pl.col(f"_typed_{n}").is_finite()).then(
                    pl.format("{} '{}' is not a finite number", pl.lit(n), pl.col(n).str.slice(0, 40))
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
        if NOT_UTF8 in str(bad["_problem"][0]):
            hint = UTF8_HINT
        elif hints and bad_col in hints:
            value = str(bad[bad_col][0]).strip()
            hint = f"{hints[bad_col].replace('{value}', value)}, or pass --skip-bad-rows to drop bad rows"
        if header is False and bad["_line"][0] == 1 and bad.height == 1:
            hint = "the file must have no header line; " + hint
        raise DataError(f"{first}{more}; {hint}")
    return _Table(good, bad.height, first)


def _resolve(input_path: Path, names: list[str], what: str) -> Path:
    """``input_path`` itself when it is a file, else the first of ``names`` inside it."""
    if input_path.is_file():
        _require_readable(input_path)
        return input_path
    if not input_path.exists():
        raise DataError(f"--input {input_path} not found")
    for n in names:
        if (input_path / n).is_file():
            _require_readable(input_path / n)
            return input_path / n
    csvs = sorted(p for p in input_path.glob("*.csv") if p.is_file())
    if len(csvs) == 1:
        _require_readable(csvs[0])
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


GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
COMPRESSED_SUFFIXES = (".gz", ".gzip", ".zst", ".zstd")  # polars' readers decompress these themselves


def format_suffix(path: Path) -> str:
    """The suffix that tells a file's format, under a compression suffix: ``log.jsonl.gz`` → ``.jsonl``."""
    suffixes = [x.lower() for x in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _compression(path: Path) -> Literal["gzip", "zstd"] | None:
    """The compression of a file, from its first bytes (polars' readers decompress both themselves)."""
    with path.open("rb") as f:
        magic = f.read(4)
    return "gzip" if magic[:2] == GZIP_MAGIC else "zstd" if magic == ZSTD_MAGIC else None


def _open_binary(path: Path) -> gzip.GzipFile | io.BufferedReader:
    """The file's bytes, gunzipped when it is gzip-compressed (zstd: see :func:`_compression`)."""
    import gzip

    return gzip.open(path, "rb") if _compression(path) == "gzip" else path.open("rb")


def _first_line(path: Path) -> str:
    """The first line of a text file, gzip- or zstd-compressed or not (bytes that are not UTF-8 become U+FFFD)."""
    try:
        if _compression(path) == "zstd":  # no zstd in the standard library: polars reads it
            import polars as pl

            first = pl.read_csv(
                path,
                has_header=False,
                n_rows=1,
                separator="\x1f",
                quote_char=None,
                infer_schema=False,
                encoding="utf8-lossy",
            )
            raw = (first.item(0, 0) or "").encode() if first.height else b""
        else:
            with _open_binary(path) as f:
                raw = f.readline()
    except Exception as e:  # OSError, EOFError of a truncated gzip stream, polars on a corrupt zstd one
        raise _read_error(path, e) from e
    return raw.decode("utf-8", errors="replace").rstrip("\r\n")


def _header(path: Path, separator: str = ",") -> list[str]:
    first = _first_line(path)
    if not first:
        raise DataError(f"{path} is empty (expected a header line)")
    return [c.strip().strip('"') for c in first.split(separator)]


def _check_columns(path: Path, have: list[str], want: dict[str, str], named_by_flag: bool = False) -> None:
    """``want`` maps a column name to the flag that sets it; ``named_by_flag``: ``have`` are the names
    ``--columns`` gives a headerless file, not the file's own header."""
    for name, flag in want.items():
        if name in have:
            continue
        if named_by_flag:
            raise DataError(
                f"{flag} {name!r} is not one of the names --columns gives {path.name} ({', '.join(have)}); "
                f"name it there or pass {flag} with one of them"
            )
        raise DataError(
            f"{path} has no column {name!r} (columns: {', '.join(have)}); "
            f"{'rename it or ' if flag else ''}{('pass ' + flag + ' NAME') if flag else 'fix the file'}"
        )


MOVIELENS_RATINGS = ("ratings.csv", "ratings.dat", "u.data")
MOVIELENS_HINT = (
    "the movielens format reads ratings.csv (latest, 20M, 25M, 32M), ratings.dat (1M, 10M) or u.data (100K)"
)
# ML-100K's u.item flags its films with these 19 genres, in this order (its u.genre lists them).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


def _translated(path: Path, separator: str) -> bytes:
    """The file's bytes (gunzipped) with MovieLens' two-character separator ``::`` replaced by ``separator``."""
    try:
        if _compression(path) == "zstd":
            raise DataError(f"{path} is zstd-compressed; decompress it first (zstd -d) or gzip it")
        with _open_binary(path) as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise _read_error(path, e) from e
    return data.replace(b"::", separator.encode())


def read_movielens(input_path: Path, skip_bad_rows: bool) -> RawLog:
    """Any MovieLens release: ratings.csv (userId,movieId,rating,timestamp, with header: latest, 20M, 25M,
    32M) [+ movies.csv]; ratings.dat (UserID::MovieID::Rating::Timestamp: 1M, 10M) [+ movies.dat, users.dat];
    u.data (tab-separated: 100K) [+ u.item, u.user]. The layout is read from the first line, not the name."""
    import polars as pl

    path = _resolve(input_path, list(MOVIELENS_RATINGS), MOVIELENS_HINT)
    first = _first_line(path)
    columns: list[tuple[str, Kind]] = [("user", "int"), ("item", "int"), ("reward", "float"), ("ts", "int")]
    if "::" in first:  # 1M, 10M
        ev = read_delimited(path, columns, header=False, skip_bad_rows=skip_bad_rows, source=_translated(path, ","))
        item_features = _movielens_dat_movies(path.parent / "movies.dat")
        user_features = _movielens_dat_users(path.parent / "users.dat")
    elif "\t" in first:  # 100K
        ev = read_delimited(path, columns, header=False, skip_bad_rows=skip_bad_rows, separator="\t")
        item_features = _movielens_100k_items(path.parent / "u.item", path.parent / "u.genre")
        user_features = _movielens_100k_users(path.parent / "u.user")
    else:
        want = ["userId", "movieId", "rating", "timestamp"]
        have = _header(path)
        _check_columns(path, have, {c: "" for c in want})
        if have != want:
            raise DataError(f"{path}: expected the columns {','.join(want)} in that order, found {','.join(have)}")
        ev = read_delimited(path, columns, header=True, skip_bad_rows=skip_bad_rows)
        item_features = _movielens_csv_movies(path.parent / "movies.csv")
        user_features = None
    events = ev.frame.with_columns(pl.lit("rating").alias("behavior"))
    files = [path]
    for side in (item_features, user_features):
        if side is not None:
            files.append(side[1])
    return RawLog(
        events=events,
        item_features=item_features[0] if item_features else None,
        user_features=user_features[0] if user_features else None,
        files=files,
        bad_rows=ev.bad_rows,
        first_bad=ev.first_bad,
    )


def _side_file_error(path: Path, e: Exception) -> DataError:
    """An optional MovieLens side file polars could not read: the user may fix it or remove it."""
    if isinstance(e, OSError):
        return _read_error(path, e)
    return DataError(f"{path}: cannot read it ({str(e).splitlines()[0]}); fix or remove the file")


def _side_table(path: Path, names: list[str], separator: str) -> pl.DataFrame:
    """A MovieLens feature file as text columns; ``separator`` ``::`` (1M, 10M) is translated to a tab first.
    Bytes that are not UTF-8 (ML-1M and 100K are Latin-1) become U+FFFD: only ids and codes are used, and
    those are checked."""
    import io

    import polars as pl

    source: Path | io.BytesIO = path
    if separator == "::":
        source, separator = io.BytesIO(_translated(path, "\t")), "\t"
    try:
        return pl.read_csv(
            source,
            has_header=False,
            new_columns=names,
            separator=separator,
            quote_char=None,
            infer_schema=False,
            encoding="utf8-lossy",
        )
    except Exception as e:  # polars raises several kinds for malformed files
        raise _side_file_error(path, e) from e


def _side_ids(path: Path, frame: pl.DataFrame, line_offset: int) -> pl.Expr:
    """The id column of a feature file as Int64, with a clear error for the first id that is not one."""
    import polars as pl

    ids = frame["id"].str.strip_chars().cast(pl.Int64, strict=False)
    bad = ids.is_null().arg_true()
    if bad.len():
        i = int(bad[0])
        raise DataError(
            f"{path} line {i + line_offset}: id {frame['id'][i]!r:.40} is not an integer; fix or remove the file"
        )
    return pl.lit(ids)


def _check_genres(path: Path, genres: pl.Series, line_offset: int, hint: str) -> None:
    garbled = genres.str.contains(UTF8_REPLACEMENT, literal=True).fill_null(False).arg_true()
    if garbled.len():
        i = int(garbled[0])
        raise DataError(f"{path} line {i + line_offset}: genres {genres[i]!r:.60} {NOT_UTF8}; {hint}")


def _movielens_csv_movies(movies: Path) -> tuple[pl.DataFrame, Path] | None:
    """movies.csv (movieId,title,genres; quoted titles): each film's first genre."""
    import polars as pl

    if not movies.is_file():
        return None
    try:  # only movieId and genres are used: bytes that are not UTF-8 elsewhere (a title) do no harm
        m = pl.read_csv(
            movies,
            schema_overrides={"movieId": pl.Int64, "title": pl.String, "genres": pl.String},
            encoding="utf8-lossy",
        )
    except Exception as e:  # polars raises several kinds for malformed CSV
        raise _side_file_error(movies, e) from e
    _check_columns(movies, m.columns, {"movieId": "", "genres": ""})
    _check_genres(movies, m["genres"], 2, "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8) or remove movies.csv")
    frame = m.select(
        pl.col("movieId").alias("item"),
        pl.col("genres").str.split("|").list.first().alias("genre"),
    ).unique("item", keep="first", maintain_order=True)
    return frame, movies


def _movielens_dat_movies(movies: Path) -> tuple[pl.DataFrame, Path] | None:
    """movies.dat (MovieID::Title::Genres, 1M and 10M): each film's first genre."""
    import polars as pl

    if not movies.is_file():
        return None
    m = _side_table(movies, ["id", "title", "genres"], "::")
    _check_genres(movies, m["genres"], 1, "fix or remove movies.dat")
    frame = m.select(
        _side_ids(movies, m, 1).alias("item"), pl.col("genres").str.split("|").list.first().alias("genre")
    ).unique("item", keep="first", maintain_order=True)
    return frame, movies


def _movielens_dat_users(users: Path) -> tuple[pl.DataFrame, Path] | None:
    """users.dat (UserID::Gender::Age::Occupation::Zip-code, 1M): sex, age (bucketed from its codes 1, 18,
    25, …, which are each band's lower bound) and occupation."""
    if not users.is_file():
        return None
    u = _side_table(users, ["id", "sex", "age", "occupation", "zip"], "::")
    return _movielens_users(users, u, 1), users


def _movielens_users(path: Path, u: pl.DataFrame, line_offset: int) -> pl.DataFrame:
    import polars as pl

    age = u["age"].str.strip_chars().cast(pl.Int64, strict=False)
    bad = (age.is_null() & u["age"].is_not_null()).arg_true()
    if bad.len():
        i = int(bad[0])
        raise DataError(
            f"{path} line {i + line_offset}: age {u['age'][i]!r:.40} is not an integer; fix or remove the file"
        )
    return u.select(
        _side_ids(path, u, line_offset).alias("user"),
        pl.col("sex").str.strip_chars(),
        pl.lit(age).alias("age"),
        pl.col("occupation").str.strip_chars(),
    ).unique("user", keep="first", maintain_order=True)


def _movielens_100k_items(items: Path, genre_file: Path) -> tuple[pl.DataFrame, Path] | None:
    """u.item (id|title|release|video release|URL|19 genre flags, 100K): each film's first flagged genre,
    named by u.genre when it is there."""
    import polars as pl

    if not items.is_file():
        return None
    names = ML100K_GENRES
    if genre_file.is_file():
        g = _side_table(genre_file, ["name", "index"], "|")
        g = g.filter(pl.col("name").is_not_null() & (pl.col("name").str.strip_chars() != ""))
        if g.height == len(ML100K_GENRES):
            names = tuple(g["name"].to_list())
    flags = [f"g{k}" for k in range(len(names))]
    m = _side_table(items, ["id", "title", "release", "video", "url", *flags], "|")
    first = pl.coalesce([pl.when(pl.col(f) == "1").then(pl.lit(n)) for f, n in zip(flags, names, strict=True)])
    frame = m.select(_side_ids(items, m, 1).alias("item"), first.alias("genre")).unique(
        "item", keep="first", maintain_order=True
    )
    return frame, items


def _movielens_100k_users(users: Path) -> tuple[pl.DataFrame, Path] | None:
    """u.user (id|age|gender|occupation|zip, 100K): sex, age (bucketed) and occupation."""
    if not users.is_file():
        return None
    u = _side_table(users, ["id", "age", "sex", "occupation", "zip"], "|")
    return _movielens_users(users, u, 1), users


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
    separator: str = ","
    """Field separator of a CSV file: one character (``--separator``; ``tab`` is accepted for a tab)."""
    names: tuple[str, ...] | None = None
    """Column names of a CSV file without a header line (``--columns``); None: the first line is the header."""

    def __post_init__(self) -> None:
        if self.separator in ("tab", "\\t"):
            object.__setattr__(self, "separator", "\t")
        if len(self.separator) != 1 or self.separator in ('"', "\n", "\r"):
            raise DataError(
                f"--separator {self.separator!r} must be one character (',', ';', '|', tab, …), not a quote or newline"
            )
        if self.names is not None:
            names = tuple(n.strip() for n in self.names)
            if not names or any(not n for n in names) or len(set(names)) != len(names):
                raise DataError(
                    f"--columns {','.join(self.names)!r} must name every column of the file once, comma-separated"
                )
            object.__setattr__(self, "names", names)

    @property
    def csv_layout_given(self) -> list[str]:
        """The CSV-layout flags that differ from a comma-separated file with a header line."""
        return [
            f for f, given in (("--separator", self.separator != ","), ("--columns", self.names is not None)) if given
        ]


JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")  # .json: JSON lines (Amazon, Yelp) or one JSON array
PARQUET_SUFFIXES = (".parquet", ".pq")
MISSING_ID_TEXT = ("", "nan", "null", "none")  # (lower-cased) text that means "no id", as pandas writes it
# Text read as integer ids: canonical integers only, so "007" and "7" (or "+7") never become one id.
_INT_TEXT = r"^-?(0|[1-9]\d*)$"
_FLOAT_INT_TEXT = r"^-?(0|[1-9]\d*)\.0+$"  # "107.0": an integer id written by a float column


def read_events(input_path: Path, cols: EventColumns, skip_bad_rows: bool, reward: Reward) -> RawLog:
    """Any CSV (with header), JSON-lines (``.jsonl``/``.ndjson``, e.g. ``serve --log-impressions``) or
    Parquet file, with a column mapping."""
    behaviors = tuple(b for b, _ in reward)
    import polars as pl

    if input_path.is_dir():
        raise DataError(f"--input {input_path} is a directory; the events format reads one CSV, JSONL or Parquet file")
    if not input_path.is_file():
        raise DataError(f"--input {input_path} not found (the events format reads one CSV, JSONL or Parquet file)")
    _require_readable(input_path)
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
    suffix = format_suffix(input_path)  # log.csv.gz reads as CSV: polars decompresses gzip and zstd

    if suffix in PARQUET_SUFFIXES or suffix in JSON_LINES_SUFFIXES:
        if cols.csv_layout_given:
            one = len(cols.csv_layout_given) == 1
            raise DataError(
                f"{' and '.join(cols.csv_layout_given)} describe{'s' if one else ''} a CSV file; {input_path} is read "
                f"as {'Parquet' if suffix in PARQUET_SUFFIXES else 'JSON lines'}, whose columns are named: drop "
                f"{'it' if one else 'them'}"
            )
        if suffix in PARQUET_SUFFIXES:
            try:
                frame = pl.read_parquet(input_path)
            except Exception as e:  # polars raises several kinds for corrupt files
                if isinstance(e, OSError):
                    raise _read_error(input_path, e) from e
                raise DataError(f"{input_path}: cannot read Parquet ({str(e).splitlines()[0]})") from e
        else:
            frame = _read_json_lines(input_path)
        _check_columns(input_path, frame.columns, want)
        frame = frame.select([pl.col(src).alias(dst) for src, dst in rename.items()]).with_row_index("_line", offset=1)
        where = "row" if suffix in PARQUET_SUFFIXES else "line"
        return _typed_events(frame, input_path, where, rename, kinds, hints, skip_bad_rows)

    sep, header = cols.separator, cols.names is None
    have = _header(input_path, sep) if cols.names is None else list(cols.names)
    _check_columns(input_path, have, want, named_by_flag=cols.names is not None)
    if cols.names is not None:
        _check_field_count(input_path, have, sep)
    try:
        # Every column is read (not just the mapped ones): with a projection polars silently drops the extra
        # fields of a ragged row, which would hide a shifted or broken line.
        frame = pl.read_csv(
            input_path,
            infer_schema=False,
            quote_char='"',
            separator=sep,
            has_header=header,
            new_columns=None if header else have,
        )
        if frame.width != len(have):  # headerless: the first line has more fields than --columns names
            raise pl.exceptions.ShapeError("field count")
        frame = frame.select(list(rename))
    except (pl.exceptions.ComputeError, pl.exceptions.SchemaError, pl.exceptions.ShapeError):
        # Ragged rows or bytes that are not UTF-8: the line-level reader names the first one (or drops them
        # with --skip-bad-rows).
        spec: list[tuple[str, Kind]] = [(rename.get(c, f"_unused_{i}"), "str") for i, c in enumerate(have)]
        table = read_delimited(
            input_path, spec, header=header, skip_bad_rows=skip_bad_rows, quote_char='"', separator=sep
        )
        frame = table.frame.select("_line", *[n for n, _ in spec if not n.startswith("_unused_")])
        log = _typed_events(frame, input_path, "line", rename, kinds, hints, skip_bad_rows)
        log.bad_rows += table.bad_rows
        log.first_bad = table.first_bad or log.first_bad
        return log
    except OSError as e:
        raise _read_error(input_path, e) from e
    frame = frame.rename(rename).with_row_index("_line", offset=2 if header else 1)
    return _typed_events(frame, input_path, "line", rename, kinds, hints, skip_bad_rows)


def _check_field_count(path: Path, names: list[str], separator: str) -> None:
    """A headerless file's first line must have as many fields as ``--columns`` names."""
    import polars as pl

    try:
        first = pl.read_csv(
            path,
            has_header=False,
            n_rows=1,
            separator=separator,
            quote_char='"',
            infer_schema=False,
            encoding="utf8-lossy",
        )
    except pl.exceptions.NoDataError:
        raise DataError(f"{path} is empty (--columns names the columns of its lines)") from None
    except (pl.exceptions.ComputeError, OSError) as e:
        raise _read_error(path, e) from e
    if first.width != len(names):
        shown = separator.join("" if v is None else str(v) for v in first.row(0))
        raise DataError(
            f"--columns names {len(names)} columns ({', '.join(names)}) but line 1 of {path.name} has {first.width} "
            f"field{'' if first.width == 1 else 's'}: {shown[:80]!r}; name every field (one you do not map may "
            "have any name), or check --separator"
        )


def _read_json_lines(path: Path) -> pl.DataFrame:
    """A JSON-lines file (or a ``.json`` file holding one array of objects) as a frame (schema from every row);
    a clear error naming the first bad line."""
    import json

    import polars as pl

    if _first_line(path).lstrip().startswith("["):
        try:
            return pl.read_json(path, infer_schema_length=None)
        except OSError as e:
            raise _read_error(path, e) from e
        except Exception as e:  # polars raises several kinds for malformed JSON
            why = (str(e).splitlines() or [type(e).__name__])[0]
            raise DataError(
                f"{path}: cannot read it as a JSON array of objects ({why}); fix the file, or write one object per "
                "line (JSON lines)"
            ) from e
    try:
        return pl.read_ndjson(path, infer_schema_length=None)
    except OSError as e:
        raise _read_error(path, e) from e
    except Exception as e:  # polars does not say which line: find it (only on this error path)
        if _compression(path) == "zstd":  # no zstd in the standard library to find the line with
            raise DataError(f"{path}: cannot read JSON lines ({str(e).splitlines()[0]}); fix the file") from e
        with _open_binary(path) as f:
            for number, raw_line in enumerate(f, 1):
                if not raw_line.strip():
                    continue
                try:
                    row = json.loads(raw_line.decode("utf-8"))
                except UnicodeDecodeError:
                    raise DataError(f"{path} line {number}: {NOT_UTF8}; save the file as UTF-8 or fix the line") from e
                except json.JSONDecodeError as je:
                    raise DataError(
                        f"{path} line {number}: not valid JSON ({je.msg}: {raw_line[:60].decode(errors='replace')!r}); "
                        "fix or delete the line"
                    ) from e
                if not isinstance(row, dict):
                    raise DataError(f"{path} line {number}: expected a JSON object per line, found {row!r:.60}") from e
        raise DataError(f"{path}: cannot read JSON lines ({str(e).splitlines()[0]}); fix the file") from e


def _is_scalar_dtype(dtype: pl.DataType) -> bool:
    import polars as pl

    return dtype.is_numeric() or dtype.is_temporal() or _is_text(dtype) or dtype == pl.Boolean


def _is_text(dtype: pl.DataType) -> bool:
    import polars as pl

    return dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum)


def _refuse_dtype(path: Path, src: str, dtype: pl.DataType, want: str) -> DataError:
    return DataError(f"{path}: column {src!r} has type {dtype}; {want}, fix the file or map another column")


def _events_ids(
    frame: pl.DataFrame, name: str, src: str, path: Path, where: str, notes: list[str]
) -> tuple[pl.Expr, pl.Expr]:
    """The typed id column and its "bad" mask (missing). Ids keep their identity: integers (also integral
    floats and text like "107.0") stay integers, other text stays text, anything else is refused."""
    import polars as pl

    dtype = frame.schema[name]
    col = pl.col(name)
    if dtype.is_integer():
        return col.cast(pl.Int64), col.is_null()
    if dtype.is_float():
        values = frame[name]
        fractional = values.is_finite() & (values != values.floor())
        if bool(fractional.any()):
            i = int(fractional.arg_true()[0])
            raise DataError(
                f"{path} {where} {frame['_line'][i]}: column {src!r} holds the id {values[i]!r}, not a whole number; "
                "float ids would be merged or renamed — store the ids as integers or text"
            )
        missing = col.is_null() | ~col.is_finite()
        return pl.when(missing).then(None).otherwise(col).cast(pl.Int64), missing
    if not _is_text(dtype):
        raise _refuse_dtype(path, src, dtype, "ids must be integers or text")
    text = col.cast(pl.String).str.strip_chars()
    missing = text.is_null() | text.str.to_lowercase().is_in(list(MISSING_ID_TEXT))
    stripped = frame.select(text.alias("t"), missing.alias("m"))
    present = stripped.filter(~pl.col("m"))["t"]
    if present.len() and bool(present.str.contains(_INT_TEXT).all()):
        as_int = pl.when(missing).then(None).otherwise(text).cast(pl.Int64, strict=False)
        if frame.select(as_int.is_null().sum()).item() == frame.select(missing.sum()).item():  # all fit int64
            return as_int, missing
    elif present.len() and bool((present.str.contains(_INT_TEXT) | present.str.contains(_FLOAT_INT_TEXT)).all()):
        as_int = pl.when(missing).then(None).otherwise(text.str.replace(r"\.0+$", "")).cast(pl.Int64, strict=False)
        if frame.select(as_int.is_null().sum()).item() == frame.select(missing.sum()).item():
            example = present.filter(present.str.contains(_FLOAT_INT_TEXT))[0]
            notes.append(
                f"{path}: column {src!r} holds integer ids written as floats (e.g. {example!r}); read as integers "
                f"({example.split('.')[0]!r}), as serving will be asked for them"
            )
            return as_int, missing
    return pl.when(missing).then(None).otherwise(text), missing


def _events_time(frame: pl.DataFrame, src: str, path: Path, notes: list[str]) -> tuple[pl.Expr, pl.Expr, bool]:
    """Typed ``ts`` (int64: whole units, fractions floored), its "bad" mask, and whether it came from date-times."""
    import polars as pl

    dtype = frame.schema["ts"]
    col = pl.col("ts")
    if dtype.is_temporal():
        return col.dt.epoch("s"), col.is_null(), True
    if dtype.is_integer():
        return col.cast(pl.Int64), col.is_null(), False
    if dtype.is_float():
        bad = col.is_null() | ~col.is_finite()
        if bool(frame.select((col != col.floor()).fill_null(False).any()).item()):
            notes.append(f"{path}: column {src!r} has fractional timestamps; they are floored to whole units")
        return pl.when(bad).then(None).otherwise(col.floor()).cast(pl.Int64), bad, False
    if not _is_text(dtype):
        raise _refuse_dtype(path, src, dtype, "timestamps must be numbers, date-times or text")
    text = col.cast(pl.String).str.strip_chars()
    as_float = text.cast(pl.Float64, strict=False)
    as_float = pl.when(as_float.is_finite()).then(as_float).otherwise(None)
    numeric = pl.coalesce(text.cast(pl.Int64, strict=False), as_float.floor().cast(pl.Int64, strict=False))
    n_numeric = frame.select(numeric.is_not_null().sum()).item()
    if n_numeric == 0 and frame.height:  # no numbers at all: try date-times
        try:
            as_time = frame["ts"].cast(pl.String).str.strip_chars().str.to_datetime(strict=False)
        except (pl.exceptions.ComputeError, pl.exceptions.InvalidOperationError):
            as_time = None  # no date-time format fits: every value is reported as not a timestamp
        if as_time is not None and as_time.null_count() < frame.height:
            epoch = pl.lit(as_time.dt.epoch("s"))
            return epoch, epoch.is_null(), True
    fractional = frame.select(((as_float != as_float.floor()) & text.cast(pl.Int64, strict=False).is_null()).any())
    if bool(fractional.item()):
        notes.append(f"{path}: column {src!r} has fractional timestamps; they are floored to whole units")
    return numeric, numeric.is_null(), False


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
    an error naming the row (or dropped with ``skip_bad_rows``); a column of the wrong type (a list,
    a float id that is not a whole number) is refused."""
    import polars as pl

    source = {dst: src for src, dst in rename.items()}
    notes: list[str] = []
    typed: dict[str, pl.Expr] = {}
    bad: dict[str, pl.Expr] = {}
    ts_is_datetime = False
    for name in [c for c in frame.columns if c != "_line"]:
        src, dtype, col = source[name], frame.schema[name], pl.col(name)
        if not _is_scalar_dtype(dtype) and dtype != pl.Null:
            raise _refuse_dtype(path, src, dtype, "expected one number or text per row")
        if name in ("user", "item"):
            typed[name], bad[name] = _events_ids(frame, name, src, path, where, notes)
        elif name == "ts":
            typed[name], bad[name], ts_is_datetime = _events_time(frame, src, path, notes)
        elif name == "behavior":
            kind = kinds[name]
            text = col.cast(pl.String)
            typed[name] = pl.when(text.is_in(list(kind))).then(text) if isinstance(kind, tuple) else text
            bad[name] = typed[name].is_null()
        else:  # reward, propensity: finite numbers
            if dtype.is_temporal():
                raise _refuse_dtype(path, src, dtype, "expected a number")
            number = (col.cast(pl.String).str.strip_chars() if _is_text(dtype) else col).cast(pl.Float64, strict=False)
            typed[name] = number
            bad[name] = number.is_null() | ~number.is_finite()
    order = [c for c in frame.columns if c != "_line"]
    out = frame.select("_line", *[typed[c].alias(c) for c in order], *[bad[c].alias(f"_bad_{c}") for c in order])
    bad_mask = pl.any_horizontal([pl.col(f"_bad_{c}") for c in order])
    bad_rows = out.with_row_index("_i").filter(bad_mask)
    first = None
    if bad_rows.height:
        i = int(bad_rows["_i"][0])
        col_name = next(c for c in order if bad_rows[f"_bad_{c}"][0])
        value = frame[col_name][i]
        if col_name in ("reward", "propensity") and isinstance(value, float):
            what = "is not a finite number"
        elif col_name in ("user", "item"):
            what = "is missing (an empty, NaN or null id)"
        elif col_name == "ts":
            what = "is missing or not a timestamp (unix time or date-time)"
        else:
            what = f"is missing or not {_kind_word(kinds[col_name])}"
        first = f"{path} {where} {frame['_line'][i]}: column {source[col_name]!r} value {value!r} {what}"
        if not skip_bad_rows:
            hint = "fix the file"
            if hints and col_name == "behavior":
                hint = hints["behavior"].replace("{value}", str(value))
            more = f" ({bad_rows.height} bad rows in all)" if bad_rows.height > 1 else ""
            raise DataError(f"{first}{more}; {hint}, or pass --skip-bad-rows to drop bad rows")
    events = out.filter(~bad_mask).select("_line", *order)
    return RawLog(
        events=events,
        files=[path],
        bad_rows=bad_rows.height,
        first_bad=first,
        warnings=notes,
        ts_is_datetime=ts_is_datetime,
    )


TIME_UNITS: dict[str, int] = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_UNIT_WORDS = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
WALL_CLOCK_SECONDS = 10**8
"""1973-03-03 in unix seconds: a median at or above it is wall-clock time (below: test data, counters), and
then a timestamp 5× away from the median is a cut or corrupt value."""
MAX_SECONDS = 10**11
"""The year 5138 in unix seconds: a median above it is not seconds."""
OUTLIER_RATIO = 5


def _date(seconds: float) -> str:
    import datetime as dt

    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d")
    except (OverflowError, OSError, ValueError):
        return f"beyond the year {9999 if seconds > 0 else 1}"


def _guess_unit(median: float) -> str:
    """The unit in which a wall-clock median (≥ 1e8) falls between 1973 and 5138."""
    return "ns" if median >= 1e17 else "us" if median >= 1e14 else "ms" if median >= MAX_SECONDS else "s"


def apply_time_unit(raw: RawLog, unit: str, skip_bad_rows: bool) -> RawLog:
    """Convert ``ts`` from ``unit`` to whole seconds (floored) and check it is plausible.

    Wall-clock timestamps that look like another unit than the one given (a median beyond the year 5138 read
    as seconds: milliseconds, say; or in 1970 after the conversion) are refused with the ``--time-unit`` to
    pass. In wall-clock data (median
    after 1973), a timestamp more than 5× from the median — a line cut mid-timestamp, a corrupt value — is a
    bad row: an error naming the line, or dropped with ``skip_bad_rows``.
    """
    import polars as pl

    if unit not in TIME_UNITS:
        raise DataError(f"unknown --time-unit {unit!r}; use one of {', '.join(TIME_UNITS)}")
    ev = raw.events
    if ev.height == 0:
        return raw
    src = raw.files[0]
    where = "row" if format_suffix(src) in PARQUET_SUFFIXES else "line"
    factor = TIME_UNITS[unit]
    median = float(ev["ts"].median())  # type: ignore[arg-type]
    if raw.ts_is_datetime:
        if unit != "s":
            raise DataError(f"--time-unit {unit}: {src} has date-time timestamps, read as seconds; drop --time-unit")
    elif abs(median) >= WALL_CLOCK_SECONDS:  # wall-clock time in some unit: is it the one given?
        guess = _guess_unit(abs(median))
        if guess != unit:
            todo = "drop --time-unit" if guess == "s" else f"pass --time-unit {guess}"
            raise DataError(
                f"{src}: the timestamps look like {_UNIT_WORDS[guess]}, not {_UNIT_WORDS[unit]} (median {median:.0f} "
                f"is {_date(median / TIME_UNITS[guess])} in {_UNIT_WORDS[guess]}, {_date(median / factor)} in "
                f"{_UNIT_WORDS[unit]}); {todo}"
            )
    if factor != 1:
        ev = ev.with_columns(pl.col("ts") // factor)
        median = median / factor
    if median < WALL_CLOCK_SECONDS:
        return _replace_events(raw, ev)
    far = (pl.col("ts") < median / OUTLIER_RATIO) | (pl.col("ts") > median * OUTLIER_RATIO)
    bad = ev.filter(far)
    if bad.height == 0:
        return _replace_events(raw, ev)
    first = (
        f"{src} {where} {bad['_line'][0]}: ts {bad['ts'][0]} is far from the other timestamps (median "
        f"{median:.0f}, {_date(median)}; this one is {_date(bad['ts'][0])}) — a line cut short or a corrupt value"
    )
    if not skip_bad_rows:
        more = f" ({bad.height} such rows)" if bad.height > 1 else ""
        raise DataError(f"{first}{more}; fix or delete the line, or pass --skip-bad-rows to drop bad rows")
    out = _replace_events(raw, ev.filter(~far))
    out.bad_rows += bad.height
    out.first_bad = out.first_bad or first
    return out


def _replace_events(raw: RawLog, events: pl.DataFrame) -> RawLog:
    from dataclasses import replace

    return replace(raw, events=events)
