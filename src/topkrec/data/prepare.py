"""``topkrec prepare``: raw logs → the dataset directory of DESIGN §1, columnar end to end.

Steps (DESIGN §1; each configurable through :class:`PrepareConfig`):

1. read and validate (``readers``): every bad row is an error naming file, line and value;
2. order events by (user, time, input line) and drop duplicate (user, item, behaviour) rows keeping
   the first — the reference's "sort by time, drop duplicates", with ties broken by input order;
3. optional user sampling by journey length (5 < n ≤ 50 and 50 < n ≤ 200 events), seeded;
4. chronological per-user split, the reference rule: a user with n > 3 events keeps the first
   round((1 − test_size)·n) in train (Python ``round``, half to even) and the rest go to test; users with
   ≤ 3 events stay in train;
5. item indices by descending train frequency (ties by raw id), test items unseen in train → OOV;
   user indices in raw-id order;
6. sessions (``interval``: a gap > ``session_gap`` seconds starts one; ``one``: one per user); the
   train/test boundary always starts a new session, so train returns never include test rewards;
7. rewards from the behaviour→reward map (or a reward column), discounted in-session returns (one γ
   per slate step when the log has a step column, see ``discounted_returns``);
8. user/item features joined by raw id and coded 1-based (0 = unknown); age bucketed
   (<30→1, <40→2, <50→3, else 4).

Everything is NumPy/Polars over whole columns: no Python loop per user or per event (the returns
loop runs over session *positions*, see :func:`topkrec.data.dataset.discounted_returns`).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from topkrec.data.dataset import FORMAT_VERSION, discounted_returns, write_dataset_dir
from topkrec.data.readers import (
    TIME_UNITS,
    EventColumns,
    RawLog,
    apply_time_unit,
    read_events,
    read_movielens,
    read_taobao,
    read_tianchi,
)
from topkrec.errors import DataError, TopkrecError

if TYPE_CHECKING:
    import polars as pl

logger = logging.getLogger(__name__)

Format = Literal["tianchi", "taobao", "movielens", "events"]
FORMATS: tuple[str, ...] = ("tianchi", "taobao", "movielens", "events")
DEFAULT_REWARD: tuple[tuple[str, float], ...] = (("pv", 1.0), ("cart", 2.0), ("fav", 2.0), ("buy", 3.0))
SHORT_BAND = (5, 50)  # 5 < n ≤ 50
LONG_BAND = (50, 200)  # 50 < n ≤ 200
DEFAULT_SAMPLE_SHORT = 60_000
DEFAULT_SAMPLE_LONG = 20_000


@dataclass(frozen=True)
class SamplingConfig:
    """Reference user sampling by journey length (after de-duplication)."""

    short: int = DEFAULT_SAMPLE_SHORT
    """Users drawn with 5 < n ≤ 50 events."""
    long: int = DEFAULT_SAMPLE_LONG
    """Users drawn with 50 < n ≤ 200 events."""
    strict: bool = False
    """True when the sizes were asked for explicitly: asking for more users than a band holds is then
    an error. False for the built-in defaults: a band with fewer users is kept whole, with a warning."""


@dataclass(frozen=True)
class PrepareConfig:
    """Every setting of ``prepare`` (saved in meta.json)."""

    format: Format
    sampling: SamplingConfig | None = None
    """None keeps every user."""
    dedupe: bool = True
    """Drop duplicate (user, item, behaviour) rows, keeping the first in time."""
    test_size: float = 0.2
    session: Literal["interval", "one"] = "interval"
    session_gap: int = 3600
    reward: tuple[tuple[str, float], ...] = DEFAULT_REWARD
    """Behaviour → reward; unused when the data carries a reward column (MovieLens ratings, --reward-col)."""
    gamma: float = 0.99
    seed: int = 0
    skip_bad_rows: bool = False
    columns: EventColumns = field(default_factory=EventColumns)
    """Column mapping of the ``events`` format."""
    time_unit: str = "s"
    """Unit of numeric timestamps: s, ms, us or ns (converted to whole seconds)."""
    context_events: tuple[str, ...] = ()
    """Behaviour labels of context-only rows (organic views, page visits): they enter histories but are never
    training actions nor test targets, and their reward is 0."""

    @property
    def behavior_rewards(self) -> tuple[tuple[str, float], ...]:
        """``reward`` plus each ``context_events`` label it lacks, at 0: a context label needs no --reward entry."""
        given = dict(self.reward)
        return self.reward + tuple((c, 0.0) for c in self.context_events if c not in given)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise TopkrecError(f"unknown --format {self.format!r}; use one of {', '.join(FORMATS)}")
        if not 0.0 <= self.test_size < 1.0:
            raise TopkrecError(f"--test-size must be in [0, 1), got {self.test_size}")
        if self.session not in ("interval", "one"):
            raise TopkrecError(f"--session must be interval or one, got {self.session!r}")
        if self.session_gap <= 0:
            raise TopkrecError(f"--session-gap must be positive seconds, got {self.session_gap}")
        if not 0.0 <= self.gamma <= 1.0:
            raise TopkrecError(f"--gamma must be in [0, 1], got {self.gamma}")
        if self.sampling is not None and (self.sampling.short < 0 or self.sampling.long < 0):
            raise TopkrecError("--sample-short and --sample-long must be ≥ 0")
        if not math.isfinite(self.test_size) or not math.isfinite(self.gamma):
            raise TopkrecError(f"--test-size and --gamma must be finite numbers, got {self.test_size}, {self.gamma}")
        if self.time_unit not in TIME_UNITS:
            raise TopkrecError(f"unknown --time-unit {self.time_unit!r}; use one of {', '.join(TIME_UNITS)}")
        if self.format != "events":
            # The column flags only map the generic events format; elsewhere they would be silently ignored.
            defaults = EventColumns()
            given = [
                f"--{name}-col"
                for name in ("user", "item", "time", "event", "reward", "propensity", "step")
                if getattr(self.columns, name) != getattr(defaults, name)
            ]
            if given:
                one = len(given) == 1
                lacks = [
                    what
                    for flag, what in (("--propensity-col", "logged propensities"), ("--step-col", "slate steps"))
                    if flag in given
                ]
                raise TopkrecError(
                    f"{', '.join(given)} {'maps a column' if one else 'map columns'} of --format events only; the "
                    f"{self.format} format has fixed columns"
                    f"{' and no ' + ' or '.join(lacks) if lacks else ''}: drop "
                    f"{'it' if one else 'them'}, or convert the log to a CSV/Parquet file for --format events"
                )
            layout = self.columns.csv_layout_given
            if layout:
                raise TopkrecError(
                    f"{' and '.join(layout)} describe{'s' if len(layout) == 1 else ''} the CSV file of --format events "
                    f"only; the {self.format} format has a fixed layout: drop {'it' if len(layout) == 1 else 'them'}"
                )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["reward"] = dict(self.reward)
        return out


def parse_reward(spec: str) -> tuple[tuple[str, float], ...]:
    """``"pv=1,cart=2,fav=2,buy=3"`` → (("pv", 1.0), …); a clear error otherwise."""
    pairs: list[tuple[str, float]] = []
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not name or not math.isfinite(number):
            raise TopkrecError(f"--reward {spec!r}: each entry must be behaviour=number, e.g. pv=1,cart=2,fav=2,buy=3")
        pairs.append((name, number))
    if len({n for n, _ in pairs}) != len(pairs):
        raise TopkrecError(f"--reward {spec!r} names a behaviour twice")
    return tuple(pairs)


@dataclass
class Prepared:
    """The prepared dataset as frames, ready to be written by :meth:`save`."""

    events: pl.DataFrame
    users: pl.DataFrame
    items: pl.DataFrame
    user_raw: pl.Series
    item_raw: pl.Series
    meta: dict[str, Any]
    summary: dict[str, Any]

    def save(self, directory: Path) -> None:
        write_dataset_dir(
            Path(directory), self.events, self.users, self.items, self.user_raw, self.item_raw, self.meta, self.summary
        )


# ---------------------------------------------------------------------------------------- helpers
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def dense_codes(values: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """Codes 0..k-1 of ``values`` in sorted order of the distinct values, and those values.

    Integers take a lookup table when their range is moderate (O(n), no sort of n values);
    anything else goes through a sort of the distinct values only.
    """
    import polars as pl

    if values.dtype.is_integer() and values.len() > 0:
        arr = values.to_numpy().astype(np.int64, copy=False)
        lo, hi = int(arr.min()), int(arr.max())
        if hi - lo <= 4 * arr.size + 10_000_000:
            present = np.bincount(arr - lo) > 0
            uniques = np.flatnonzero(present)
            lut = np.cumsum(present) - 1
            return lut[arr - lo], pl.Series(values.name, uniques + lo)
        uniques_np, inverse = np.unique(arr, return_inverse=True)
        return inverse.astype(np.int64), pl.Series(values.name, uniques_np)
    distinct = values.unique().sort()
    codes = values.replace_strict(distinct, pl.int_range(distinct.len(), eager=True), return_dtype=pl.Int64)
    return codes.to_numpy(), distinct


def _stable_order(user: np.ndarray, ts: np.ndarray) -> np.ndarray | None:
    """Permutation sorting by (user, ts) stably (input order breaks ties); None when already sorted."""
    if user.size < 2:
        return None
    du = np.diff(user)
    if not (du < 0).any() and not ((du == 0) & (np.diff(ts) < 0)).any():
        return None
    t0, span = int(ts.min()), int(ts.max()) - int(ts.min()) + 1
    if (int(user.max()) + 1) * span < 2**62:
        return np.argsort(user * span + (ts - t0), kind="stable")
    return np.lexsort((ts, user))


def _first_occurrences(user: np.ndarray, item: np.ndarray, beh: np.ndarray, n_item: int, n_beh: int) -> np.ndarray:
    """Mask of rows whose (user, item, behaviour) has not appeared in an earlier row."""
    if user.size == 0:
        return np.ones(0, dtype=bool)
    if (int(user.max()) + 1) * n_item * n_beh < 2**62:
        key = (user * n_item + item) * n_beh + beh
        order = np.argsort(key, kind="stable")  # rows come user-sorted, so timsort sees long runs
        k = key[order]
        first_sorted = np.r_[True, k[1:] != k[:-1]]
    else:
        order = np.lexsort((beh, item, user))
        changed = (np.diff(user[order]) != 0) | (np.diff(item[order]) != 0) | (np.diff(beh[order]) != 0)
        first_sorted = np.r_[True, changed]
    keep = np.empty(user.size, dtype=bool)
    keep[order] = first_sorted
    return keep


def _feature_code(col: pl.Expr) -> pl.Expr:
    """Raw values → 1-based dense codes in sorted order, 0 for missing."""
    import polars as pl

    return col.rank("dense").cast(pl.Int32).fill_null(0)


def _age_bucket(col: pl.Expr) -> pl.Expr:
    """The reference's age buckets: <30→1, <40→2, <50→3, else 4 (0 = unknown)."""
    import polars as pl

    return (
        pl.when(col.is_null())
        .then(0)
        .when(col < 30)
        .then(1)
        .when(col < 40)
        .then(2)
        .when(col < 50)
        .then(3)
        .otherwise(4)
        .cast(pl.Int32)
    )


