"""The learner's quality on real held-out logs and synthetic data, as a user runs it (issue 12).

    python benchmarks/bench_quality.py [--datasets movielens,taobao,synthetic] [--corrections none,is,topk]
                                       [--no-seed-preset] [--no-sasrec] [--sweep] [--pretrained] [--work DIR]
                                       [--synth-users N --synth-items N --epochs N --max-steps N]  # smaller
    python benchmarks/bench_quality.py --data ml-1m=DIR [--data NAME=DIR ...]   # your own prepared datasets

``--data NAME=DIR`` adds a dataset directory that ``topkrec prepare`` wrote (any log, e.g. ``prepare --format
movielens --input ml-1m``) under NAME; given alone, the benchmark runs only those (``--datasets`` may mix them
with the built-in names).

For each dataset, through the installed ``topkrec`` command (one subprocess per stage, as a user runs it):

1. ``prepare`` (``movielens``: ``../shared/data/movielens-latest-small``; ``taobao``: the 84 k-row Taobao
   sample with ``--skip-bad-rows``; ``synthetic``: ``topkrec synth`` then ``prepare --format tianchi
   --no-sample``);
2. ``train`` with every default, once per ``--corrections`` entry, then ``evaluate --json``: π of each
   correction, and from the first run the baselines popularity, recent (the user's history, newest first)
   and β̂ (behaviour cloning with the same encoder — the supervised sequential baseline of the same state;
   π is anchored by its own cross-entropy, so no separate supervised head is trained by default);
3. ``--preset seed`` for contrast: the reference notebook's pipeline (``pretrain --preset seed``, then
   ``train --preset seed`` on the frozen pretrained embeddings);
4. the bar: ``benchmarks/reference_sasrec.py`` (an independent SASRec) on the same split and metric code;
5. ``--sweep``: the one-setting-at-a-time variants of the defaults that ``docs/agent-research.md`` chose
   them from (correction ``none``), with each run's best validation ndcg@10 next to its test figures;
6. ``--pretrained``: the reference pipeline with today's defaults, ``pretrain`` (its defaults) then
   ``train --embeddings`` with every default (the vectors fine-tuned) and with ``--frozen-embeddings``.

Every figure is the test split's next-item metric of ``topkrec evaluate``; ``reward_ndcg@10`` weights each
test event by its reward and ``ndcg_by_event`` splits ndcg@10 by the test event's behaviour (empty for SASRec).
The last line is one JSON object,
``{"results": [{"dataset", "model", "ndcg@10", "recall@10", "mrr", "train_s", "settings", ...}, ...]}``
(DESIGN §9). Datasets whose files are absent are skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TOPKREC_SHARED_DATA", REPO.parent / "shared" / "data"))

DATASETS: dict[str, list[str]] = {
    "movielens": ["--format", "movielens", "--input", str(SHARED / "movielens-latest-small")],
    "taobao": ["--format", "taobao", "--input", str(SHARED / "taobao-head84k" / "UserBehavior_head.csv")]
    + ["--skip-bad-rows"],
    "synthetic": ["--format", "tianchi", "--no-sample"],  # input: `topkrec synth` below
}

SWEEP: dict[str, list[str]] = {
    "defaults": [],
    "encoder gru": ["--encoder", "gru"],
    "hist 10": ["--hist-num", "10"],
    "user embedding": ["--user-embedding"],
    "no repeat bias": ["--no-repeat-bias"],
    "repeat add": ["--repeat-mode", "add"],
    "item tokens": ["--item-tokens"],
    "session returns": ["--weights", "return"],
    "no CE anchor": ["--policy-ce", "0"],
    "raw weights": ["--weight-norm", "none"],
    "lr 1e-3": ["--lr", "1e-3"],
    "rows batching": ["--batching", "rows"],
    "dropout 0.2": ["--dropout", "0.2"],
    "encoder on every row": ["--min-action-count", "1"],
    "min action count 3": ["--min-action-count", "3"],
}
"""One setting changed from the defaults at a time (``--sweep``)."""


def topkrec(*args: str, log: Path | None = None) -> tuple[float, str]:
    """Run the installed command; (wall seconds, stdout). A failure stops the benchmark with its stderr."""
    cmd = [sys.executable, "-m", "topkrec", "--no-progress", *args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ topkrec {' '.join(args)}\n{r.stderr}{r.stdout}\n")
    if r.returncode != 0:
        raise SystemExit(f"topkrec {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return seconds, r.stdout


def prepare(
    name: str, work: Path, log: Path, synth_size: tuple[int, int] = (0, 0), given: dict[str, Path] | None = None
) -> Path | None:
    """The prepared dataset dir (reused when ``work`` has it); ``synth_size``: (users, items) of ``topkrec
    synth``, 0 for its default; ``given``: the ``--data NAME=DIR`` directories, used as they are."""
    if given and name in given:
        return given[name]
    data = work / name / "data"
    if (data / "meta.json").exists():
        return data
    args = list(DATASETS[name])
    if name == "synthetic":
        raw = work / name / "raw"
        size = [f"--{k}={v}" for k, v in zip(("users", "items"), synth_size, strict=True) if v > 0]
        topkrec("synth", "--out", str(raw), *size, "--force", log=log)
        args += ["--input", str(raw)]
    elif not Path(args[3]).exists():
        print(f"# {name}: {args[3]} not found, skipped", flush=True)
        return None
    topkrec("prepare", *args, "--out", str(data), "--force", log=log)
    return data


def evaluate(model: Path, data: Path, log: Path, device: str = "cpu") -> dict[str, Any]:
    _, out = topkrec("evaluate", "--model", str(model), "--data", str(data), "--json", "--device", device, log=log)
    return json.loads(out)


def _row(dataset: str, model: str, m: dict[str, Any], train_s: float, settings: Any, **extra: Any) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "model": model,
        "ndcg@10": m["ndcg@10"],
        "recall@10": m["recall@10"],
        "mrr": m["mrr"],
        "coverage": m.get("coverage"),
        "tail_share": m.get("tail_share"),
        "snips": m.get("snips"),
        "reward_ndcg@10": m.get("reward_ndcg@10"),
        "ndcg_by_event": m.get("ndcg_by_event"),
        "train_s": round(train_s, 1),
        "settings": settings,
        **extra,
    }


def _trainer_state(model: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((model / "trainer_state.json").read_text())
    return state


def run_dataset(name: str, work: Path, args: argparse.Namespace, log: Path) -> list[dict[str, Any]]:
    data = prepare(name, work, log, (args.synth_users, args.synth_items), args.data)
    if data is None:
        return []
    rows: list[dict[str, Any]] = []
    base = ["--data", str(data), "--device", args.device, "--force"]
    short = [(f"--{k.replace('_', '-')}", str(v)) for k in ("epochs", "max_steps") if (v := getattr(args, k)) > 0]
    base += [a for flag in short for a in flag]
    for i, correction in enumerate(args.corrections):
        model = work / name / f"model-{correction}"
        train_s, _ = topkrec("train", *base, "--out", str(model), "--correction", correction, log=log)
        doc = evaluate(model, data, log, args.device)
        state = _trainer_state(model)
        settings = ", ".join(["defaults", f"--correction {correction}", *(" ".join(flag) for flag in short)])
        rows.append(
            _row(name, correction, doc["models"][correction], train_s, settings, val_ndcg=state.get("best_metric"))
        )
        print(json.dumps(rows[-1]), flush=True)
        if i == 0:
            for baseline in ("popularity", "recent", "behavior"):
                rows.append(
                    _row(
                        name,
                        baseline,
                        doc["models"][baseline],
                        train_s if baseline == "behavior" else 0.0,
                        f"from the {correction} run",
                    )
                )
                print(json.dumps(rows[-1]), flush=True)
    if args.seed_preset:
        emb = work / name / "embeddings-seed"
        seed_args = ["--data", str(data), "--out", str(emb), "--preset", "seed", "--force", "--device", args.device]
        pre_s, _ = topkrec("pretrain", *seed_args, log=log)
        model = work / name / "model-seed"
        train_s, _ = topkrec("train", *base, "--out", str(model), "--preset", "seed", "--embeddings", str(emb), log=log)
        doc = evaluate(model, data, log, args.device)
        rows.append(_row(name, "seed preset (topk)", doc["models"]["topk"], train_s + pre_s, "--preset seed"))
        print(json.dumps(rows[-1]), flush=True)
    if args.pretrained:
        emb = work / name / "embeddings"
        pre_s, _ = topkrec(
            "pretrain", "--data", str(data), "--out", str(emb), "--force", "--device", args.device, log=log
        )
        for label, flags in (("fine-tuned", []), ("frozen", ["--frozen-embeddings"])):
            model = work / name / f"model-pretrained-{label}"
            train_s, _ = topkrec("train", *base, "--out", str(model), "--embeddings", str(emb), *flags, log=log)
            doc = evaluate(model, data, log, args.device)
            settings = " ".join(["pretrain defaults; train defaults --embeddings", *flags])
            rows.append(_row(name, f"pretrained, {label} (none)", doc["models"]["none"], train_s + pre_s, settings))
            print(json.dumps(rows[-1]), flush=True)
    if args.sasrec:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from reference_sasrec import SASRecConfig, run_sasrec

        result = run_sasrec(data, SASRecConfig(max_epochs=args.sasrec_epochs))
        rows.append(
            _row(name, "SASRec (reference)", result.metrics, result.train_seconds, "benchmarks/reference_sasrec.py")
        )
        print(json.dumps(rows[-1]), flush=True)
    if args.sweep:
        for label, flags in SWEEP.items():
            model = work / name / f"sweep-{label.replace(' ', '-')}"
            train_s, _ = topkrec("train", *base, "--out", str(model), *flags, log=log)
            doc = evaluate(model, data, log, args.device)
            state = _trainer_state(model)
            rows.append(
                _row(name, f"sweep: {label}", doc["models"]["none"], train_s, " ".join(flags) or "defaults")
                | {"val_ndcg": state.get("best_metric"), "best_epoch": state.get("best_epoch")}
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def print_tables(rows: list[dict[str, Any]]) -> None:
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        print(f"\n### {dataset}\n")
        print("| model | ndcg@10 | reward-weighted ndcg@10 | recall@10 | mrr | coverage | tail_share | train s |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            if r["dataset"] == dataset:
                cov = "" if r["coverage"] is None else f"{r['coverage']:.3f}"
                tail = "" if r["tail_share"] is None else f"{r['tail_share']:.3f}"
                rw = "" if r.get("reward_ndcg@10") is None else f"{r['reward_ndcg@10']:.4f}"
                print(
                    f"| {r['model']} | {r['ndcg@10']:.4f} | {rw} | {r['recall@10']:.4f} | {r['mrr']:.4f} | {cov} "
                    f"| {tail} | {r['train_s']:.0f} |"
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--datasets", default=None, help="comma-separated (default: the --data names, else movielens,taobao,synthetic)"
    )
    ap.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a dataset directory written by `topkrec prepare`, benchmarked under NAME (repeatable)",
    )
    ap.add_argument("--corrections", default="none,is,topk")
    ap.add_argument("--no-seed-preset", dest="seed_preset", action="store_false")
    ap.add_argument("--no-sasrec", dest="sasrec", action="store_false")
    ap.add_argument("--sasrec-epochs", type=int, default=50)
    ap.add_argument("--sweep", action="store_true", help="Also run the one-setting variants of the defaults.")
    ap.add_argument(
        "--pretrained", action="store_true", help="Also pretrain, then train on its embeddings (fine-tuned, frozen)."
    )
    ap.add_argument("--work", type=Path, default=Path("bench-quality"))
    ap.add_argument("--synth-users", type=int, default=0, help="users of `topkrec synth` (0: its default)")
    ap.add_argument("--synth-items", type=int, default=0, help="items of `topkrec synth` (0: its default)")
    ap.add_argument("--epochs", type=int, default=0, help="`train --epochs` of every run (0: train's default)")
    ap.add_argument("--max-steps", type=int, default=0, help="`train --max-steps` of every run (0: no limit)")
    ap.add_argument(
        "--device",
        default="cpu",
        help="--device of every pretrain, train and evaluate (cpu, the default, is what the docs' figures used; "
        "auto or cuda on a GPU machine); the SASRec reference always runs on the CPU",
    )
    args = ap.parse_args()
    args.corrections = [c.strip() for c in args.corrections.split(",") if c.strip()]
    given: dict[str, Path] = {}
    for spec in args.data:
        name, sep, directory = spec.partition("=")
        name = name.strip()
        if not sep or not name or not directory:
            raise SystemExit(f"--data {spec!r}: expected NAME=DIR")
        if name in DATASETS or name in given:
            raise SystemExit(f"--data {spec!r}: the name {name!r} is taken; choose another")
        if not (Path(directory) / "meta.json").is_file():
            raise SystemExit(f"--data {spec!r}: {directory} has no meta.json; give a directory `topkrec prepare` wrote")
        given[name] = Path(directory).resolve()
    args.data = given
    if args.datasets is None:
        args.datasets = ",".join(given) if given else "movielens,taobao,synthetic"
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "commands.log"
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for name in (d.strip() for d in args.datasets.split(",") if d.strip()):
        if name not in DATASETS and name not in given:
            raise SystemExit(f"unknown dataset {name!r}; use some of {', '.join([*DATASETS, *given])}")
        rows += run_dataset(name, args.work, args, log)
    print_tables(rows)
    print(f"\n# {len(rows)} results in {time.perf_counter() - t0:.0f} s; commands and their output: {log}")
    print(json.dumps({"results": rows}))


if __name__ == "__main__":
    main()
