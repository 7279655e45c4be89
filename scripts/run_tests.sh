#!/usr/bin/env bash
# The whole test suite, in the order that fails fastest: single-process unit
# tests, then tests that start launchers from one process, then the tests that
# run inside every rank under mpirun and horovodrun.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
activate_venv

status=0
python -m pytest -q tests/unit || status=1
python -m pytest -q tests/integration || status=1
bash scripts/run_parallel_tests.sh || status=1
if [ "$status" = 0 ]; then echo "hvdkit: all test stages passed"; else echo "hvdkit: some test stages FAILED" >&2; fi
exit "$status"
