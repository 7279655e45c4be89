#!/usr/bin/env bash
# Runs the multi-rank tests under real launchers: every rank runs pytest on the
# same files and asserts on its own results; a failing rank fails the launch.
#
#   scripts/run_parallel_tests.sh            # the whole matrix
#   scripts/run_parallel_tests.sh torch      # only tests/parallel/torch
#
# The matrix, for each of tests/parallel/torch and tests/parallel/tensorflow:
#
#   mpirun -np 1                 the files whose behaviour changes with a world of one (np1_<group>)
#   mpirun -np 2                 every file
#   mpirun -np 4, 2 emulated     every file but the `slow` tests (tensorflow: the files whose
#     nodes                      behaviour depends on the node layout, np4_tensorflow); the ranks
#                                must see 2 nodes (HVDKIT_TEST_EXPECT_NODES=2), or the launch fails
#                                before any test instead of letting the hierarchical tests skip
#   horovodrun --gloo -np 2      the files whose behaviour depends on the controller (gloo_<group>)
#
# Argument checks and maths that come out the same at every world size are unit
# tests (tests/unit), not repeated here. Each launch runs under `timeout`, and
# pytest-timeout bounds each test, so a hung collective is a failure, never a
# stuck CI job. Skip reasons are printed (-rfEs in pyproject.toml's addopts; by rank 0
# only: every rank runs the same tests, and a test skipped on some ranks only would
# hang the others), and so are rank 0's slowest tests (HVDKIT_TEST_DURATIONS, default 10).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
activate_venv

only="${1:-}"
launch_timeout="${HVDKIT_TEST_LAUNCH_TIMEOUT:-900}"
durations="${HVDKIT_TEST_DURATIONS:-10}"  # slowest tests listed by rank 0 of each launch
failures=()
summary=()

# The files run under -np 1: a lone rank takes other paths than two (Horovod's ops on one
# rank, no process sets, the exchange keeping dense buckets instead of sending them).
np1_torch=(
  test_topology.py                # one rank, one node: local_size 1, no intra- or cross-node process set
  test_horovod_collectives.py     # Horovod's collectives on a world of one
  test_collectives.py             # hierarchical collectives with neither process set (flat == hierarchical)
  test_optimizer_compression.py   # a lone rank applies its own gradients, unsent and uncompressed
  test_optimizer_errors.py        # non-finite gradients caught on the unsent path (rank-pair tests skip)
  test_mismatch.py                # a gradient missing on the lone rank counts as zero (rank-pair tests skip)
  test_optimizer_equivalence.py   # Horovod's optimizer registers no hooks at size 1: hvdkit must still match it
  test_optimizer_dropin.py        # a Horovod script run as one process trains as with horovod.torch
  test_pipeline.py                # one stage: PyTorch's pipelining with nothing to pipe equals plain torch
)
np1_tensorflow=(
  test_horovod_collectives.py     # Horovod's collectives on a world of one
  test_collectives_tf.py          # hierarchical collectives with neither process set
  test_tape.py                    # the tape's unsent dense buckets, eagerly and traced
  test_exchange_compression.py    # a lone rank applies its own gradients, unsent and uncompressed
  test_exchange_errors.py         # non-finite gradients caught on the unsent path (rank-pair tests skip)
  test_keras_optimizer.py         # model.fit (traced) on the unsent path equals plain Keras
)

# The files run under -np 4 on 2 emulated nodes (unset: the whole folder). TensorFlow's other files
# ask nothing of a second node that -np 2 has not answered, and each TensorFlow rank costs seconds
# of imports and tracing on 2 cores.
np4_tensorflow=(
  test_collectives_tf.py          # hierarchical collectives through both process sets
  test_exchange_compression.py    # every compressor's hierarchical route equals its simulation
  test_exchange_errors.py         # errors raised on every rank of both nodes
  test_keras_optimizer.py         # model.fit through the hierarchical exchange
  test_tape.py                    # the tape's hierarchical buckets, eagerly and traced
)

