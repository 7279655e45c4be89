#!/usr/bin/env bash
# Prepares everything hvdkit needs, idempotently: Open MPI, .venv with the
# pinned requirements, Horovod 0.28.1 built for them, and hvdkit itself with
# its C++ extension. A completed set-up writes a stamp of its inputs; the next
# run with the same inputs returns at once. Nothing writes the stamp before the
# last step succeeded, so a failed run is redone rather than taken as complete.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$REPO_ROOT"

PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.hvdkit-setup"

# The system packages, in one place (Debian/Ubuntu names). The default set-up
# installs the build ones it finds missing; `setup.sh system-packages GROUP`
# installs a whole group without recommends, which is how the Docker images
# get theirs (tests/unit/test_docker_drift.py holds them to these lists).
BUILD_PACKAGES=(python3 python3-dev python3-venv ca-certificates g++ make cmake openmpi-bin libopenmpi-dev)
# What a built venv needs to run: the interpreter it links to, the OpenMP
# runtime of hvdkit's extension, Open MPI, and ssh for multi-host jobs.
RUNTIME_PACKAGES=(python3 libgomp1 openmpi-bin openssh-client openssh-server)

if [ "${1:-}" = system-packages ]; then
  case "${2:-}" in
    build) packages=("${BUILD_PACKAGES[@]}") ;;
    runtime) packages=("${RUNTIME_PACKAGES[@]}") ;;
    *) die "system-packages: unknown group '${2:-}'; expected build or runtime" ;;
  esac
  { [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; } \
    || die "system-packages needs root and apt-get; install these yourself: ${packages[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" > /dev/null
  note "installed the $2 packages: ${packages[*]}"
  exit 0
fi
[ $# = 0 ] || die "unknown arguments '$*'; usage: setup.sh [system-packages build|runtime]"

inputs_hash() {
  cat requirements.txt scripts/setup.sh scripts/build_horovod.sh scripts/common.sh setup.py pyproject.toml \
    $(find csrc -type f | sort) | sha256sum | cut -c1-16
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(inputs_hash)" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi
started=$(date +%s)

# --- Python --------------------------------------------------------------
command -v "$PYTHON" > /dev/null || die "$PYTHON not found; install Python 3.10-3.13 or set PYTHON=/path/to/python3"
"$PYTHON" - <<'PY' || exit 1
import sys
if not ((3, 10) <= sys.version_info[:2] <= (3, 13)):
    sys.exit(f"hvdkit setup: error: Python {sys.version.split()[0]} at {sys.executable} is not supported; "
             "torch 2.13 and TensorFlow 2.21 need Python 3.10-3.13 (set PYTHON=/path/to/python3.11)")
import venv, ensurepip  # noqa: F401  (Debian splits these into python3-venv)
PY

# --- Compiler and MPI ----------------------------------------------------
apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    note "installing $* with apt-get"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } > /tmp/hvdkit-apt.log 2>&1 \
      || { tail -n 20 /tmp/hvdkit-apt.log >&2; die "apt-get install $* failed (log above)"; }
  else
    die "missing $*; install them (Debian/Ubuntu: sudo apt-get install $*)"
  fi
}
command -v g++ > /dev/null || apt_install g++
command -v cmake > /dev/null || apt_install cmake
if ! command -v mpirun > /dev/null || ! command -v mpicxx > /dev/null; then
  apt_install openmpi-bin libopenmpi-dev
fi
mpirun --version 2>/dev/null | grep -q "Open MPI" \
  || die "mpirun is not Open MPI ($(mpirun --version 2>&1 | head -n1)); hvdkit's launcher and tests expect Open MPI"

# --- Virtual environment -------------------------------------------------
if [ -d "$VENV" ] && ! "$VENV/bin/python" -c "import pip" > /dev/null 2>&1; then
  note "removing the broken virtual environment at $VENV"
  rm -rf "$VENV"
fi
[ -d "$VENV" ] || "$PYTHON" -m venv "$VENV"
activate_venv
rm -f "$STAMP"
pip install -qq pip==26.3 setuptools==84.2.1 wheel==0.48.0 \
  || die "could not reach the Python package registry (pip install failed); check the network or set PIP_INDEX_URL"
pip install -qq -r requirements.txt \
  || die "installing requirements.txt failed (see pip's message above)"

# --- Horovod -------------------------------------------------------------
"$REPO_ROOT/scripts/build_horovod.sh"

# --- hvdkit and its extension --------------------------------------------
MAX_JOBS="${MAX_JOBS:-$(nproc)}" pip install --quiet --no-build-isolation --no-deps -e . > /tmp/hvdkit-pip-e.log 2>&1 \
  || { tail -n 40 /tmp/hvdkit-pip-e.log >&2; die "building hvdkit's C++ extension failed (log above)"; }
python -c "from hvdkit.kernels import torch_ops; b = torch_ops.backends(); assert b['loaded'], b['error']" \
  || die "hvdkit's torch extension (hvdkit._C) was built but does not load"
python -c "from hvdkit.kernels import tf_ops; b = tf_ops.backends(); assert b['loaded'], b['error']" \
  || die "hvdkit's TensorFlow op library (hvdkit._tf_ops) was built but does not load"

inputs_hash > "$STAMP"
note "ready in $(( $(date +%s) - started )) s"
