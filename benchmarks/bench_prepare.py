"""Benchmark ``topkrec prepare`` against the reference pipeline's pandas preparation (issue 2, item 7).

    python benchmarks/bench_prepare.py                 # 5 M synthetic events (the goal's size)
    python benchmarks/bench_prepare.py --events 200000 # a quick run

1. ``topkrec synth`` writes a synthetic Tianchi log of about ``--events`` events.
2. Ours: ``python -m topkrec prepare --format tianchi --no-sample`` end to end in a fresh process
   (start-up, reading, dedupe, features, split, ids, sessions, returns, Parquet + maps + meta).
3. The reference's own steps as it writes them in pandas, also in a fresh process: read the three
   CSVs, sort by time, drop duplicates, two merges, age bucketing with ``apply``, sort by time, CSV
   write. (It does less than we do: no split, sessions, returns or id maps.)

Both see the same (shared, possibly busy) machine in the same run; the ratio is what to compare.
Peak memory is each process's maximum resident set size. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEAN_EVENTS_PER_USER = 55.2  # synth's log-uniform journeys over [6, 200], measured
GOAL_SPEEDUP = 3.0
GOAL_PEAK_MB = 4096


def reference_prepare(raw: Path, out_csv: Path) -> int:
    """The reference pipeline's preparation steps, written as it writes them (pandas)."""
    import pandas as pd

    behavior = pd.read_csv(raw / "user_behavior.csv", header=None, names=["user", "item", "behavior", "time"])
    user = pd.read_csv(raw / "user.csv", header=None, names=["user", "sex", "age", "pur_power"])
    item = pd.read_csv(raw / "item.csv", header=None, names=["item", "category", "shop", "brand"])
    behavior = behavior.sort_values("time")
    behavior = behavior.drop_duplicates(["user", "item", "behavior"], keep="first")
    df = behavior.merge(user, on="user", how="left")
    df = df.merge(item, on="item", how="left")
    df["age"] = df["age"].apply(lambda x: 1 if x < 30 else 2 if x < 40 else 3 if x < 50 else 4)
    df = df.sort_values("time")
    df.to_csv(out_csv, index=False)
    return len(df)


def timed_child(cmd: list[str]) -> tuple[float, float, str]:
    """Run ``cmd``; return (wall seconds, peak RSS in MB, stdout). Uses /usr/bin/time -v when present."""
    gnu_time = shutil.which("time") if Path("/usr/bin/time").exists() else None
    full = ["/usr/bin/time", "-v", *cmd] if gnu_time else cmd
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    r = subprocess.run(full, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.stderr.write(r.stderr)
        raise SystemExit(f"command failed ({r.returncode}): {' '.join(cmd)}")
    peak_kb = 0
    for line in r.stderr.splitlines():
        if "Maximum resident set size" in line:
            peak_kb = int(line.split(":")[1])
    if not peak_kb:  # no GNU time: the children's max RSS (only meaningful when it grew)
        peak_kb = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)
    return wall, peak_kb / 1024, r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=5_000_000, help="approximate synthetic events (default 5 M)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each side, interleaved; best time counts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the files here instead of a temp dir")
    ap.add_argument("--run-reference", nargs=2, metavar=("RAW", "OUT_CSV"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_reference:
        n = reference_prepare(Path(args.run_reference[0]), Path(args.run_reference[1]))
        print(n)
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_prepare."))
    work.mkdir(parents=True, exist_ok=True)
    raw, out, ref_csv = work / "raw", work / "dataset", work / "reference.csv"
    users = max(10, round(args.events / MEAN_EVENTS_PER_USER))
    items = max(100, args.events // 25)
    t = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "topkrec",
            "synth",
            "--out",
            str(raw),
            "--users",
            str(users),
            "--items",
            str(items),
            "--seed",
            str(args.seed),
            "--force",
        ],
        check=True,
    )
    synth_s = time.perf_counter() - t
    n_raw = sum(1 for _ in (raw / "user_behavior.csv").open("rb"))
    ours_cmd = [
        sys.executable,
        "-m",
        "topkrec",
        "--no-progress",
        "prepare",
        "--format",
        "tianchi",
        "--input",
        str(raw),
        "--out",
        str(out),
        "--no-sample",
        "--force",
    ]
    ref_cmd = [sys.executable, __file__, "--run-reference", str(raw), str(ref_csv)]
    ours: list[tuple[float, float]] = []
    ref: list[tuple[float, float]] = []
    n_ref = 0
    for _ in range(args.repeats):
        wall, peak, _ = timed_child(ours_cmd)
        ours.append((wall, peak))
        wall, peak, stdout = timed_child(ref_cmd)
        ref.append((wall, peak))
        n_ref = int(stdout.strip().splitlines()[-1])
    summary = json.loads((out / "summary.json").read_text())
    ours_s, ref_s = min(w for w, _ in ours), min(w for w, _ in ref)
    result = {
        "benchmark": "prepare",
        "n_raw_events": n_raw,
        "n_events_out": summary["n_events"],
        "n_reference_rows_out": n_ref,
        "synth_seconds": round(synth_s, 2),
        "ours_seconds": round(ours_s, 3),
        "reference_seconds": round(ref_s, 3),
        "ours_events_per_s": round(n_raw / ours_s),
        "reference_events_per_s": round(n_raw / ref_s),
        "speedup": round(ref_s / ours_s, 2),
        "ours_peak_rss_mb": round(max(p for _, p in ours), 1),
        "reference_peak_rss_mb": round(max(p for _, p in ref), 1),
        "goal_speedup": GOAL_SPEEDUP,
        "goal_peak_mb": GOAL_PEAK_MB,
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    result["meets_goal"] = result["speedup"] >= GOAL_SPEEDUP and result["ours_peak_rss_mb"] < GOAL_PEAK_MB
    print(f"raw events          {n_raw}")
    print(
        f"ours (topkrec)      {ours_s:8.2f} s  {result['ours_events_per_s']:>10} events/s  "
        f"peak {result['ours_peak_rss_mb']} MB"
    )
    print(
        f"reference (pandas)  {ref_s:8.2f} s  {result['reference_events_per_s']:>10} events/s  "
        f"peak {result['reference_peak_rss_mb']} MB"
    )
    print(f"speedup             {result['speedup']}x (goal ≥ {GOAL_SPEEDUP}x, peak < {GOAL_PEAK_MB} MB)")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
