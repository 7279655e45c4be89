# Helpers shared by the scripts in this folder (sourced, not run).

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HVDKIT_VENV:-$REPO_ROOT/.venv}"

die() { echo "hvdkit setup: error: $*" >&2; exit 1; }
note() { echo "hvdkit setup: $*"; }

activate_venv() {
  [ -x "$VENV/bin/python" ] || die "no virtual environment at $VENV; run 'make setup' first"
  # shellcheck disable=SC1091
  source "$VENV/bin/activate"
}

# Open MPI refuses to start as root unless told twice that it is intended.
mpirun_root_flags() {
  if [ "$(id -u)" = "0" ]; then echo "--allow-run-as-root"; fi
}
if [ "$(id -u)" = "0" ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
# TensorFlow's start-up banners drown test and job logs; users may lower this.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
