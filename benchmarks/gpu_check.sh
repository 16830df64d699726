#!/usr/bin/env bash
# The GPU check: one command for a machine with an NVIDIA GPU, PyTorch and Triton
# preinstalled, and no network. It installs nothing (the source tree goes on PYTHONPATH),
# prints the card, the versions and nvidia-smi, runs the whole test suite compiled on the GPU,
# `ldrld bench` over the full sweep, and the calibration of `ldrld profile` against ncu's
# counters (benchmarks/calibrate.py), and writes <card>-<date>.{log,json,csv,md,png,ncu.csv}
# under $OUT when it is set, else under benchmarks/results/. Each step has a time limit; the
# whole script ends within 8.5 minutes.
#
#   bash benchmarks/gpu_check.sh             # run it
#   bash benchmarks/gpu_check.sh --dry-run   # list the steps, run nothing
set -uo pipefail
cd "$(dirname "$0")/.."

dry_run=0
case "${1:-}" in
  --dry-run) dry_run=1 ;;
  "") ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac

out_dir="${OUT:-benchmarks/results}"
card="no-gpu"
if command -v nvidia-smi >/dev/null 2>&1; then
  card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
fi
name="$(printf '%s' "${card:-no-gpu}" | tr -cs 'A-Za-z0-9._-' '-' | sed 's/-*$//')-$(date -u +%Y-%m-%d)"

# step limits: 20 + 30 + 180 + 120 + 30 + 100 s, plus at most 5 s each to kill a step: 8.5
# minutes
TEST_LIMIT=180
BENCH_LIMIT=120
FUSED_LINEAR_LIMIT=30
CALIBRATE_LIMIT=100
steps=(
  "environment: nvidia-smi, then the Python, PyTorch, CUDA and Triton versions and the card"
  "tests: python3 -m pytest tests, compiled on the GPU (pytest-xdist when present), at most ${TEST_LIMIT} s"
  "bench: python3 -m ldrld_kernels bench --out $out_dir --name $name, at most ${BENCH_LIMIT} s"
  "fused linear: python3 -m ldrld_kernels bench --fused-linear (8192 x 4096 x 128256, bfloat16), at most ${FUSED_LINEAR_LIMIT} s"
  "calibrate: ncu --clock-control none on benchmarks/calibrate.py run, then its report next to ldrld profile, at most ${CALIBRATE_LIMIT} s (skipped without ncu)"
)
if (( dry_run )); then
  echo "gpu_check.sh would write $out_dir/$name.{log,json,csv,md,png,ncu.csv} after these steps:"
  for i in "${!steps[@]}"; do echo "  $((i + 1)). ${steps[$i]}"; done
  exit 0
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mkdir -p "$out_dir"
exec > >(tee "$out_dir/$name.log") 2>&1

failed=0
step() {
  local limit=$1
  shift
  echo "== $(date -u +%H:%M:%S) $*"
  timeout --kill-after=5 "$limit" "$@"
  local rc=$?
  echo "== exit $rc"
  [ "$rc" -eq 0 ] || failed=1
}

step 20 nvidia-smi
step 30 python3 -c "import sys, torch, triton; print('python', sys.version.split()[0]); \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); \
print('card', torch.cuda.get_device_name())"
parallel=()
python3 -c "import xdist" 2>/dev/null && parallel=(-n 8)
step "$TEST_LIMIT" python3 -m pytest tests -q -rs "${parallel[@]}"
step "$BENCH_LIMIT" python3 -m ldrld_kernels bench --out "$out_dir" --name "$name" \
  --time-limit $((BENCH_LIMIT - 40))
step "$FUSED_LINEAR_LIMIT" python3 -m ldrld_kernels bench --fused-linear
if command -v ncu >/dev/null 2>&1; then
  metrics=$(python3 benchmarks/calibrate.py metrics)
  step "$CALIBRATE_LIMIT" bash -c "ncu --clock-control none --csv --metrics $metrics \
    python3 benchmarks/calibrate.py run > '$out_dir/$name.ncu.csv' && \
    python3 benchmarks/calibrate.py report '$out_dir/$name.ncu.csv'"
else
  echo "== calibrate: skipped, ncu is not installed here"
fi
echo "== done: $([ "$failed" -eq 0 ] && echo all steps passed || echo a step failed)"
exit "$failed"
