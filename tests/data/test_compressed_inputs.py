"""Raw logs as they are downloaded: gzip- or zstd-compressed CSV and JSON lines, ``.json`` files (JSON lines, as
Amazon and Yelp publish them, or one array), compressed MovieLens files. Each reads as its plain form does."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from topkrec.data.prepare import PrepareConfig, prepare
from topkrec.data.readers import EventColumns, format_suffix
from topkrec.errors import DataError

REWARD = (("view", 1.0), ("cart", 2.0), ("buy", 3.0))
COLUMNS = EventColumns(user="reviewerID", item="asin", time="unixReviewTime", event="event")


def log() -> pl.DataFrame:
    rows = []
    for user in range(1, 7):
        for j in range(9):
            rows.append(
                {
                    "reviewerID": f"A{user}",
                    "asin": f"B{(user * 5 + j * 3) % 13:03d}",
                    "unixReviewTime": 1_400_000_000 + 86_400 * j + user,
                    "event": ("view", "cart", "view", "buy")[(user + j) % 4],
                    "summary": 'Great, "really" good',
                }
            )
    return pl.DataFrame(rows)


def events_of(path: Path) -> pl.DataFrame:
    prepared, _ = prepare(path, PrepareConfig(format="events", reward=REWARD, columns=COLUMNS))
    return prepared.events


@pytest.mark.parametrize("name", ["log.csv.gz", "log.csv.zst", "log.jsonl.gz", "log.json", "log.json.gz", "arr.json"])
def test_compressed_and_json_files_read_as_the_plain_csv(tmp_path: Path, name: str) -> None:
    plain = tmp_path / "log.csv"
    log().write_csv(plain)
    base = events_of(plain)
    assert base.height == log().height
    path = tmp_path / name
    if name == "log.csv.gz":
        path.write_bytes(gzip.compress(plain.read_bytes()))
    elif name == "log.csv.zst":
        log().write_csv(path, compression="zstd")
        assert path.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    elif name.startswith("log.json"):  # JSON lines, as Amazon's reviews files are
        text = "".join(json.dumps(r) + "\n" for r in log().to_dicts())
        path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    else:  # one JSON array of objects
        path.write_text(json.dumps(log().to_dicts(), indent=1))
    assert events_of(path).equals(base)


def test_format_suffix_looks_under_the_compression_suffix() -> None:
    assert format_suffix(Path("a/b.jsonl.gz")) == ".jsonl"
    assert format_suffix(Path("log.CSV.ZST")) == ".csv"
    assert format_suffix(Path("events.parquet")) == ".parquet"
    assert format_suffix(Path("ratings.dat.gz")) == ".dat"
    assert format_suffix(Path("noext")) == ""


def test_corrupt_compressed_files_say_so(tmp_path: Path) -> None:
    plain = tmp_path / "log.csv"
    log().write_csv(plain)
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(gzip.compress(plain.read_bytes() * 40)[:300])  # the header survives, the stream ends early
    with pytest.raises(DataError, match=r"cut\.csv\.gz: cannot read it \(.*\); fix the file"):
        events_of(cut)
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(b'{"reviewerID": "A1"}\n{"reviewerID": \n'))
    with pytest.raises(DataError, match=r"bad\.jsonl\.gz line 2: not valid JSON"):
        events_of(bad)
    array = tmp_path / "arr.json"
    array.write_text('[{"reviewerID": "A1"}, {"reviewerID": ')
    with pytest.raises(DataError, match=r"arr\.json: cannot read it as a JSON array of objects .*\(JSON lines\)"):
        events_of(array)


def test_compressed_movielens_files(tmp_path: Path) -> None:
    rows = [(u, m, float(1 + (u + m) % 5), 978_300_000 + 60 * m + u) for u in range(1, 6) for m in range(1, 9)]
    csv = "userId,movieId,rating,timestamp\n" + "".join(f"{u},{m},{r:g},{t}\n" for u, m, r, t in rows)
    dat = "".join(f"{u}::{m}::{r:g}::{t}\n" for u, m, r, t in rows)
    (tmp_path / "ratings.csv").write_text(csv)
    (tmp_path / "ratings.csv.gz").write_bytes(gzip.compress(csv.encode()))
    (tmp_path / "ratings.dat.gz").write_bytes(gzip.compress(dat.encode()))
    base, _ = prepare(tmp_path / "ratings.csv", PrepareConfig(format="movielens"))
    for name in ("ratings.csv.gz", "ratings.dat.gz"):
        other, _ = prepare(tmp_path / name, PrepareConfig(format="movielens"))
        assert other.events.equals(base.events), name


def test_the_installed_command_reads_a_gzipped_json_lines_file(tmp_path: Path) -> None:
    path = tmp_path / "reviews.json.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in log().to_dicts()).encode()))
    r = subprocess.run(
        [
            sys.executable, "-m", "topkrec", "prepare", "--format", "events", "--input", str(path),
            "--out", str(tmp_path / "o"), "--user-col", "reviewerID", "--item-col", "asin",
            "--time-col", "unixReviewTime", "--event-col", "event", "--reward", "view=1,cart=2,buy=3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"users 6  items 13  events {log().height}" in r.stdout