def _sample_users(
    counts: np.ndarray, sampling: SamplingConfig, seed: int, warnings: list[str]
) -> tuple[np.ndarray, dict[str, Any]]:
    """Boolean mask over user codes of the users kept by reference sampling."""
    rng = np.random.default_rng(seed)
    chosen = np.zeros(counts.size, dtype=bool)
    info: dict[str, Any] = {}
    bands = (
        ("short", SHORT_BAND, sampling.short, "--sample-short"),
        ("long", LONG_BAND, sampling.long, "--sample-long"),
    )
    available = {name: np.flatnonzero((counts > lo) & (counts <= hi)) for name, (lo, hi), _, _ in bands}
    for name, (lo, hi), asked, flag in bands:
        pool = available[name]
        if asked > pool.size:
            if sampling.strict:
                raise DataError(
                    f"{flag} {asked} asks for more users than exist: the data has {available['short'].size} users "
                    f"with {SHORT_BAND[0]} < n ≤ {SHORT_BAND[1]} events and {available['long'].size} with "
                    f"{LONG_BAND[0]} < n ≤ {LONG_BAND[1]}; pass {flag} {pool.size} or fewer, or --no-sample to keep "
                    "every user"
                )
            warnings.append(
                f"sampling: only {pool.size} users have {lo} < n ≤ {hi} events (default {flag} {asked}); keeping all "
                f"of them (pass {flag} N to choose, or --no-sample to keep every user)"
            )
        take = min(asked, pool.size)
        picked = rng.choice(pool, size=take, replace=False) if take < pool.size else pool
        chosen[picked] = True
        info[name] = {"band": [lo, hi], "asked": asked, "available": int(pool.size), "kept": int(take)}
    outside = (counts > 0) & ((counts <= SHORT_BAND[0]) | (counts > LONG_BAND[1]))
    info["users_outside_bands"] = int(outside.sum())
    return chosen, info


