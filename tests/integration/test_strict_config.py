"""Bad options and environment variables stop ``hvdkit train`` / ``run`` / ``bench`` before any rank
starts: exit code 2 within seconds, one line on stderr naming the option or variable.

Every command runs with a stand-in ``mpirun`` first on PATH that only records that it was called, so
"no rank started" is checked, not assumed (the launchers find ``mpirun`` on PATH and ``hvdkit run``
defaults to it).
"""
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO
from hvdkit.runtime import env_check

PROMPT_S = 15.0  # typically under 2 s; the margin is for a loaded 2-core machine


@pytest.fixture
def cli(tmp_path):
    """Run ``python -m hvdkit ARGS`` with ``env`` added; returns (CompletedProcess, seconds, launched)."""
    shim_dir = tmp_path / "bin"
    shim_dir.mkdir()
    marker = tmp_path / "mpirun-was-called"
    shim = shim_dir / "mpirun"
    shim.write_text(f"#!/bin/sh\ntouch {marker}\nexit 97\n")
    shim.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in env_check.RULES}
    base["PATH"] = f"{shim_dir}{os.pathsep}{base.get('PATH', '')}"

    def run(args, env=None):
        start = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "hvdkit", *args], capture_output=True, text=True, timeout=120,
                                env=dict(base, **(env or {})), cwd=REPO)
        return result, time.monotonic() - start, marker.exists()

    return run


def assert_refused(outcome, *expected, one_line=True):
    result, seconds, launched = outcome
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert not launched, "a launcher was started"
    assert seconds < PROMPT_S, f"took {seconds:.1f} s to refuse"
    for text in expected:
        assert text in result.stderr, result.stderr
    if one_line:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


TRAIN_FLAGS = [
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--epochs", "ten"], "argument --epochs: invalid int value: 'ten'"),
    (["--batch-size", "-8"], "--batch-size must be >= 1, got -8"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--momentum", "1.5"], "--momentum must be in [0, 1), got 1.5"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**63), got -1"),
    (["-np", "0"], "-np must be >= 1, got 0"),
    (["-np", "4", "--ranks-per-node", "3"], "--ranks-per-node 3 does not divide -np 4"),
    (["--average-every", "0"], "--average-every must be >= 1, got 0"),
    (["--average-warmup", "20"], "--average-warmup 20 needs --average-every H"),
    (["--average-every", "4", "--compression", "topk:0.01"], "--compression topk:0.01 would never run"),
    (["--compression", "topk:2"], "--compression: "),
    (["--hierarchical"], "--hierarchical: hvdkit train starts every rank on this host"),
    (["-np", "4", "--ranks-per-node", "4", "--hierarchical"], "--hierarchical needs several nodes of several ranks"),
    (["--checkpoint", "/proc/hvdkit-nope"], "--checkpoint '/proc/hvdkit-nope' is not a writable directory"),
]


@pytest.mark.parametrize("flags,message", TRAIN_FLAGS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_train_refuses_bad_flags(cli, tmp_path, flags, message):
    assert_refused(cli(["train", "--log-dir", str(tmp_path / "logs"), *flags]), message)
    assert not (tmp_path / "logs" / "metrics.jsonl").exists()


BAD_ENVIRONMENTS = [
    ({"HOROVOD_CYCLE_TIME": "fast"}, "HOROVOD_CYCLE_TIME='fast': expected a number of milliseconds >= 0"),
    ({"HOROVOD_FUSION_THRESHOLD": "-1"}, "HOROVOD_FUSION_THRESHOLD='-1': expected an integer number of bytes >= 0"),
    ({"HOROVOD_STALL_CHECK_TIME_SECONDS": "1m"}, "HOROVOD_STALL_CHECK_TIME_SECONDS='1m': expected an integer"),
    ({"HOROVOD_STALL_CHECK_TIME_SECONDS": "30", "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "10"},
     "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS=10 is less than HOROVOD_STALL_CHECK_TIME_SECONDS=30"),
    ({"HVDKIT_RANKS_PER_NODE": "3"}, "HVDKIT_RANKS_PER_NODE='3' does not divide the 4 ranks; expected one of 1, 2, 4"),
    ({"HVDKIT_RANKS_PER_NODE": "two"}, "HVDKIT_RANKS_PER_NODE='two': expected a positive integer"),
    ({"OMPI_MCA_mpi_yield_when_idle": "maybe"}, "OMPI_MCA_mpi_yield_when_idle='maybe': expected one of 0, 1"),
    ({"HVDKIT_CPU_ISA": "avx3"}, "HVDKIT_CPU_ISA='avx3': expected one of avx512, avx2, scalar"),
    ({"HVDKIT_ABORT_ON_EXCEPTION": "yes"}, "HVDKIT_ABORT_ON_EXCEPTION='yes': expected 1 (the default: an uncaught "
                                           "exception on a rank aborts the job) or 0"),
    ({"TF_CPP_MIN_LOG_LEVEL": "quiet"}, "TF_CPP_MIN_LOG_LEVEL='quiet': expected an integer >= 0"),
]
# What hvdkit run checks beyond the launch itself: the Horovod settings, the layout, and the ranks' own variables.
RUN_BAD_ENVIRONMENTS = BAD_ENVIRONMENTS[:5] + BAD_ENVIRONMENTS[-2:]


@pytest.mark.parametrize("env,message", BAD_ENVIRONMENTS, ids=lambda v: ",".join(v) if isinstance(v, dict) else None)
def test_train_refuses_bad_environment_variables(cli, tmp_path, env, message):
    assert_refused(cli(["train", "-np", "4", "--log-dir", str(tmp_path)], env), message)


@pytest.mark.parametrize("env,message", RUN_BAD_ENVIRONMENTS, ids=lambda v: ",".join(v) if isinstance(v, dict)
                         else None)
def test_run_refuses_bad_environment_variables(cli, env, message):
    assert_refused(cli(["run", "-np", "4", "--", sys.executable, "-c", "pass"], env), message)


@pytest.mark.parametrize("args,message", [
    (["-np", "0"], "-np must be >= 1, got 0"),
    (["-np", "two"], "argument -np/--num-proc: invalid int value: 'two'"),
    (["-np", "4", "--ranks-per-node", "3"], "--ranks-per-node 3 must be >= 1 and divide -np 4"),
    (["-np", "2", "-H", "localhost:x"], "-H/--hosts: slots 'x' of host 'localhost' is not an integer"),
])
def test_run_refuses_bad_options(cli, args, message):
    assert_refused(cli(["run", *args, "--", sys.executable, "-c", "pass"]), message)


def test_a_valid_environment_reaches_the_launcher(cli, tmp_path):
    """The stand-in mpirun proves the checks above stopped the run themselves."""
    result, _, launched = cli(["run", "-np", "2", "--", sys.executable, "-c", "pass"],
                              {"HOROVOD_CYCLE_TIME": "0.5", "HVDKIT_RANKS_PER_NODE": "2"})
    assert launched and result.returncode == 97, result.stderr


@pytest.mark.parametrize("args,message", [
    (["nope"], "unknown benchmark 'nope'; choose one of"),
    (["allreduce", "--split", "0"], "--split must be >= 1, got 0"),
    (["synthetic", "--np", "1,0"], "--np"),
])
def test_bench_refuses_bad_names_and_flags(cli, args, message):
    # The benchmark scripts report through argparse (usage line, then the error): exit 2, the option named.
    assert_refused(cli(["bench", *args]), message, one_line=args == ["nope"])
