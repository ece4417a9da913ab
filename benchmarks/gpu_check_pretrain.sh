#!/usr/bin/env bash
# GPU check for issue 3 (pretrain), run from the repository root on the CUDA machine:
#
#     OUT=/some/dir bash benchmarks/gpu_check_pretrain.sh
#
# Installs nothing (PYTHONPATH=src). Every step has its own timeout; the whole script ends within about
# 4 minutes (60 + 100 + 60 s). Files written to $OUT: pytest_cuda_pretrain.log, bench_pretrain_cuda.log,
# pretrain_synth_cuda.log, pretrain_synth_cuda_metrics.json, summary_pretrain.txt.
set -u
OUT="${OUT:-/tmp/gpuout}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
PY="${PYTHON:-python3}"
SUMMARY="$OUT/summary_pretrain.txt"
: > "$SUMMARY"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

step() {  # step NAME SECONDS LOGFILE CMD...
  local name="$1" secs="$2" log="$3"
  shift 3
  local t0=$(date +%s)
  timeout --kill-after=10 "$secs" "$@" > "$log" 2>&1
  local rc=$?
  echo "[$name] exit $rc in $(( $(date +%s) - t0 ))s -> $(basename "$log")" | tee -a "$SUMMARY"
}

# 1. CUDA tests of the pretraining area (device-resident data, sync-free sampler, learning on CUDA).
step pytest_cuda_pretrain 60 "$OUT/pytest_cuda_pretrain.log" \
  "$PY" -m pytest -m cuda -q -rs -p no:cacheprovider tests/embeddings/test_pretrain.py
tail -n 2 "$OUT/pytest_cuda_pretrain.log" | sed 's/^/    /' >> "$SUMMARY"

# 2. Step throughput on CUDA at the reference dataset's size (80 000 users × 160 000 items).
step bench_pretrain 100 "$OUT/bench_pretrain_cuda.log" \
  "$PY" benchmarks/bench_pretrain.py --device cuda --size reference --seconds 20
tail -n 1 "$OUT/bench_pretrain_cuda.log" | sed 's/^/    /' >> "$SUMMARY"

# 3. The CLI end to end on default synth data with --device cuda, 2 epochs of the default settings.
step pretrain_synth 60 "$OUT/pretrain_synth_cuda.log" bash -c "
  $PY -m topkrec synth --out $WORK/raw &&
  $PY -m topkrec prepare --format tianchi --input $WORK/raw --out $WORK/data &&
  $PY -m topkrec --no-progress -v pretrain --data $WORK/data --out $WORK/emb --epochs 2 --device cuda &&
  cp $WORK/emb/metrics.json $OUT/pretrain_synth_cuda_metrics.json"
grep -E "wrote $WORK/emb|error" "$OUT/pretrain_synth_cuda.log" | sed 's/^/    /' >> "$SUMMARY"
