#!/usr/bin/env bash
# Run every benchmark on one device within a time budget, most important first, and keep
# the JSON files and one log in OUTDIR.
#
#   bash benchmarks/run_all.sh OUTDIR [DEVICE] [BUDGET_SECONDS] [--tiny]
#
# DEVICE defaults to cuda; BUDGET_SECONDS (default 540) caps the whole run: each script
# gets its own limit, cut to what is left. On CUDA the CUDA-only tests run first.
# ONLY="distill_step loader" runs just those steps (names as in the log).
set -u
OUTDIR=${1:?usage: run_all.sh OUTDIR [DEVICE] [BUDGET_SECONDS] [--tiny]}
DEVICE=${2:-cuda}
BUDGET=${3:-540}
TINY=${4:-}
PY=${PY:-python3}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
LOG="$OUTDIR/log.txt"

left() { echo $(( BUDGET - ($(date +%s) - T0) )); }

step() {  # step NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  local remaining; remaining=$(left)
  if [ "$remaining" -lt 15 ]; then
    echo "== $name: skipped, $remaining s left" | tee -a "$LOG"
    return
  fi
  [ "$limit" -gt "$remaining" ] && limit=$remaining
  echo "== $name (limit ${limit}s, at $(( $(date +%s) - T0 ))s): $*" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  echo "== $name: exit ${PIPESTATUS[0]} at $(( $(date +%s) - T0 ))s" | tee -a "$LOG"
}

{
  echo "started $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
  $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee -a "$LOG"

if [ "${DEVICE%%:*}" = cuda ]; then
  step cuda-tests 90 $PY -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py tests/test_augment.py tests/test_dataset.py tests/test_discriminator.py -k "cuda or graph"
fi
step penalty 75 $PY -m benchmarks.penalty --device "$DEVICE" --json "$OUTDIR/penalty.json" $TINY
step distill_step 240 $PY -m benchmarks.distill_step --device "$DEVICE" --profile --json "$OUTDIR/distill_step.json" $TINY
step generation 130 $PY -m benchmarks.generation --device "$DEVICE" --json "$OUTDIR/generation.json" $TINY
step loader 70 $PY -m benchmarks.loader --device "$DEVICE" --json "$OUTDIR/loader.json" $TINY
step dsa 70 $PY -m benchmarks.dsa --device "$DEVICE" --json "$OUTDIR/dsa.json" $TINY
if [ "${DEVICE%%:*}" = cpu ]; then  # AvgPool2x2 is nn.AvgPool2d off the CPU
  step pooling 120 $PY -m benchmarks.pooling --device "$DEVICE" --json "$OUTDIR/pooling.json" $TINY
fi
step generation-compile 150 $PY -m benchmarks.generation --device "$DEVICE" --compile --skip fraction loader_overhead \
  --widths 196 --dtypes fp32 bf16 --no-memory --json "$OUTDIR/generation_compile.json" $TINY
echo "finished at $(( $(date +%s) - T0 ))s" | tee -a "$LOG"
