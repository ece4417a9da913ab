"""``prepare --format events`` reads CSV files with another separator (``--separator``) and without a header
line (``--columns`` names their fields): the same log in each layout gives the same prepared events."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from topkrec.data.prepare import PrepareConfig, prepare
from topkrec.data.readers import EventColumns
from topkrec.errors import DataError, TopkrecError

REWARD = (("view", 1.0), ("cart", 2.0), ("buy", 3.0))
HEADER = ["ts", "visitor", "event", "item", "note"]


def rows() -> list[list[str]]:
    out = []
    for user in range(1, 7):
        for j in range(9):
            event = ("view", "view", "cart", "buy")[(user + j) % 4]
            out.append([str(1_600_000_000 + 600 * j + user), f"u{user}", event, str(100 + (user * 7 + j * 3) % 17), ""])
    return out


def write(path: Path, sep: str, header: bool) -> Path:
    lines = ([sep.join(HEADER)] if header else []) + [sep.join(r) for r in rows()]
    path.write_text("\n".join(lines) + "\n")
    return path


def cfg(**layout: object) -> PrepareConfig:
    columns = EventColumns(user="visitor", item="item", time="ts", event="event", **layout)  # type: ignore[arg-type]
    return PrepareConfig(format="events", reward=REWARD, columns=columns)


def events_of(path: Path, config: PrepareConfig) -> pl.DataFrame:
    prepared, _ = prepare(path, config)
    return prepared.events


def test_separator_and_headerless_layouts_read_the_same_log(tmp_path: Path) -> None:
    base = events_of(write(tmp_path / "a.csv", ",", header=True), cfg())
    assert base.height == len(rows())
    tsv = events_of(write(tmp_path / "b.tsv", "\t", header=False), cfg(separator="tab", names=tuple(HEADER)))
    semi = events_of(write(tmp_path / "c.csv", ";", header=True), cfg(separator=";"))
    pipe = events_of(write(tmp_path / "d.txt", "|", header=False), cfg(separator="|", names=tuple(HEADER)))
    for other in (tsv, semi, pipe):
        assert other.equals(base)


def test_a_bad_line_of_a_headerless_file_is_numbered_from_1(tmp_path: Path) -> None:
    path = write(tmp_path / "b.tsv", "\t", header=False)
    lines = path.read_text().splitlines()
    lines[2] = (
        lines[2].replace("\tview\t", "\tclick\t").replace("\tcart\t", "\tclick\t").replace("\tbuy\t", "\tclick\t")
    )
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"b\.tsv line 3: .*click"):
        prepare(path, cfg(separator="\t", names=tuple(HEADER)))


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"separator": "::"}, r"--separator '::' must be one character"),
        ({"separator": '"'}, r"must be one character .* not a quote"),
        ({"names": ("ts", "visitor", "event", "item", "ts")}, r"--columns .* must name every column of the file once"),
        ({"names": ("ts", "", "event")}, r"must name every column"),
    ],
)
def test_bad_layouts_are_refused(layout: dict[str, object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        EventColumns(**layout)  # type: ignore[arg-type]


def test_columns_must_match_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "b.tsv", "\t", header=False)
    with pytest.raises(DataError, match=r"--columns names 4 columns .* line 1 of b\.tsv has 5 fields"):
        prepare(path, cfg(separator="tab", names=("ts", "visitor", "event", "item")))
    with pytest.raises(DataError, match=r"has 1 field: .*check --separator"):  # the separator forgotten
        prepare(path, cfg(names=tuple(HEADER)))
    with pytest.raises(DataError, match=r"--user-col 'visitor' is not one of the names --columns gives b\.tsv"):
        prepare(path, cfg(separator="tab", names=("ts", "user", "event", "item", "note")))


def test_layout_flags_only_describe_an_events_csv(tmp_path: Path) -> None:
    with pytest.raises(TopkrecError, match=r"--separator describes the CSV file of --format events only"):
        PrepareConfig(format="taobao", columns=EventColumns(separator=";"))
    with pytest.raises(TopkrecError, match=r"--separator and --columns describe .* drop them"):
        PrepareConfig(format="movielens", columns=EventColumns(separator="|", names=("a", "b")))
    frame = pl.read_csv(write(tmp_path / "a.csv", ",", header=True))
    frame.write_parquet(tmp_path / "a.parquet")
    with pytest.raises(DataError, match=r"--columns describes a CSV file; .*a\.parquet is read as Parquet"):
        prepare(tmp_path / "a.parquet", cfg(names=tuple(HEADER)))


def test_the_installed_command_reads_a_headerless_tsv(tmp_path: Path) -> None:
    path = write(tmp_path / "log.tsv", "\t", header=False)
    args = ["--format", "events", "--input", str(path), "--separator", "tab", "--columns", ",".join(HEADER)]
    args += ["--user-col", "visitor", "--event-col", "event", "--reward", "view=1,cart=2,buy=3"]
    r = subprocess.run(
        [sys.executable, "-m", "topkrec", "prepare", *args, "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert f"users 6  items 17  events {len(rows())}" in r.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "topkrec",
            "prepare",
            *[("::" if a == "tab" else a) for a in args],
            "--out",
            str(tmp_path / "p"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and bad.stderr.strip().startswith("error: --separator '::'"), bad.stderr