def chronological_split(user: np.ndarray, test_size: float) -> tuple[np.ndarray, int]:
    """Test mask for user-contiguous, time-ordered events, the reference rule (DESIGN §1 step 4): a user
    with n > 3 events keeps the first round((1 − test_size)·n) in train — Python ``round`` of the same
    float64 product, half to even (``np.rint`` rounds exactly so) — and the rest go to test; users with
    ≤ 3 events stay wholly in train. Also returns the number of users with test events."""
    n = user.size
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    lengths = np.diff(np.r_[starts, n])
    n_train = np.rint((1.0 - test_size) * lengths).astype(np.int64)
    n_test = np.where(lengths > 3, lengths - n_train, 0).astype(np.int64)
    pos = np.arange(n) - np.repeat(starts, lengths)
    return pos >= np.repeat(lengths - n_test, lengths), int((n_test > 0).sum())


def items_by_train_frequency(item_code: np.ndarray, is_test: np.ndarray, n_codes: int) -> tuple[np.ndarray, np.ndarray]:
    """Item index of every event (0 = most frequent in train, ties by raw id; n_items = OOV for items
    never in train), and the raw-id code of each index."""
    train_counts = np.bincount(item_code[~is_test], minlength=n_codes)
    in_train = np.flatnonzero(train_counts > 0)
    by_freq = in_train[np.lexsort((in_train, -train_counts[in_train]))]
    index_of_code = np.full(n_codes, by_freq.size, dtype=np.int64)
    index_of_code[by_freq] = np.arange(by_freq.size)
    return index_of_code[item_code], by_freq


