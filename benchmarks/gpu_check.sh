#!/usr/bin/env bash
# One run on a GPU machine: build hvdkit's extension with its CUDA kernels,
# check every .cu compiles, test every op against its pure-torch reference on
# CPU and CUDA, then time every kernel on the GPU and print the table
# (benchmarks/kernels.py --device cuda).
#
# Needs a CUDA build of torch and nvcc. Usage:
#   benchmarks/gpu_check.sh [--json PATH] [--n ELEMENTS] [--skip-build]
# Environment: PYTHON (default .venv/bin/python, else python3), MAX_JOBS
# (parallel compiles, default 8), TORCH_CUDA_ARCH_LIST (default: this GPU's).
# Exits non-zero if the build, the compile check or any test fails; the
# benchmark still runs after failed tests, so one run shows everything.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
JSON=""
N=25600000
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --json) JSON="$2"; shift 2 ;;
    --n) N="$2"; shift 2 ;;
    --skip-build) BUILD=0; shift ;;
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
"$PYTHON" -m pytest -q -p no:cacheprovider tests/unit/test_ops_*.py || status=$?

step "kernel timings on the GPU"
bench=(benchmarks/kernels.py --device cuda --n "$N" --repeats 20)
[ -n "$JSON" ] && bench+=(--json "$JSON")
"$PYTHON" "${bench[@]}"

if [ "$status" != 0 ]; then
  echo "gpu_check: tests FAILED (pytest exit $status)" >&2
  exit "$status"
fi
echo "gpu_check: build, compile check and tests passed"
