"""Silent corruption in ``prepare`` (issue 14 item 5): every case either keeps the data's meaning or is
refused with a message naming the line/row, the value and what to pass."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from topkrec.data.dataset import Dataset
from topkrec.data.prepare import PrepareConfig, prepare
from topkrec.data.readers import EventColumns
from topkrec.data.synth import SynthConfig, generate, write_tianchi
from topkrec.errors import DataError, TopkrecError
from topkrec.io import atomic_dir

EVENTS = EventColumns(user="user", item="item", time="ts", reward="reward")


def events_cfg(**kw: object) -> PrepareConfig:
    return PrepareConfig(format="events", columns=EVENTS, **kw)  # type: ignore[arg-type]


def load(prepared_and_warnings: tuple, out: Path) -> Dataset:
    prepared, _ = prepared_and_warnings
    with atomic_dir(out, force=True) as tmp:
        prepared.save(tmp)
    return Dataset.load(out)


def events_frame(users: list, n_per_user: int = 4, t0: int = 1_511_000_000) -> pl.DataFrame:
    rows = [(u, f"i{(k * 7 + j) % 11}", t0 + 60 * j, 1.0) for k, u in enumerate(users) for j in range(n_per_user)]
    return pl.DataFrame(rows, schema=["user", "item", "ts", "reward"], orient="row")


# ------------------------------------------------------------------------------------------ float user ids
def test_float_ids_that_are_not_whole_numbers_are_refused_not_merged(tmp_path: Path) -> None:
    ids = [k + f for k in range(150) for f in (0.2, 0.7)]  # 300 users; casting to int would leave 150
    path = tmp_path / "log.parquet"
    events_frame(ids).write_parquet(path)
    with pytest.raises(DataError, match=r"log.parquet row 1: column 'user' holds the id 0.2, not a whole number"):
        prepare(path, events_cfg())


def test_float_ids_as_csv_text_keep_their_identity(tmp_path: Path) -> None:
    ids = [f"{k + f}" for k in range(150) for f in (0.2, 0.7)]
    path = tmp_path / "log.csv"
    events_frame(ids).write_csv(path)
    ds = load(prepare(path, events_cfg()), tmp_path / "ds")
    assert ds.n_users == 300
    assert ds.user_raw is not None and set(ds.user_raw) == set(ids)


def test_integral_float_ids_with_one_nan_stay_integers(tmp_path: Path) -> None:
    ids: list[float] = [float(u) for u in range(100, 400)]
    frame = events_frame(ids).with_columns(
        pl.when(pl.int_range(pl.len()) == 9).then(float("nan")).otherwise(pl.col("user")).alias("user")
    )
    path = tmp_path / "log.parquet"
    frame.write_parquet(path)
    with pytest.raises(DataError, match=r"log.parquet row 10: column 'user' value nan is missing"):
        prepare(path, events_cfg())
    prepared, warnings = prepare(path, events_cfg(skip_bad_rows=True))
    assert prepared.summary["n_bad_rows_skipped"] == 1 and "row 10" in " ".join(warnings)
    raw = prepared.user_raw.cast(pl.String).to_list()
    assert len(raw) == 300 and "107" in raw and not any("." in r for r in raw)  # never "107.0"
    assert prepared.user_raw.dtype.is_integer()


def test_csv_ids_written_as_floats_by_pandas_are_read_as_integers(tmp_path: Path) -> None:
    # pandas writes an integer column that holds a NaN as floats: "107.0", and "" for the NaN.
    lines = ["user,item,ts,reward"] + [
        f"{u}.0,{i}.0,{1_511_000_000 + 60 * j},1"
        for u in (107, 108)
        for i, j in zip((1, 2, 3, 4), range(4), strict=True)
    ]
    lines.append(",5.0,1511000999,1")
    path = tmp_path / "log.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"log.csv line 10: column 'user' value None is missing"):
        prepare(path, events_cfg())
    prepared, warnings = prepare(path, events_cfg(skip_bad_rows=True))
    assert prepared.user_raw.to_list() == [107, 108]
    assert prepared.item_raw.dtype.is_integer() and set(prepared.item_raw.to_list()) <= {1, 2, 3, 4}
    assert any("'107.0'" in w and "read as integers" in w for w in warnings)


# ------------------------------------------------------------------------------------------ timestamps
def write_taobao(d: Path, n_users: int = 40) -> Path:
    logs = generate(SynthConfig(n_users=n_users, n_items=80, seed=3))
    beh = np.array(["pv", "cart", "fav", "buy"])[logs.ev_behavior]
    frame = pl.DataFrame(
        {
            "user": logs.ev_user,
            "item": logs.ev_item,
            "category": logs.ev_item % 7,
            "behavior": beh,
            "ts": logs.ev_time,
        }
    )
    path = d / "UserBehavior.csv"
    frame.write_csv(path, include_header=False)
    return path


def test_taobao_file_cut_mid_timestamp_is_a_bad_line(tmp_path: Path) -> None:
    path = write_taobao(tmp_path)
    lines = path.read_text().splitlines()
    cut = lines[0].rsplit(",", 1)[0] + "," + lines[0].rsplit(",", 1)[1][:3]  # "…,pv,151": cut mid-timestamp
    path.write_text("\n".join([*lines, cut]) + "\n")
    n = len(lines) + 1
    with pytest.raises(DataError, match=rf"UserBehavior.csv line {n}: ts \d{{3}} is far from the other timestamps"):
        prepare(path, PrepareConfig(format="taobao"))
    prepared, warnings = prepare(path, PrepareConfig(format="taobao", skip_bad_rows=True))
    assert prepared.summary["n_bad_rows_skipped"] == 1 and f"line {n}" in warnings[-1]
    assert prepared.meta["ts_min"] > 1_000_000_000


def test_real_taobao_sample_cut_mid_timestamp(taobao4k: Path, tmp_path: Path) -> None:
    text = taobao4k.read_text().rstrip("\n")
    cut = tmp_path / "UserBehavior.csv"
    cut.write_text(text[: len(text) - 7] + "\n")  # the last line loses its last 7 digits
    n = text.count("\n") + 1
    with pytest.raises(DataError, match=rf"line {n}: ts \d+ is far from the other timestamps"):
        prepare(cut, PrepareConfig(format="taobao"))


@pytest.mark.parametrize(("factor", "unit"), [(1000, "ms"), (1_000_000, "us")])
def test_timestamps_in_another_unit_are_refused_with_the_flag_to_pass(tmp_path: Path, factor: int, unit: str) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    write_tianchi(generate(SynthConfig(n_users=60, n_items=100, seed=0)), raw)
    seconds = prepare(raw, PrepareConfig(format="tianchi", sampling=None))[0]
    beh = pl.read_csv(raw / "user_behavior.csv", has_header=False, new_columns=["u", "i", "b", "t"])
    beh.with_columns(pl.col("t") * factor).write_csv(raw / "user_behavior.csv", include_header=False)
    with pytest.raises(
        DataError, match=rf"look like {'milli' if unit == 'ms' else 'micro'}seconds.*--time-unit {unit}"
    ):
        prepare(raw, PrepareConfig(format="tianchi", sampling=None))
    converted = prepare(raw, PrepareConfig(format="tianchi", sampling=None, time_unit=unit))[0]
    assert converted.summary == seconds.summary  # same sessions (13 834 vs 1 756 in the run)
    assert converted.events.equals(seconds.events)
    wrong = "ns" if unit == "ms" else "ms"
    with pytest.raises(
        DataError, match=rf"look like {'milli' if unit == 'ms' else 'micro'}seconds.*pass --time-unit {unit}"
    ):
        prepare(raw, PrepareConfig(format="tianchi", sampling=None, time_unit=wrong))
    beh.write_csv(raw / "user_behavior.csv", include_header=False)  # seconds again
    with pytest.raises(DataError, match="look like seconds, not .*drop --time-unit"):
        prepare(raw, PrepareConfig(format="tianchi", sampling=None, time_unit=unit))


def test_fractional_event_timestamps_are_floored_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,item,ts,reward\n1,a,1511569589.5,1\n1,b,1511569590.25,0\n1,c,1511569600,1\n")
    prepared, warnings = prepare(path, events_cfg())
    assert prepared.events["ts"].to_list() == [1511569589, 1511569590, 1511569600]
    assert any("fractional timestamps" in w for w in warnings)


# ------------------------------------------------------------------------------------------ rewards
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_non_finite_ratings_are_bad_lines(tmp_path: Path, bad: str) -> None:
    d = tmp_path / "ml"
    d.mkdir()
    rows = [f"{u},{m},{(u + m) % 5 + 1}.0,{964_982_703 + 10 * m}" for u in (1, 2) for m in range(1, 7)]
    rows[4] = rows[4].rsplit(",", 2)[0] + f",{bad}," + rows[4].rsplit(",", 1)[1]
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=rf"ratings.csv line 6: reward '{bad}' is not a finite number"):
        prepare(d, PrepareConfig(format="movielens"))
    prepared, _ = prepare(d, PrepareConfig(format="movielens", skip_bad_rows=True))
    assert prepared.summary["n_bad_rows_skipped"] == 1 and prepared.summary["n_events"] == 11
    assert np.isfinite(prepared.events["return"].to_numpy()).all()


def test_non_finite_reward_column_is_a_bad_row(tmp_path: Path) -> None:
    frame = events_frame([1, 2]).with_columns(
        pl.when(pl.int_range(pl.len()) == 2).then(math.inf).otherwise(pl.col("reward")).alias("reward")
    )
    path = tmp_path / "log.parquet"
    frame.write_parquet(path)
    with pytest.raises(DataError, match=r"log.parquet row 3: column 'reward' value inf is not a finite number"):
        prepare(path, events_cfg())


# ------------------------------------------------------------------------------------------ ignored flags
@pytest.mark.parametrize(
    ("fmt", "columns", "flag"),
    [
        ("tianchi", EventColumns(propensity="p"), "--propensity-col"),
        ("taobao", EventColumns(user="uid"), "--user-col"),
        ("movielens", EventColumns(reward="r"), "--reward-col"),
        ("movielens", EventColumns(step="s"), "--step-col"),
        ("taobao", EventColumns(step="s"), "--step-col"),
    ],
)
def test_event_column_flags_are_refused_for_fixed_formats(fmt: str, columns: EventColumns, flag: str) -> None:
    with pytest.raises(TopkrecError, match=f"{flag} maps a column of --format events only"):
        PrepareConfig(format=fmt, columns=columns)  # type: ignore[arg-type]


def test_propensity_col_for_tianchi_through_the_cli(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    write_tianchi(generate(SynthConfig(n_users=20, n_items=40, seed=0)), raw)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "topkrec",
            "prepare",
            "--format",
            "tianchi",
            "--input",
            str(raw),
            "--out",
            str(tmp_path / "ds"),
            "--propensity-col",
            "p",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.startswith("error: --propensity-col") and "no logged propensities" in r.stderr
    assert not (tmp_path / "ds").exists()


def test_ids_with_leading_zeros_stay_text(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    events_frame(["007", "7", "+7", "12"]).write_csv(path)  # polars writes them as the strings given
    prepared, _ = prepare(path, events_cfg())
    assert prepared.summary["n_users"] == 4
    assert sorted(prepared.user_raw.to_list()) == ["+7", "007", "12", "7"]
