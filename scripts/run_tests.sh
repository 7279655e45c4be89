#!/usr/bin/env bash
# The whole test suite, in the order that fails fastest: single-process unit
# tests, then tests that start launchers from one process, then the tests that
# run inside every rank under mpirun and horovodrun.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
activate_venv

passed=0
failed=0
stage() {  # name, command...
  local name="$1"; shift
  echo "=== stage: $name"
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "=== stage FAILED: $name" >&2; fi
}

stage unit python -m pytest -q tests/unit
stage integration python -m pytest -q tests/integration
stage parallel bash scripts/run_parallel_tests.sh
echo "stages: $passed passed, $failed failed"
[ "$failed" = 0 ]
