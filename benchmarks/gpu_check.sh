#!/usr/bin/env bash
# One run on a GPU machine: build hvdkit's extension with its CUDA kernels,
# check every .cu compiles, test every op against its pure-torch reference on
# CPU and CUDA, time every kernel on the GPU and print the table
# (benchmarks/kernels.py --device cuda), then time one optimizer step of a
# ResNet-50 on one GPU, Horovod's DistributedOptimizer against hvdkit's, with
# host syncs counted (benchmarks/gpu_step.py, one rank, at most STEP_TIMEOUT s).
#
# Needs a CUDA build of torch and nvcc. Usage:
#   benchmarks/gpu_check.sh [--json PATH] [--step-json PATH] [--n ELEMENTS] [--skip-build] [--skip-step]
# --json: the kernel records; --step-json: the step benchmark's (default: the
# --json path with _step before .json, when --json is given).
# Environment: PYTHON (default .venv/bin/python, else python3), MAX_JOBS
# (parallel compiles, default 8), TORCH_CUDA_ARCH_LIST (default: this GPU's),
# STEP_TIMEOUT (seconds for the step benchmark, default 300).
# Exits non-zero if the build, the compile check, any test or either
# benchmark fails; the benchmarks still run after failed tests, and the step
# benchmark after a failed kernel benchmark, so one run shows everything.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
JSON=""
STEP_JSON=""
N=25600000
BUILD=1
STEP=1
while [ $# -gt 0 ]; do
  case "$1" in
    --json) JSON="$2"; shift 2 ;;
    --step-json) STEP_JSON="$2"; shift 2 ;;
    --n) N="$2"; shift 2 ;;
    --skip-build) BUILD=0; shift ;;
    --skip-step) STEP=0; shift ;;
    *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
  esac
done

step() { printf '\n=== gpu_check: %s\n' "$*"; }
cd "$REPO_ROOT"

step "environment"
"$PYTHON" - <<'EOF'
import sys
import torch
if torch.version.cuda is None or not torch.cuda.is_available():
    sys.exit(f"gpu_check: needs a CUDA build of torch and a GPU (torch {torch.__version__}, "
             f"cuda available: {torch.cuda.is_available()})")
major, minor = torch.cuda.get_device_capability()
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), {torch.cuda.get_device_name()}, sm_{major}{minor}")
EOF
ARCH="$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"

if [ "$BUILD" = 1 ]; then
  step "build (TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$ARCH})"
  TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$ARCH}" MAX_JOBS="${MAX_JOBS:-8}" \
    "$PYTHON" -m pip install --no-build-isolation --no-deps -e . 2>&1 | tail -n 3
fi
"$PYTHON" -c "
from hvdkit.kernels import torch_ops as ops
state = ops.backends()
print(state)
assert state['cuda'], 'hvdkit was built without its CUDA kernels: ' + str(state)
"

step "every .cu compiles (scripts/check_cuda.sh)"
bash scripts/check_cuda.sh

step "ops against their references, CPU and CUDA"
status=0
"$PYTHON" -m pytest -q -p no:cacheprovider tests/unit/kernels tests/unit/compression || status=$?

step "kernel timings on the GPU"
bench=(benchmarks/kernels.py --device cuda --n "$N" --repeats 20)
[ -n "$JSON" ] && bench+=(--json "$JSON")
bench_status=0
"$PYTHON" "${bench[@]}" || bench_status=$?

step_status=0
if [ "$STEP" = 1 ]; then
  step "one optimizer step on one GPU, Horovod against hvdkit (benchmarks/gpu_step.py, at most ${STEP_TIMEOUT:-300} s)"
  [ -z "$STEP_JSON" ] && [ -n "$JSON" ] && STEP_JSON="${JSON%.json}_step.json"
  step_bench=(benchmarks/gpu_step.py --device cuda)
  [ -n "$STEP_JSON" ] && step_bench+=(--json "$STEP_JSON")
  # One rank, plain python (hvd.init() starts a world of one); Open MPI wants both flags as root.
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    timeout --kill-after=10 "${STEP_TIMEOUT:-300}" "$PYTHON" "${step_bench[@]}" || step_status=$?
fi

failed=0
if [ "$status" != 0 ]; then
  echo "gpu_check: tests FAILED (pytest exit $status)" >&2
  failed="$status"
fi
if [ "$bench_status" != 0 ]; then
  echo "gpu_check: kernel benchmark FAILED (exit $bench_status)" >&2
  [ "$failed" != 0 ] || failed="$bench_status"
fi
if [ "$step_status" != 0 ]; then
  case "$step_status" in
    124|137) echo "gpu_check: step benchmark TIMED OUT after ${STEP_TIMEOUT:-300} s" >&2 ;;
    *) echo "gpu_check: step benchmark FAILED (exit $step_status; a row marked FAILED above names the variant)" >&2 ;;
  esac
  [ "$failed" != 0 ] || failed="$step_status"
fi
[ "$failed" = 0 ] || exit "$failed"
echo "gpu_check: build, compile check, tests and benchmarks passed"
