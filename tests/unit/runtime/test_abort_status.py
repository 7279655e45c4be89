"""hvdkit.runtime.rank_status (the per-rank wrapper of ``hvdkit run``) and hvdkit.runtime.job_processes, on
single processes: what they record, whom the launcher blames, and that stopped or orphaned
ranks do not outlive the job."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from hvdkit.runtime import job_processes
from hvdkit.runtime import rank_status
import paths  # tests/support

REPO = str(paths.REPO)

# Horovod 0.28.1's coordinator log (stall_inspector.cc) as a rank's stderr carries it:
# a warning first, then the report that shuts the job down.
HOROVOD_STALL_LOG = textwrap.dedent("""\
    [2026-11-22 21:38:13.974861: W /horovod/common/stall_inspector.cc:107] One or more tensors were submitted to \
be reduced, gathered or broadcasted by subset of ranks and are waiting for remainder of ranks for more than 2 seconds.
    Missing ranks:
    1: [allreduce.skipped]
    [2026-11-22 21:38:15.974861: E /horovod/common/stall_inspector.cc:105] One or more tensors were submitted to \
be reduced, gathered or broadcasted by subset of ranks and are waiting for remainder of ranks for more than 2 seconds.
    Missing ranks:
    0: [allreduce.b]
    1!: [allreduce.skipped, allreduce.x]
    3!: [allreduce.y]
    One or more rank (marked by "!") is stalled for longer than 4 seconds. Will shutdown.
