"""``hvdkit run`` starts real ranks, passes on the job's exit code, and keeps TensorFlow's start-up
logs out of the ranks' output unless the user asks for them."""
import os
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO

LAUNCHERS = ["--mpi", "--gloo"]

RANK_ONE_EXITS_3 = textwrap.dedent("""
    import os, sys, time
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK") or os.environ["HOROVOD_RANK"])
    if rank == 1:
        sys.exit(3)
    time.sleep(120)  # only the launcher's kill ends rank 0 in time
""")

RANK_ONE_EXITS_IN_HOROVOD = textwrap.dedent("""
    import sys
    import horovod.torch as hvd
    import torch
    hvd.init()
    if hvd.rank() == 1:
        sys.exit(3)
    hvd.allreduce(torch.ones(1), name="never.completes")  # rank 1 never joins
""")

REPORT_RANK = textwrap.dedent("""
    import os, horovod.torch as hvd
    hvd.init()
    with open(os.path.join(os.environ["OUT_DIR"], f"rank{hvd.rank()}"), "w") as f:
        f.write(f"{hvd.size()} {os.environ['HVDKIT_TEST_MARK']}")
""")


def run_timed(hvdkit_cli, tmp_path, launcher, source):
    script = tmp_path / "job.py"
    script.write_text(source)
    started = time.monotonic()
    result = hvdkit_cli(["run", "-np", "2", launcher, "--", sys.executable, str(script)], timeout=60)
    return result, time.monotonic() - started


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_exit_code_of_a_failing_rank_is_passed_on(hvdkit_cli, tmp_path, launcher):
    result, elapsed = run_timed(hvdkit_cli, tmp_path, launcher, RANK_ONE_EXITS_3)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "rank 1 exited with code 3" in result.stderr
    assert elapsed < 30, f"the job took {elapsed:.1f} s to end after rank 1 exited"


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_rank_leaving_horovod_ends_the_job(hvdkit_cli, tmp_path, launcher):
    """Rank 0 waits in an allreduce that rank 1 never joins: the job must still
    end, with a failure, in bounded time."""
    result, elapsed = run_timed(hvdkit_cli, tmp_path, launcher, RANK_ONE_EXITS_IN_HOROVOD)
    assert result.returncode != 0, result.stdout + result.stderr
    assert elapsed < 30, f"the job took {elapsed:.1f} s to end after rank 1 exited"


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_every_rank_runs_with_the_callers_environment(hvdkit_cli, tmp_path, launcher):
    script = tmp_path / "report.py"
    script.write_text(REPORT_RANK)
    result = hvdkit_cli(["run", "-np", "2", launcher, "--", sys.executable, str(script)],
                        env={"OUT_DIR": str(tmp_path), "HVDKIT_TEST_MARK": "marked"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.glob("rank*")) == ["rank0", "rank1"]
    assert {p.read_text() for p in tmp_path.glob("rank*")} == {"2 marked"}


def test_bad_option_exits_2_with_the_option_named(hvdkit_cli):
    result = hvdkit_cli(["run", "-np", "3", "-H", "localhost:1", "--", "true"])
    assert result.returncode == 2
    assert "-np 3 needs 3 slots" in result.stderr


# Each rank imports TensorFlow and reports the log level it sees.
IMPORT_TENSORFLOW = ("import os, tensorflow; "
                     "print('rank sees TF_CPP_MIN_LOG_LEVEL=' + os.environ.get('TF_CPP_MIN_LOG_LEVEL', '<unset>'))")
TF_STARTUP = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on",
              "To enable the following instructions")


def run_one_rank(level):
    """``hvdkit run -np 1`` of IMPORT_TENSORFLOW with TF_CPP_MIN_LOG_LEVEL at ``level`` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    return subprocess.run([sys.executable, "-m", "hvdkit", "run", "-np", "1", "--", sys.executable, "-c",
                           IMPORT_TENSORFLOW], capture_output=True, text=True, timeout=180, env=env, cwd=REPO)


def test_ranks_print_no_tensorflow_startup_logs_and_keep_the_users_level():
    shown = run_one_rank("0")
    assert (shown.returncode, shown.stdout) == (0, "rank sees TF_CPP_MIN_LOG_LEVEL=0\n"), shown.stderr
    quiet = run_one_rank(None)
    assert (quiet.returncode, quiet.stdout) == (0, "rank sees TF_CPP_MIN_LOG_LEVEL=2\n"), quiet.stderr
    assert [text for text in TF_STARTUP if text in quiet.stderr] == [], quiet.stderr
    if not any(text in shown.stderr for text in TF_STARTUP):
        pytest.skip("with TF_CPP_MIN_LOG_LEVEL=0 TensorFlow printed none of its start-up lines on this machine, "
                    "so their absence above proves nothing")
