#!/usr/bin/env bash
# Compiles every CUDA source of hvdkit's kernels with the machine's nvcc, for
# every GPU architecture we target, without needing a GPU or a CUDA build of
# torch (the .cu files include only the framework-neutral core headers).
# Then, when torch's headers are installed, syntax-checks the torch CUDA
# binding (csrc/torch/register_cuda.cpp) as a CUDA build would compile it.
#
# Usage: scripts/check_cuda.sh [CUDA_SOURCE_DIR]    (default: csrc/cuda)
# Environment: NVCC (default: nvcc on PATH, else /usr/local/cuda/bin/nvcc),
#              CUDA_HOME (default: the toolkit nvcc belongs to, else /usr/local/cuda),
#              HVDKIT_CUDA_ARCHS (default: "80 90"), PYTHON (for torch headers),
#              HVDKIT_CHECK_JOBS (parallel compiles, default 2).
# Exits non-zero, naming the file, when any source does not compile.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SOURCE_DIR="${1:-$REPO_ROOT/csrc/cuda}"
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
ARCHS="${HVDKIT_CUDA_ARCHS:-80 90}"
PYTHON="${PYTHON:-$REPO_ROOT/.venv/bin/python}"

[ -x "$NVCC" ] || { echo "check_cuda: nvcc not found (set NVCC)" >&2; exit 2; }
shopt -s nullglob
sources=("$SOURCE_DIR"/*.cu)
[ ${#sources[@]} -gt 0 ] || { echo "check_cuda: no .cu files in $SOURCE_DIR" >&2; exit 2; }

gencode=()
for arch in $ARCHS; do gencode+=(-gencode "arch=compute_${arch},code=sm_${arch}"); done

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# Same flags as setup.py's CUDA build (bit-exact maths: no fast-math, no FMA contraction).
flags=(-std=c++17 -O3 --fmad=false -Xcompiler -Wall -I"$REPO_ROOT/csrc" "${gencode[@]}")
jobs_max="${HVDKIT_CHECK_JOBS:-2}"  # the build machines are small and shared

# run_check NAME COMMAND...: runs in the background, logs to $out/NAME.log and
# records the exit status in $out/NAME.rc.
run_check() {
  local name="$1"; shift
  { "$@" >"$out/$name.log" 2>&1; echo $? >"$out/$name.rc"; } &
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n || true; done
}

checks=()
for src in "${sources[@]}"; do
  name="$(basename "$src")"
  checks+=("$name")
  run_check "$name" "$NVCC" "${flags[@]}" -c "$src" -o "$out/${name%.cu}.o"
done

# The torch binding for CUDA, compiled only by CUDA builds of torch: check its
# syntax against the installed torch headers (a CPU wheel lacks one generated
# header, supplied here as CUDA builds generate it).
binding="$REPO_ROOT/csrc/torch/register_cuda.cpp"
if [ "$SOURCE_DIR" = "$REPO_ROOT/csrc/cuda" ] && [ -f "$binding" ] && [ -x "$PYTHON" ] \
   && torch_includes="$("$PYTHON" -c 'from torch.utils.cpp_extension import include_paths; print(" ".join(include_paths()))' 2>/dev/null)"; then
  mkdir -p "$out/stub/c10/cuda/impl"
  echo '#define C10_CUDA_BUILD_SHARED_LIBS' >"$out/stub/c10/cuda/impl/cuda_cmake_macros.h"
  cuda_include=/usr/local/cuda/include
  for home in "${CUDA_HOME:-}" "$(dirname "$(dirname "$(readlink -f "$NVCC")")")"; do
    if [ -n "$home" ] && [ -f "$home/include/cuda_runtime.h" ]; then cuda_include="$home/include"; break; fi
  done
  include_flags=(-I"$REPO_ROOT/csrc" -I"$out/stub" -I"$cuda_include")
  for dir in $torch_includes; do include_flags+=(-I"$dir"); done
  checks+=("register_cuda.cpp")
  run_check "register_cuda.cpp" "${CXX:-g++}" -std=c++17 -fsyntax-only -w -DHVDKIT_WITH_CUDA \
    "${include_flags[@]}" "$binding"
fi
wait

failed=()
for name in "${checks[@]}"; do
  if [ "$(cat "$out/$name.rc" 2>/dev/null)" = "0" ]; then
    echo "check_cuda: ok      $name"
  else
    echo "check_cuda: FAILED  $name" >&2
    sed 's/^/    /' "$out/$name.log" >&2
    failed+=("$name")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "check_cuda: ${#failed[@]} file(s) failed: ${failed[*]}" >&2
  exit 1
fi
echo "check_cuda: ${#checks[@]} files compile for sm_${ARCHS// /, sm_}"