""")


def test_scanner_reads_the_ranks_horovod_marks_for_shutdown():
    scanner = rank_status.StallLogScanner()
    found = [scanner.feed(line) for line in HOROVOD_STALL_LOG.splitlines()]
    assert [f for f in found if f] == [({1: ["allreduce.skipped", "allreduce.x"], 3: ["allreduce.y"]}, 4)]


def test_a_warning_alone_is_no_shutdown():
    scanner = rank_status.StallLogScanner()
    warning = HOROVOD_STALL_LOG.splitlines()[:3] + ["ordinary output"]
    assert not any(scanner.feed(line) for line in warning)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        self.now += 1.0
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(rank_status.time, "time", fake)
    return fake


def test_the_first_failure_is_blamed_not_the_ranks_terminated_after_it(tmp_path, clock):
    rank_status.record(tmp_path, 2, -signal.SIGKILL)
    rank_status.record(tmp_path, 0, -signal.SIGTERM)
    rank_status.record(tmp_path, 1, 0)
    assert rank_status.culprit(tmp_path) == (2, "rank 2 killed by SIGKILL (signal 9)")
    assert rank_status.first_failure(tmp_path)["returncode"] == -signal.SIGKILL


def test_an_exception_is_named_with_its_message(tmp_path, clock):
    rank_status.record_exception(tmp_path, 1, "ValueError", "bad learning rate -1")
    rank_status.record(tmp_path, 0, -signal.SIGTERM)
    rank_status.record(tmp_path, 1, 1)
    rank, message = rank_status.culprit(tmp_path)
    assert rank == 1
    assert message.startswith("rank 1 raised ValueError: bad learning rate -1 (its traceback is above")


def test_a_killed_rank_is_blamed_before_the_peer_that_raised_as_its_sockets_closed(tmp_path, clock):
    rank_status.record_exception(tmp_path, 0, "RuntimeError", "Connection reset by peer")
    rank_status.record(tmp_path, 1, -signal.SIGKILL)  # its wrapper recorded the death a second later
    rank_status.record(tmp_path, 0, 1)
    assert rank_status.culprit(tmp_path) == (1, "rank 1 killed by SIGKILL (signal 9)")
    assert rank_status.first_failure(tmp_path)["returncode"] == -signal.SIGKILL


def test_an_exception_well_before_a_kill_is_still_the_cause(tmp_path, clock):
    rank_status.record_exception(tmp_path, 0, "ValueError", "bad batch size 0")
    clock.now += rank_status.KILLED_WINDOW_SECONDS
    rank_status.record(tmp_path, 1, -signal.SIGKILL)
    assert rank_status.culprit(tmp_path)[0] == 0


def test_a_stalled_rank_is_blamed_before_the_ranks_that_failed_because_of_it(tmp_path, clock):
    rank_status.record(tmp_path, 0, 1)  # rank 0's HorovodInternalError came first in time
    rank_status.record_stall(tmp_path, 0, {1: ["allreduce.grad"]}, 600)
    rank, message = rank_status.culprit(tmp_path)
    assert rank == 1
    assert message.startswith("rank 1 stalled: rank 1 did not join allreduce.grad for more than 600 s")


def test_no_failure_blames_nobody(tmp_path, clock):
    rank_status.record(tmp_path, 0, 0)
    assert rank_status.culprit(tmp_path) is None and rank_status.first_failure(tmp_path) is None


def test_describe():
    assert rank_status.describe(3) == "exited with code 3"
    assert rank_status.describe(-signal.SIGKILL) == "killed by SIGKILL (signal 9)"
    assert rank_status.describe(-200) == "killed by signal 200"


def wrapper(status_dir, code, env=None, **kwargs):
    """Start ``python -m hvdkit.runtime.rank_status`` as rank 1 around ``python -c code``."""
    full = dict(os.environ, HOROVOD_RANK="1", PYTHONPATH=REPO)
    full.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "hvdkit.runtime.rank_status", str(status_dir), "--",
                             sys.executable, "-c", code], env=full, cwd=REPO, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def read(path):
    with open(path) as f:
        return json.load(f)


def wait_for(path, timeout=30):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return read(path)


STOP_SELF = "import os, signal; os.kill(os.getpid(), signal.SIGSTOP)"


def test_a_rank_left_stopped_is_killed_after_the_stall_shutdown_time(tmp_path):
    proc = wrapper(tmp_path, STOP_SELF, env={"HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "1"})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGKILL
    assert "hvdkit: rank 1 (pid" in err and "was stopped by SIGSTOP" in err and "within 1 s" in err
    exit_record = read(tmp_path / "rank1.json")
    assert exit_record["returncode"] == -signal.SIGKILL
    assert exit_record["stopped"]["signal"] == "SIGSTOP" and exit_record["stopped"]["killed_after"] >= 1
    assert not (tmp_path / "rank1.stopped.json").exists()
    rank, message = rank_status.culprit(tmp_path)
    assert (rank, message.split(" and not")[0]) == (1, "rank 1 stalled: stopped by SIGSTOP")


def test_a_resumed_rank_goes_on(tmp_path):
    proc = wrapper(tmp_path, STOP_SELF + "; import time; time.sleep(0.5); print('resumed')", env={"HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "60"},
                   stdout=subprocess.PIPE)
    wait_for(tmp_path / "rank1.stopped.json")
    os.kill(wait_for(tmp_path / "rank1.pids.json")["pid"], signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out) == (0, "resumed\n"), err
    assert "was resumed" in err
    assert "stopped" not in read(tmp_path / "rank1.json")
    assert rank_status.culprit(tmp_path) is None


def test_sigterm_reaches_a_stopped_rank_and_the_stop_is_remembered(tmp_path):
    proc = wrapper(tmp_path, STOP_SELF, env={"HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "0"})
    wait_for(tmp_path / "rank1.stopped.json")
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "hvdkit waits for it" in err
    assert read(tmp_path / "rank1.json")["stopped"]["killed_after"] is None
    assert rank_status.culprit(tmp_path)[1].startswith("rank 1 stalled: stopped by SIGSTOP")


def test_stderr_passes_through_and_a_stall_report_is_recorded(tmp_path):
    code = f"import sys; sys.stderr.write({HOROVOD_STALL_LOG!r}); sys.exit(1)"
    proc = wrapper(tmp_path, code)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err == HOROVOD_STALL_LOG
    stall = read(tmp_path / "stall1.json")
    assert stall["stalled"] == {"1": ["allreduce.skipped", "allreduce.x"], "3": ["allreduce.y"]}
    assert rank_status.culprit(tmp_path)[1].startswith("ranks 1, 3 stalled: rank 1 did not join allreduce.skipped")


def test_a_rank_dies_with_its_wrapper(tmp_path):
    proc = wrapper(tmp_path, "import time; time.sleep(120)")
    record = wait_for(tmp_path / "rank1.pids.json")
    child = record["pid"]
    assert record["start"] == job_processes.create_time(child) == _started(child)
    assert rank_status.recorded_processes(tmp_path) == {child: record["start"], proc.pid: record["wrapper_start"]}
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the rank outlived its wrapper"


def test_a_missing_status_directory_is_no_error(tmp_path):
    proc = wrapper(tmp_path / "elsewhere", "import sys; sys.exit(4)")
    proc.communicate(timeout=60)
    assert proc.returncode == 4


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _started(pid):
    """The process's start time read from /proc by hand, to within the clock tick (seconds since the
    epoch: boot time plus the start ticks of /proc/PID/stat), as a check independent of psutil."""
    with open("/proc/stat") as f:
        boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    with open(f"/proc/{pid}/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    return pytest.approx(boot + ticks / os.sysconf("SC_CLK_TCK"), abs=1e-6)


def test_job_processes_are_found_by_their_marker_and_ended(tmp_path):
    value = uuid.uuid4().hex
    marked = subprocess.Popen(["sleep", "120"], env=dict(os.environ, HVDKIT_STATUS_DIR=value))
    other = subprocess.Popen(["sleep", "120"], env=dict(os.environ, HVDKIT_STATUS_DIR=value + "x"))
    try:
        assert set(job_processes.find("HVDKIT_STATUS_DIR", value)) == {marked.pid}
        killed = job_processes.end("HVDKIT_STATUS_DIR", value, grace=0.2)
        assert list(killed) == [marked.pid] and "sleep 120" in killed[marked.pid]
        assert marked.wait(timeout=10) == -signal.SIGKILL
        assert other.poll() is None
        assert job_processes.end("HVDKIT_STATUS_DIR", value, grace=0.2) == {}
    finally:
        for proc in (marked, other):
            proc.kill()
            proc.wait()


def test_recorded_processes_are_ended_even_without_the_marker():
    """A rank in the middle of exiting no longer shows its environment; its recorded pid and
    start time still identify it (and a reused pid, with another start time, is left alone)."""
    recorded = subprocess.Popen(["sleep", "120"])
    stranger = subprocess.Popen(["sleep", "120"])
    try:
        started = job_processes.create_time(stranger.pid)
        assert started == _started(stranger.pid)
        known = {recorded.pid: job_processes.create_time(recorded.pid),
                 stranger.pid: started - 0.01}  # its pid, recorded for a process that started one tick earlier
        killed = job_processes.end("HVDKIT_STATUS_DIR", uuid.uuid4().hex, known=known, grace=0.2)
        assert list(killed) == [recorded.pid]
        assert recorded.wait(timeout=10) == -signal.SIGKILL
        assert stranger.poll() is None
    finally:
        for proc in (recorded, stranger):
            proc.kill()
            proc.wait()


def test_a_zombie_counts_as_gone_and_is_left_to_its_parent():
    """A process of the job that has exited but is not yet reaped is not waited for or killed, and
    its exit status stays with its parent."""
    value = uuid.uuid4().hex
    zombie = subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(1); sys.exit(7)"],
                              env=dict(os.environ, HVDKIT_STATUS_DIR=value))  # one process: no child of its own
    try:
        recorded = {zombie.pid: job_processes.create_time(zombie.pid)}
        # Until the child has exec'd, /proc shows the parent's environment (without the marker).
        deadline = time.monotonic() + 5
        while not job_processes.find("HVDKIT_STATUS_DIR", value) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert set(job_processes.find("HVDKIT_STATUS_DIR", value)) == {zombie.pid}
        deadline = time.monotonic() + 10
        while _alive(zombie.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(zombie.pid) and os.path.exists(f"/proc/{zombie.pid}"), "expected a zombie"
        assert job_processes.create_time(zombie.pid) is None
        started = time.monotonic()
        assert job_processes.end("HVDKIT_STATUS_DIR", value, known=recorded, grace=5) == {}
        assert time.monotonic() - started < 2, "end() waited for a zombie"
        assert zombie.wait(timeout=10) == 7
    finally:
        zombie.kill()
        zombie.wait()


def test_gone_and_unknown_pids_have_no_create_time():
    proc = subprocess.Popen(["true"])
    proc.wait(timeout=30)
    assert job_processes.create_time(proc.pid) is None
    assert job_processes.find("HVDKIT_STATUS_DIR", uuid.uuid4().hex) == {}
