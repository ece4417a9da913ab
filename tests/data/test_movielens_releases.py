"""``prepare --format movielens`` reads every MovieLens release: ratings.csv (latest, 20M, 25M, 32M), ratings.dat
(1M, 10M: ``::``-separated, Latin-1 side files) and u.data (100K: tab-separated, ``|`` side files). The same
ratings in each layout must give the same prepared events; the side files give the same genres and users."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from topkrec.data.dataset import Dataset
from topkrec.data.prepare import PrepareConfig, prepare
from topkrec.errors import DataError
from topkrec.io import atomic_dir

GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama"]
GENRES_100K += [
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
N_USERS, N_MOVIES = 8, 20


def ratings() -> list[tuple[int, int, float, int]]:
    rng = np.random.default_rng(3)
    rows = []
    for user in range(1, N_USERS + 1):
        for j, movie in enumerate(rng.permutation(np.arange(1, N_MOVIES + 1))[:12]):
            rows.append((user, int(movie), float(1 + (user * j) % 5), 900_000_000 + 7_200 * j + 13 * user))
    return rows


def genre(movie: int) -> str:
    return "Comedy|Drama" if movie % 3 == 0 else ("Action" if movie % 3 == 1 else "Sci-Fi|War")


# Latin-1 bytes in the titles, as in the 1M and 100K releases ("é" is one byte, not UTF-8).
TITLE = "Misérables, Les: part {m} (1995)"


def write_csv_release(d: Path) -> Path:
    d.mkdir()
    pl.DataFrame(ratings(), schema=["userId", "movieId", "rating", "timestamp"], orient="row").write_csv(
        d / "ratings.csv"
    )
    movies = {"movieId": list(range(1, N_MOVIES + 1)), "genres": [genre(m) for m in range(1, N_MOVIES + 1)]}
    pl.DataFrame(
        {"movieId": movies["movieId"], "title": [f"M{m}" for m in movies["movieId"]], "genres": movies["genres"]}
    ).write_csv(d / "movies.csv")
    return d


def users_table() -> list[tuple[int, str, int, int]]:
    return [(u, "MF"[u % 2], [1, 18, 25, 35, 45, 50, 56][u % 7], u % 4) for u in range(1, N_USERS + 1)]


def write_dat_release(d: Path) -> Path:
    d.mkdir()
    (d / "ratings.dat").write_text("".join(f"{u}::{m}::{r:g}::{t}\n" for u, m, r, t in ratings()))
    (d / "movies.dat").write_bytes(
        "".join(f"{m}::{TITLE.format(m=m)}::{genre(m)}\n" for m in range(1, N_MOVIES + 1)).encode("latin-1")
    )
    (d / "users.dat").write_text("".join(f"{u}::{s}::{a}::{o}::0{u}123\n" for u, s, a, o in users_table()))
    return d


def write_100k_release(d: Path, with_genre_file: bool = True) -> Path:
    d.mkdir()
    (d / "u.data").write_text("".join(f"{u}\t{m}\t{r:g}\t{t}\n" for u, m, r, t in ratings()))
    lines = []
    for m in range(1, N_MOVIES + 1):
        flags = ["1" if g in genre(m).split("|") else "0" for g in GENRES_100K]
        lines.append("|".join([str(m), TITLE.format(m=m), "01-Jan-1995", "", "http://us.imdb.com/x", *flags]) + "\n")
    (d / "u.item").write_bytes("".join(lines).encode("latin-1"))
    ages = {u: [7, 18, 25, 35, 45, 50, 60][u % 7] for u in range(1, N_USERS + 1)}
    (d / "u.user").write_text(
        "".join(
            f"{u}|{ages[u]}|{s}|{['student', 'writer', 'other', 'none'][o]}|0{u}123\n" for u, s, _, o in users_table()
        )
    )
    if with_genre_file:
        (d / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES_100K)) + "\n")
    return d


def prepared(input_path: Path, out: Path) -> Dataset:
    result, _ = prepare(input_path, PrepareConfig(format="movielens"))
    with atomic_dir(out, force=True) as tmp:
        result.save(tmp)
    return Dataset.load(out)


def events(d: Path) -> pl.DataFrame:
    return pl.read_parquet(d / "events.parquet")


def test_the_three_layouts_give_the_same_events_and_genres(tmp_path: Path) -> None:
    csv = prepared(write_csv_release(tmp_path / "latest"), tmp_path / "a")
    dat = prepared(write_dat_release(tmp_path / "1m"), tmp_path / "b")
    tab = prepared(write_100k_release(tmp_path / "100k"), tmp_path / "c")
    base = events(tmp_path / "a")
    assert base.height == len(ratings())
    assert events(tmp_path / "b").equals(base)
    assert events(tmp_path / "c").equals(base)
    assert csv.n_items == dat.n_items == tab.n_items == N_MOVIES
    # Each film's first genre: the first listed (csv, dat), the first flagged in u.genre's order (100K). For
    # these films both are Comedy, Action or Sci-Fi, so the codes agree.
    assert len(np.unique(csv.item_features["genre"])) == 3
    assert np.array_equal(csv.item_features["genre"], dat.item_features["genre"])
    assert np.array_equal(csv.item_features["genre"], tab.item_features["genre"])


def test_side_files_give_user_features(tmp_path: Path) -> None:
    dat = prepared(write_dat_release(tmp_path / "1m"), tmp_path / "b")
    tab = prepared(write_100k_release(tmp_path / "100k", with_genre_file=False), tmp_path / "c")
    for ds in (dat, tab):
        assert set(ds.user_features) == {"sex", "age", "occupation"}
        assert set(np.unique(ds.user_features["sex"]).tolist()) == {1, 2}
        # 1M codes 1, 18, 25 | 35 | 45 | 50, 56 and 100K ages 7, 18, 25 | 35 | 45 | 50, 60 fall in the same bands.
        assert set(np.unique(ds.user_features["age"]).tolist()) <= {1, 2, 3, 4}
    assert np.array_equal(dat.user_features["age"], tab.user_features["age"])
    assert np.array_equal(dat.user_features["sex"], tab.user_features["sex"])
    # Without the side files the ratings alone are read.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "ratings.dat").write_bytes((tmp_path / "1m" / "ratings.dat").read_bytes())
    ds = prepared(bare / "ratings.dat", tmp_path / "d")
    assert ds.user_features == {} and ds.item_features == {}


def test_a_bad_line_of_ratings_dat_is_named(tmp_path: Path) -> None:
    d = write_dat_release(tmp_path / "1m")
    lines = (d / "ratings.dat").read_text().splitlines(keepends=True)
    lines[4] = "5::x::3::978300760\n"
    (d / "ratings.dat").write_text("".join(lines))
    with pytest.raises(DataError, match=r"ratings\.dat line 5: item 'x' is not an integer"):
        prepare(d, PrepareConfig(format="movielens"))
    result, _ = prepare(d, PrepareConfig(format="movielens", skip_bad_rows=True))
    with atomic_dir(tmp_path / "s", force=True) as tmp:
        result.save(tmp)
    assert Dataset.load(tmp_path / "s").n_events == len(ratings()) - 1


def test_a_directory_without_ratings_names_every_release(tmp_path: Path) -> None:
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(DataError, match=r"ratings\.csv or ratings\.dat or u\.data .*1M, 10M.*100K"):
        prepare(d, PrepareConfig(format="movielens"))


def test_the_installed_command_reads_the_1m_layout(tmp_path: Path) -> None:
    d = write_dat_release(tmp_path / "ml-1m")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "topkrec",
            "prepare",
            "--format",
            "movielens",
            "--input",
            str(d),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert f"users {N_USERS}  items {N_MOVIES}" in r.stdout
    assert Dataset.load(tmp_path / "o").user_features
