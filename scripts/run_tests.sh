#!/usr/bin/env bash
# The whole test suite, in the order that fails fastest: single-process unit
# tests, then tests that start launchers from one process, then the tests that
# run inside every rank under mpirun and horovodrun. Every stage prints its
# slowest tests and the reason of every skip; a summary of the stages' wall
# times (and the parallel launches') ends the run.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
activate_venv

durations="${HVDKIT_TEST_DURATIONS:-10}"
export HVDKIT_TEST_DURATIONS="$durations"  # the parallel launches list theirs too
passed=0
failed=0
summary=()
stage() {  # name, command...
  local name="$1"; shift
  echo "=== stage: $name"
  local start=$SECONDS status=passed
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); status=FAILED; echo "=== stage FAILED: $name" >&2; fi
  summary+=("$(printf '%5d s  %-6s  %s' $((SECONDS - start)) "$status" "$name")")
}

# tests/integration/test_cluster.py makes an emulated cluster: an sshd per node, links shaped
# with tc. Only root can make one (the tests skip otherwise, saying so), so only root installs them.
if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null \
    && { [ ! -x /usr/sbin/sshd ] || ! command -v tc > /dev/null; }; then
  note "installing openssh-server and iproute2 for the emulated-cluster tests"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server iproute2; } \
    > /tmp/hvdkit-apt-cluster.log 2>&1 || { tail -n 20 /tmp/hvdkit-apt-cluster.log >&2; exit 1; }
fi

launches="$(mktemp)"  # the parallel script writes its launches' times here
trap 'rm -f "$launches"' EXIT
start_all=$SECONDS
# Two processes at a time (HVDKIT_TEST_WORKERS=0 runs everything in turn): the unit tests are
# independent and use both cores; the launcher tests spend much of their time waiting (for a stall
# limit, a killed rank's report, an elastic rendezvous), not computing, so two files run at once.
workers="${HVDKIT_TEST_WORKERS:-2}"
stage unit python -m pytest -q --durations="$durations" -n "$workers" tests/unit
stage integration python -m pytest -q --durations="$durations" -n "$workers" --dist loadfile tests/integration
HVDKIT_TEST_LAUNCH_SUMMARY="$launches" stage parallel bash scripts/run_parallel_tests.sh
echo "=== stages (wall time):"
printf '  %s\n' "${summary[@]}"
sed 's/^/           /' "$launches"
printf '  %5d s  total\n' $((SECONDS - start_all))
echo "stages: $passed passed, $failed failed"
[ "$failed" = 0 ]
