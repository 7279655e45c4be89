#!/usr/bin/env bash
# Runs the multi-rank tests under real launchers: every rank runs pytest on the
# same files and asserts on its own results; a failing rank fails the launch.
#
#   scripts/run_parallel_tests.sh            # the whole matrix
#   scripts/run_parallel_tests.sh torch      # only tests/parallel/torch
#
# Each launch runs under `timeout`, and pytest-timeout bounds each test, so a
# hung collective is a failure, never a stuck CI job.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
activate_venv

only="${1:-}"
launch_timeout="${HVDKIT_TEST_LAUNCH_TIMEOUT:-900}"
failures=()

run_case() {  # name, env assignments..., --, launcher command...
  local name="$1"; shift
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  echo "=== parallel: $name"
  if ! env "${envs[@]}" timeout --kill-after=20 "$launch_timeout" "$@"; then
    failures+=("$name")
  fi
}

pytest_cmd() {  # group
  echo python -m pytest -q -x --color=no --timeout=240 "tests/parallel/$1"
}

for group in torch tensorflow; do
  [ -n "$only" ] && [ "$only" != "$group" ] && continue
  compgen -G "tests/parallel/$group/test_*.py" > /dev/null || continue
  run_case "$group mpirun -np 1" HVDKIT_TEST_LAUNCHER=mpi -- \
    mpirun $(mpirun_root_flags) --tag-output -np 1 $(pytest_cmd $group)
  run_case "$group mpirun -np 2" HVDKIT_TEST_LAUNCHER=mpi -- \
    mpirun $(mpirun_root_flags) --tag-output -np 2 $(pytest_cmd $group)
  run_case "$group mpirun -np 4 (2 emulated nodes)" HVDKIT_TEST_LAUNCHER=mpi HVDKIT_RANKS_PER_NODE=2 -- \
    mpirun $(mpirun_root_flags) --tag-output --oversubscribe -x HVDKIT_RANKS_PER_NODE -np 4 $(pytest_cmd $group)
  run_case "$group horovodrun --gloo -np 2" HVDKIT_TEST_LAUNCHER=gloo -- \
    horovodrun --gloo -np 2 -H localhost:2 $(pytest_cmd $group)
done

if [ ${#failures[@]} -gt 0 ]; then
  printf 'parallel test launches failed: %s\n' "${failures[@]}" >&2
  exit 1
fi
echo "all parallel test launches passed"
