#!/usr/bin/env bash
# One prepared GPU check for issue 7 (scale), run from the repository root on the CUDA machine:
#
#     OUT=/some/dir bash benchmarks/gpu_check.sh
#
# Installs nothing: the package is used from the checkout with PYTHONPATH=src. Every step has its own
# `timeout`, so the whole script ends within 8 minutes (20 + 100 + 170 + 80 + 60 + 30 s of steps).
# Files written to $OUT (8, the most the device tool brings back): summary.txt (environment + one line per
# step + key figures), pytest_cuda.log, bench_scale_cuda.log, bench_scale_cuda.json, eval_cuda.log,
# eval_cuda.json, bench_train_cuda.log, torchrun_cuda.log. Without CUDA the CUDA tests skip and the CUDA
# benchmarks fail fast (test this script on a CPU machine with OUT=/tmp/gpuout).
set -u
OUT="${OUT:-/tmp/gpuout}"
mkdir -p "$OUT"
WORK="$(mktemp -d)"  # scratch that must not come back (the device tool returns at most 8 files)
trap 'rm -rf "$WORK"' EXIT
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
PY="${PYTHON:-python3}"
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

step() {  # step NAME SECONDS LOGFILE CMD...  — run with a timeout, log stdout+stderr, note the exit status
  local name="$1" secs="$2" log="$3"
  shift 3
  local t0=$(date +%s)
  timeout --kill-after=10 "$secs" "$@" > "$log" 2>&1
  local rc=$?
  local note=""
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then note=" (TIMED OUT after ${secs}s)"; fi
  echo "[$name] exit $rc$note in $(( $(date +%s) - t0 ))s -> $(basename "$log")" | tee -a "$SUMMARY"
}

# 1. Environment (what the figures were measured on).
step env 20 "$WORK/env.txt" bash -c "
  date -u +%Y-%m-%dT%H:%M:%SZ; uname -a; nvidia-smi || true
  $PY - <<'PYEOF'
import importlib, sys
print('python', sys.version.split()[0])
for m in ('torch', 'triton', 'numpy', 'pytest', 'polars', 'safetensors', 'rich', 'typer'):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, '__version__', '?'))
    except Exception as e:
        print(m, 'MISSING', type(e).__name__)
import torch
print('cuda', torch.cuda.is_available(), torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')
from topkrec.kernels import triton_available
print('topkrec triton path', triton_available())
PYEOF"

# 2. CUDA-only tests of the whole suite (Triton kernels vs the PyTorch reference, CPU == GPU checks).
cat "$WORK/env.txt" >> "$SUMMARY"

step pytest_cuda 100 "$OUT/pytest_cuda.log" \
  "$PY" -m pytest -m cuda -q -rs -p no:cacheprovider --continue-on-collection-errors
tail -n 3 "$OUT/pytest_cuda.log" | sed 's/^/    /' >> "$SUMMARY"

# 3. Training throughput: full softmax (Triton) vs plain PyTorch vs the reference-style step, sampled
#    softmax; 160 000 and 1 000 000 items. Partial JSON is rewritten after every case.
step bench_scale 170 "$OUT/bench_scale_cuda.log" \
  "$PY" benchmarks/bench_scale.py --device cuda --items 160000,1000000 --error-items 0 --budget 120 \
  --json-out "$OUT/bench_scale_cuda.json"
grep -E "^(peak|case|full|baseline|sampled|speed-up)" "$OUT/bench_scale_cuda.log" | sed 's/^/    /' >> "$SUMMARY"

# 4. Evaluation of the full held-out split (1 M events) of a 5 M-event synthetic log, 160 000 items,
#    with 2^32 and with the library's CUDA default of 2^30 scores per chunk.
step eval 80 "$OUT/eval_cuda.log" \
  "$PY" benchmarks/bench_scale.py --device cuda --eval-events 5000000 --eval-items 160000 \
  --eval-chunk-elements 4294967296,1073741824 --budget 35 --json-out "$OUT/eval_cuda.json"
grep -E "^evaluate" "$OUT/eval_cuda.log" | sed 's/^/    /' >> "$SUMMARY"

# 5. The agent's step at the reference shapes (batch 128, 50 000 items): eager vs torch.compile vs the
#    reference-style loop — decides whether --compile should become the CUDA default.
step bench_train 60 "$OUT/bench_train_cuda.log" \
  "$PY" benchmarks/bench_train.py --device cuda --compile --steps 20 --rounds 2
tail -n 1 "$OUT/bench_train_cuda.log" | cut -c1-400 | sed 's/^/    /' >> "$SUMMARY"

# 6. The DDP code path on CUDA with NCCL: one GPU, so one process, but torchrun starts the NCCL group and
#    the step runs DDP-wrapped on cuda:LOCAL_RANK with all-reduced metrics (a check, not a speed-up).
step torchrun 30 "$OUT/torchrun_cuda.log" \
  "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 tests/support/ddp_train_worker.py "$WORK/ddp_model" --device cuda
tail -n 2 "$OUT/torchrun_cuda.log" | sed 's/^/    /' >> "$SUMMARY"

echo "total $(( $(date +%s) - START ))s" | tee -a "$SUMMARY"