def sessions(user: np.ndarray, ts: np.ndarray, is_test: np.ndarray, mode: str, gap: int) -> np.ndarray:
    """Global session index, non-decreasing in event order. A new session starts at each user's first
    event, at their first test event (so train returns never see test rewards) and, in ``interval``
    mode, after more than ``gap`` seconds of inactivity."""
    new_session = np.r_[True, (user[1:] != user[:-1]) | (is_test[1:] & ~is_test[:-1])]
    if mode == "interval":
        new_session[1:] |= np.diff(ts) > gap
    return np.cumsum(new_session) - 1


def feature_table(key: str, raw_ids: pl.Series, features: pl.DataFrame | None) -> pl.DataFrame:
    """One row per index (``key`` = 0..n-1, in the order of ``raw_ids``) with the features of
    ``features`` (keyed by raw id in column ``key``) coded 1-based, 0 = unknown; ``age`` is bucketed."""
    import polars as pl

    table = pl.DataFrame({key: np.arange(raw_ids.len(), dtype=np.int32), "_raw": raw_ids})
    if features is None:
        return table.drop("_raw")
    joined = table.join(features.rename({key: "_raw"}), on="_raw", how="left", maintain_order="left")
    cols = [c for c in features.columns if c != key]
    return joined.select(
        key, *[(_age_bucket(pl.col(c)) if c == "age" else _feature_code(pl.col(c))).alias(c) for c in cols]
    )