# The files run under horovodrun --gloo: what the controller changes (the layout read from
# horovodrun's variables instead of MPI; Horovod's Gloo implementation of each collective and of
# the negotiation that must fail on every rank instead of hanging).
gloo_torch=(
  test_topology.py                # layout from HOROVOD_* variables, launcher 'gloo', process sets under Gloo
  test_horovod_collectives.py     # the Gloo controller is the one in use; Horovod's ops over it
  test_collectives.py             # hvdkit's flat and hierarchical collectives, async handles, uneven allgather
  test_optimizer_compression.py   # every compressor's transport (allreduce, sparse allgathers) over Gloo
  test_oracle_optimizer.py        # the two-phase route's alltoall, and the allgather route, over Gloo
  test_mismatch.py                # mismatched ranks raise on every rank through the Gloo controller, never hang
  test_elastic_state.py           # elastic jobs run on Gloo only: commit, restore and sync over it
  test_pipeline.py                # torch.distributed started from horovodrun's ranks, not MPI's
)
gloo_tensorflow=(
  test_horovod_collectives.py     # the Gloo controller is the one in use; Horovod's TF ops over it
  test_collectives_tf.py          # hvdkit's collectives through horovod.tensorflow over Gloo
  test_exchange_compression.py    # every compressor's transport through horovod.tensorflow over Gloo
  test_exchange_errors.py         # variables differing across ranks fail on every rank under Gloo
)

run_case() {  # name, env assignments..., --, launcher command...
  local name="$1"; shift
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  echo "=== parallel: $name"
  local start=$SECONDS status=passed
  if ! env "${envs[@]}" timeout --kill-after=20 "$launch_timeout" "$@"; then
    failures+=("$name")
    status=FAILED
  fi
  summary+=("$(printf '%5d s  %-6s  %s' $((SECONDS - start)) "$status" "$name")")
}

pytest_cmd() {  # group, extra pytest arguments..., [-- files]; sets PYTEST (no files: the whole folder)
  local group="$1"; shift
  PYTEST=(python -m pytest -q -x --color=no --timeout=240 --durations="$durations")
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do PYTEST+=("$1"); shift; done
  if [ $# -eq 0 ]; then
    PYTEST+=("tests/parallel/$group")
    return
  fi
  shift
  local f
  for f in "$@"; do
    [ -f "tests/parallel/$group/$f" ] || { echo "run_parallel_tests.sh: no tests/parallel/$group/$f" >&2; exit 2; }
    PYTEST+=("tests/parallel/$group/$f")
  done
}

for group in torch tensorflow; do
  [ -n "$only" ] && [ "$only" != "$group" ] && continue
  compgen -G "tests/parallel/$group/test_*.py" > /dev/null || continue
  declare -n np1="np1_$group" gloo="gloo_$group" np4="np4_$group"
  pytest_cmd "$group" -- "${np1[@]}"
  run_case "$group mpirun -np 1" HVDKIT_TEST_LAUNCHER=mpi HVDKIT_TEST_EXPECT_NODES=1 -- \
    mpirun $(mpirun_root_flags) --tag-output -np 1 "${PYTEST[@]}"
  pytest_cmd "$group"
  run_case "$group mpirun -np 2" HVDKIT_TEST_LAUNCHER=mpi HVDKIT_TEST_EXPECT_NODES=1 -- \
    mpirun $(mpirun_root_flags) --tag-output -np 2 "${PYTEST[@]}"
  if [ -v "np4_$group" ]; then pytest_cmd "$group" -m "not slow" -- "${np4[@]}"; else pytest_cmd "$group" -m "not slow"; fi
  run_case "$group mpirun -np 4 (2 emulated nodes)" \
    HVDKIT_TEST_LAUNCHER=mpi HVDKIT_RANKS_PER_NODE=2 HVDKIT_TEST_EXPECT_NODES=2 -- \
    mpirun $(mpirun_root_flags) --tag-output --oversubscribe -x HVDKIT_RANKS_PER_NODE -x HVDKIT_TEST_EXPECT_NODES \
    -np 4 "${PYTEST[@]}"
  pytest_cmd "$group" -- "${gloo[@]}"
  run_case "$group horovodrun --gloo -np 2" HVDKIT_TEST_LAUNCHER=gloo HVDKIT_TEST_EXPECT_NODES=1 -- \
    horovodrun --gloo -np 2 -H localhost:2 "${PYTEST[@]}"
  unset -n np1 gloo np4
done

echo "=== parallel launches (wall time):"
printf '  %s\n' "${summary[@]}"
# run_tests.sh repeats these lines in its own summary.
[ -n "${HVDKIT_TEST_LAUNCH_SUMMARY:-}" ] && printf '%s\n' "${summary[@]}" >> "$HVDKIT_TEST_LAUNCH_SUMMARY"
if [ ${#failures[@]} -gt 0 ]; then
  printf 'parallel test launches failed: %s\n' "${failures[@]}" >&2
  exit 1
fi
echo "all parallel test launches passed"
