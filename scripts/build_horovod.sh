#!/usr/bin/env bash
# Builds (or reuses) a Horovod 0.28.1 wheel for the torch and TensorFlow in the
# active venv, and installs it.
#
# The wheel is cached outside the repo, keyed by everything that changes the
# binary (Horovod, torch, TensorFlow and Python versions, CPU or CUDA, and a
# hash of this script's patches), so a second set-up on the same machine takes
# seconds while a fresh machine builds from the PyPI source distribution.
set -euo pipefail
source "$(dirname "$0")/common.sh"
activate_venv

HOROVOD_VERSION=0.28.1
CACHE_ROOT="${HVDKIT_CACHE_DIR:-$HOME/.cache/hvdkit}"

read -r TORCH_VERSION TORCH_CUDA TF_VERSION PY_TAG < <(python - <<'PY'
import sys, importlib.metadata as md
import torch

def tf_version():
    for name in ("tensorflow-cpu", "tensorflow"):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            pass
    sys.exit("hvdkit setup: error: TensorFlow is not installed in the venv (requirements.txt names tensorflow-cpu)")

print(torch.__version__.split("+")[0], torch.version.cuda or "cpu", tf_version(),
      f"py{sys.version_info.major}{sys.version_info.minor}")
PY
)
[ -n "${PY_TAG:-}" ] || die "could not read the torch and TensorFlow versions from the venv"

# A GPU build needs a CUDA build of torch and either a visible GPU or
# HVDKIT_FORCE_GPU_BUILD=1 (image builds, which normally see no GPU).
use_gpu=0
if [ "$TORCH_CUDA" != "cpu" ]; then
  if [ "${HVDKIT_FORCE_GPU_BUILD:-0}" = 1 ] || { command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; }; then
    use_gpu=1
  fi
fi
flavor=$([ "$use_gpu" = 1 ] && echo "cu${TORCH_CUDA}" || echo cpu)
patch_hash=$(sha256sum "$0" | cut -c1-12)
key="horovod${HOROVOD_VERSION}-torch${TORCH_VERSION}-tf${TF_VERSION}-${PY_TAG}-${flavor}-${patch_hash}"
wheel_dir="$CACHE_ROOT/wheels/$key"

check_build() {
  horovodrun --check-build > "$VENV/horovod-check-build.txt" 2>&1 || true
  python - "$VENV/horovod-check-build.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
missing = [name for name in ("PyTorch", "TensorFlow", "MPI", "Gloo")
           if not re.search(r"\[X\]\s+" + name + r"\b", text)]
if missing:
    print(text)
    sys.exit("hvdkit setup: error: Horovod was built without " + ", ".join(missing)
             + " (see 'horovodrun --check-build' above)")
PY
}

installed=$(python -c "import importlib.metadata as m; print(m.version('horovod'))" 2>/dev/null || true)
if [ "$installed" = "$HOROVOD_VERSION" ] && [ -f "$VENV/.horovod-key" ] && [ "$(cat "$VENV/.horovod-key")" = "$key" ]; then
  check_build
  exit 0
fi

if ! compgen -G "$wheel_dir/horovod-*.whl" > /dev/null; then
  command -v cmake > /dev/null || die "cmake is missing; install it (Debian: apt-get install cmake)"
  command -v mpicxx > /dev/null || die "mpicxx is missing; install Open MPI (Debian: apt-get install openmpi-bin libopenmpi-dev)"
  note "building Horovod $HOROVOD_VERSION from source ($key); this takes 10-25 minutes on 2 cores"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  pip download --quiet --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$work" \
    || die "could not download the Horovod $HOROVOD_VERSION source distribution from PyPI; check the network or a pip mirror (PIP_INDEX_URL)"
  tar -xzf "$work"/horovod-$HOROVOD_VERSION.tar.gz -C "$work"
  src="$work/horovod-$HOROVOD_VERSION"

  # Fix 1: PyTorch >= 2.1 headers need C++17; Horovod pins C++14 for the core
  # and the torch extension.
  sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
    "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
  # Fix 2: distutils is gone from Python 3.12; ask sysconfig for the include dir.
  sed -i 's|from distutils.sysconfig import get_python_inc; print(get_python_inc())|import sysconfig; print(sysconfig.get_paths()[\\"include\\"])|' \
    "$src/horovod/torch/CMakeLists.txt"
  # Fix 3: TensorFlow >= 2.16 pip wheels ship no highwayhash headers, so the
  # XLA custom-call ops (used only by GPU XLA builds) cannot compile; drop them.
  sed -i '/xla_mpi_ops.cc/d' "$src/horovod/tensorflow/CMakeLists.txt"
  # Fix 4: under Gloo the stall check never fires: the controller reserves
  # global_ranks_ instead of sizing it, so the check sees zero ranks and a rank
  # that skips a collective is never reported.
  sed -i 's/global_ranks_.reserve(size_);/global_ranks_.resize(size_);/' \
    "$src/horovod/common/gloo/gloo_controller.cc"
  grep -q 'global_ranks_.resize(size_);' "$src/horovod/common/gloo/gloo_controller.cc" \
    || die "Fix 4 did not apply: horovod/common/gloo/gloo_controller.cc changed upstream"

  build_env=(HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1
             HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MXNET=1
             # CMake >= 4 refuses the vendored gloo's old cmake_minimum_required.
             CMAKE_POLICY_VERSION_MINIMUM=3.5
             MAKEFLAGS="-j$(nproc)")
  if [ "$use_gpu" = 1 ]; then
    nccl_dir=$(python -c "import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__))" 2>/dev/null) \
      || die "a GPU build needs NCCL from the nvidia-nccl wheel (pip install nvidia-nccl-cu${TORCH_CUDA%%.*})"
    # Horovod's CMake looks for libnccl.so; the wheel ships only libnccl.so.2.
    [ -e "$nccl_dir/lib/libnccl.so" ] || ln -s libnccl.so.2 "$nccl_dir/lib/libnccl.so"
    build_env+=(HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_INCLUDE="$nccl_dir/include" HOROVOD_NCCL_LIB="$nccl_dir/lib"
                # CUDA 13 compiles only for newer architectures; list the ones targeted.
                HOROVOD_BUILD_CUDA_CC_LIST="${HOROVOD_BUILD_CUDA_CC_LIST:-80,90}"
                # GCC 13 no longer includes these transitively.
                CXXFLAGS="-include cstdint -include string -include stdexcept")
  fi
  mkdir -p "$work/wheel"
  if ! env "${build_env[@]}" pip wheel --no-build-isolation --no-deps -w "$work/wheel" "$src" > "$work/build.log" 2>&1; then
    tail -n 60 "$work/build.log" >&2
    die "the Horovod build failed (last lines above); nothing was cached or installed"
  fi
  mkdir -p "$wheel_dir.tmp"
  cp "$work"/wheel/horovod-*.whl "$wheel_dir.tmp/"
  rm -rf "$wheel_dir" && mv "$wheel_dir.tmp" "$wheel_dir"
else
  note "reusing the cached Horovod wheel $key"
fi

pip install --quiet --no-deps --force-reinstall "$wheel_dir"/horovod-*.whl
check_build
echo "$key" > "$VENV/.horovod-key"