# ---------------------------------------------------------------------------------------- main
def _user_steps(
    user: np.ndarray, raw_step: np.ndarray, lines: pl.Series, keep: np.ndarray, order: np.ndarray | None, src: str
) -> np.ndarray:
    """The ``--step-col`` values as each user's step counted from their first (int32), checked to be
    non-decreasing within a user in time order; gaps are kept (they count in the discount)."""
    raw_step = raw_step.astype(np.int64)
    first_of_user = np.r_[True, user[1:] != user[:-1]]
    back = np.flatnonzero(~first_of_user & (np.r_[0, np.diff(raw_step)] < 0))
    if back.size:
        input_rows = np.arange(lines.len()) if order is None else order
        line = lines[int(input_rows[np.flatnonzero(keep)][back[0]])]
        where = "row" if src.endswith((".parquet", ".pq")) else "line"
        raise DataError(
            f"{src} {where} {line}: step {int(raw_step[back[0]])} is smaller than the user's step before it "
            f"({int(raw_step[back[0] - 1])}) in time order ({back.size} such rows); --step-col must be "
            "non-decreasing within a user (the rows of one slate share a step)"
        )
    user_first = np.maximum.accumulate(np.where(first_of_user, np.arange(user.size), 0))
    rel = raw_step - raw_step[user_first]
    if rel.size and rel.max() > np.iinfo(np.int32).max:
        raise DataError(f"{src}: --step-col spans more than 2^31 steps within one user; number the steps per user")
    return rel.astype(np.int32)


def read_raw(input_path: Path, cfg: PrepareConfig) -> RawLog:
    """Read the raw files of ``cfg.format`` (a clear DataError for anything missing or malformed)."""
    input_path = Path(input_path)
    if not input_path.exists():
        raise DataError(f"--input {input_path} not found")
    if cfg.format == "tianchi":
        raw = read_tianchi(input_path, cfg.skip_bad_rows, cfg.behavior_rewards)
    elif cfg.format == "taobao":
        raw = read_taobao(input_path, cfg.skip_bad_rows, cfg.behavior_rewards)
    elif cfg.format == "movielens":
        raw = read_movielens(input_path, cfg.skip_bad_rows)
    else:
        raw = read_events(input_path, cfg.columns, cfg.skip_bad_rows, cfg.behavior_rewards)
    return apply_time_unit(raw, cfg.time_unit, cfg.skip_bad_rows)


def _context_rows(
    beh_code: np.ndarray, labels: list[str], context_events: tuple[str, ...], src: str
) -> np.ndarray | None:
    """(E,) bool context-only rows of ``--context-events`` (None when none were asked for)."""
    if not context_events:
        return None
    unknown = [c for c in context_events if c not in labels]
    if unknown:
        raise DataError(
            f"{src}: --context-events {', '.join(unknown)} match no behaviour of the log "
            f"(its behaviours: {', '.join(labels)})"
        )
    codes = np.array([labels.index(c) for c in context_events])
    return np.isin(beh_code, codes)


def prepare(input_path: Path, cfg: PrepareConfig) -> tuple[Prepared, list[str]]:
    """Run every preparation step on the raw files at ``input_path``; returns the dataset and warnings."""
    import polars as pl

    timings: dict[str, float] = {}
    t = time.perf_counter()
    warnings: list[str] = []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        raw = read_raw(Path(input_path), cfg)
        hashes = {str(p.name): pool.submit(_sha256, p) for p in raw.files}
        timings["read"] = time.perf_counter() - t
        logger.info("prepare: %s took %.2f s", "read", timings["read"])
        ev = raw.events
        src = str(raw.files[0])
        warnings.extend(raw.warnings)
        if raw.bad_rows:
            warnings.append(f"skipped {raw.bad_rows} bad rows (first: {raw.first_bad})")
        if ev.height == 0:
            raise DataError(f"{src} holds no events")
        n_raw = ev.height

        # ---------------------------------------------------------------- behaviours and rewards
        t = time.perf_counter()
        has_reward_col = "reward" in ev.columns
        if "behavior" not in ev.columns:
            ev = ev.with_columns(pl.lit("event").alias("behavior"))
        reward_map = dict(cfg.behavior_rewards)
        if isinstance(ev.schema["behavior"], pl.Enum):  # read as one of the --reward labels
            labels: list[str] = list(ev.schema["behavior"].categories)  # type: ignore[attr-defined]
            beh_code = ev["behavior"].to_physical().to_numpy().astype(np.int64)
        else:
            labels = ev["behavior"].cast(pl.String).unique().sort().to_list()
            if not has_reward_col:
                unknown = [b for b in labels if b not in reward_map]
                if unknown:
                    row = ev.filter(pl.col("behavior").is_in(unknown)).row(0, named=True)
                    where = "row" if src.endswith((".parquet", ".pq")) else "line"
                    raise DataError(
                        f"{src} {where} {row['_line']}: unknown behaviour {row['behavior']!r} (known: "
                        f"{', '.join(reward_map)}); give it a reward with --reward "
                        f"{','.join(f'{k}={v:g}' for k, v in reward_map.items())},{row['behavior']}=1 or fix the file"
                    )
            beh_code = ev["behavior"].cast(pl.String).cast(pl.Enum(labels)).to_physical().to_numpy().astype(np.int64)
        if has_reward_col:
            reward_all = ev["reward"].to_numpy().astype(np.float32)
        else:
            table = np.array([reward_map[b] for b in labels], dtype=np.float32)
            reward_all = table[beh_code]

        # ---------------------------------------------------------------- order + dedupe
        user_code, user_uniques = dense_codes(ev["user"])
        item_code, item_uniques = dense_codes(ev["item"])
        ts = ev["ts"].to_numpy().astype(np.int64)
        extra = {c: ev[c].to_numpy() for c in ("propensity", "category", "step") if c in ev.columns}
        if "propensity" in extra:
            p = extra["propensity"]
            bad_p = np.flatnonzero(~np.isfinite(p) | (p <= 0) | (p > 1))
            if bad_p.size:
                line = ev["_line"][int(bad_p[0])]
                raise DataError(
                    f"{src} {'row' if src.endswith(('.parquet', '.pq')) else 'line'} {line}: propensity "
                    f"{float(p[bad_p[0]])!r} is not a probability in (0, 1] ({bad_p.size} such rows); fix the logging "
                    "propensities or drop --propensity-col"
                )
        order = _stable_order(user_code, ts)
        if order is not None:
            user_code, item_code, ts = user_code[order], item_code[order], ts[order]
            beh_code, reward_all = beh_code[order], reward_all[order]
            extra = {k: v[order] for k, v in extra.items()}
        timings["order"] = time.perf_counter() - t
        logger.info("prepare: %s took %.2f s", "order", timings["order"])
        t = time.perf_counter()
        keep = (
            _first_occurrences(user_code, item_code, beh_code, item_uniques.len(), len(labels))
            if cfg.dedupe
            else np.ones(user_code.size, dtype=bool)
        )
        n_duplicates = int(user_code.size - keep.sum())

        # ---------------------------------------------------------------- sampling
        sampling_info: dict[str, Any] | None = None
        if cfg.sampling is not None:
            counts = np.bincount(user_code[keep], minlength=user_uniques.len())
            chosen, sampling_info = _sample_users(counts, cfg.sampling, cfg.seed, warnings)
            keep &= chosen[user_code]
        n_kept = int(keep.sum())
        if n_kept == 0:
            if sampling_info is not None:
                sh, lo = sampling_info["short"], sampling_info["long"]
                raise DataError(
                    f"{src}: no events left after sampling (kept {sh['kept']} of {sh['available']} users with "
                    f"5 < n ≤ 50 events and {lo['kept']} of {lo['available']} with 50 < n ≤ 200); raise "
                    "--sample-short/--sample-long or pass --no-sample"
                )
            raise DataError(f"{src}: no events left after filtering")
        user_code, item_code, ts = user_code[keep], item_code[keep], ts[keep]
        beh_code, reward = beh_code[keep], reward_all[keep]
        context = _context_rows(beh_code, labels, cfg.context_events, src)
        if context is not None:
            reward = np.where(context, np.float32(0.0), reward).astype(reward.dtype)
        extra = {k: v[keep] for k, v in extra.items()}
        timings["dedupe_sample"] = time.perf_counter() - t
        logger.info("prepare: %s took %.2f s", "dedupe_sample", timings["dedupe_sample"])

        # ---------------------------------------------------------------- users, split
        t = time.perf_counter()
        present_users = np.bincount(user_code, minlength=user_uniques.len()) > 0
        user_index_of_code = np.cumsum(present_users) - 1
        user = user_index_of_code[user_code]
        user_raw = user_uniques.filter(pl.Series(present_users))
        n_users = int(present_users.sum())
        n = user.size
        is_test, users_in_test = chronological_split(user, cfg.test_size)
        item, by_freq = items_by_train_frequency(item_code, is_test, item_uniques.len())
        n_items = int(by_freq.size)
        if n_items == 0:
            raise DataError(f"{src}: no training events left (every user is in test); lower --test-size")
        item_raw = item_uniques.gather(by_freq)
        session = sessions(user, ts, is_test, cfg.session, cfg.session_gap)
        step = _user_steps(user, extra["step"], ev["_line"], keep, order, src) if "step" in extra else None
        returns = discounted_returns(reward, session, cfg.gamma, step=step)
        timings["split_ids_sessions_returns"] = time.perf_counter() - t
        logger.info("prepare: %s took %.2f s", "split_ids_sessions_returns", timings["split_ids_sessions_returns"])

        # ---------------------------------------------------------------- features
        t = time.perf_counter()
        users_df = feature_table("user", user_raw, raw.user_features)
        item_features = raw.item_features
        if "category" in extra:  # Taobao: the category comes with each event; take the item's first
            zeros = np.zeros_like(item_code)
            first = np.flatnonzero(_first_occurrences(item_code, zeros, zeros, 1, 1))
            item_features = pl.DataFrame(
                {"item": item_uniques.gather(item_code[first]), "category": extra["category"][first]}
            )
        items_df = feature_table("item", item_raw, item_features)

        # ---------------------------------------------------------------- frames, summary, meta
        label_series = pl.Series("behavior", labels, dtype=pl.String)
        columns: dict[str, Any] = {
            "user": pl.Series("user", user.astype(np.int32)),
            "item": pl.Series("item", item.astype(np.int32)),
            "behavior": label_series.gather(beh_code),
            "reward": pl.Series("reward", reward.astype(np.float32)),
            "ts": pl.Series("ts", ts),
            "session": pl.Series("session", session.astype(np.int32)),
            "split": pl.Series("split", ["train", "test"]).gather(is_test.astype(np.uint32)),
            "return": pl.Series("return", returns.astype(np.float32)),
        }
        if "propensity" in extra:
            columns["propensity"] = pl.Series("propensity", extra["propensity"].astype(np.float64))
        if step is not None:
            columns["step"] = pl.Series("step", step.astype(np.int32))
        if context is not None:
            columns["context"] = pl.Series("context", context)
        events = pl.DataFrame(list(columns.values()))
        beh_counts = np.bincount(beh_code, minlength=len(labels))
        summary: dict[str, Any] = {
            "n_users": n_users,
            "n_items": n_items,
            "n_events": int(n),
            "n_train_events": int((~is_test).sum()),
            "n_test_events": int(is_test.sum()),
            "n_oov_test_events": int((is_test & (item == n_items)).sum()),
            "n_sessions": int(session[-1]) + 1,
            "behavior_counts": {lab: int(c) for lab, c in zip(labels, beh_counts, strict=True) if c > 0},
            "n_raw_events": n_raw,
            "n_duplicates_dropped": n_duplicates,
            "n_bad_rows_skipped": raw.bad_rows,
            "n_users_in_test": users_in_test,
        }
        timings["features_frames"] = time.perf_counter() - t
        logger.info("prepare: %s took %.2f s", "features_frames", timings["features_frames"])
        meta: dict[str, Any] = {
            "source_format": cfg.format,
            "input": str(Path(input_path).resolve()),
            "input_sha256": {name: fut.result() for name, fut in hashes.items()},
            "config": cfg.to_json(),
            "gamma": cfg.gamma,
            "behaviors": labels,
            "reward_map": None if has_reward_col else {b: reward_map[b] for b in labels},
            "reward_source": "column" if has_reward_col else "behavior_map",
            "sampling": sampling_info,
            "has_propensity": "propensity" in extra,
            "has_step": step is not None,
            "context_events": list(cfg.context_events),
            "ts_min": int(ts.min()),
            "ts_max": int(ts.max()),
            "prepare_seconds": {k: round(v, 3) for k, v in timings.items()},
            "format_version": FORMAT_VERSION,
        }
        for w in warnings:
            logger.info("warning: %s", w)
        return Prepared(events, users_df, items_df, user_raw, item_raw, meta, summary), warnings
    finally:
        pool.shutdown(wait=True)
