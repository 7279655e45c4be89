"""Fault injection: a rank that raises, is SIGKILLed, stops (SIGSTOP) or skips
a collective must end the whole job promptly, with the rank named, and leave no
process, /dev/shm segment or temporary file of the job behind.

Each job runs under an outer timeout (a hang fails the test, and the test then
kills that job's processes, found by a marker in their environment). The
injected rank is found through the process ids ``hvdkit.runtime.rank_status``
recorded, and the job's files are watched through its own processes'
``/proc`` entries, so jobs of others running beside these are never touched.
"""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARK = "HVDKIT_FAULT_TEST"  # in every process of a test's job (the environment is inherited)
START_TIMEOUT = 180  # seconds for the ranks to start; generous: the 2-core machine is shared
END_LIMIT = 40  # seconds from the fault to the launcher's exit (issue 8)
# Caches meant to outlive a run, which a process may create under TMPDIR: PyTorch's
# compile cache directory (torchinductor_<user>, created when torch is imported).
PERSISTENT_CACHES = ("torchinductor_",)
# What the job maps but did not create: the checkout and its virtualenv (a clone may live under /tmp).
INSTALLED = tuple(os.path.realpath(d) + os.sep for d in {REPO, sys.prefix})
SHORT_STALL = {"HOROVOD_STALL_CHECK_TIME_SECONDS": "2", "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "4"}

pytestmark = pytest.mark.timeout(START_TIMEOUT + 2 * END_LIMIT + 60)

# Every rank sums (rank + 1) with the others and checks the total against what
# one process computes; then, as FAULT_MODE says, rank FAULT_RANK raises, or
# skips the next collective, while the others keep reducing (the test kills or
# stops a rank from outside in mode "loop").
PROGRAM = textwrap.dedent("""
    import os, time
    import torch
    import hvdkit.torch as hvd

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    mode, victim = os.environ["FAULT_MODE"], int(os.environ["FAULT_RANK"])
    expected = torch.full((4,), size * (size + 1) / 2.0)

    def reduce(name):
        total = hvd.allreduce(torch.full((4,), rank + 1.0), op=hvd.Sum, name=name)
        if not torch.equal(total, expected):
            raise AssertionError(f"allreduce {name}: {total.tolist()}, expected {expected.tolist()}")

    for i in range(3):
        reduce(f"step{i}")
    ready = os.path.join(os.environ["READY_DIR"], f"rank{rank}")
    with open(ready + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(ready + ".tmp", ready)
    if rank == victim and mode == "raise":
        time.sleep(1)  # the others are waiting in the next allreduce by then
        raise ValueError(f"injected failure on rank {rank}")
    if rank == victim and mode == "skip":
        time.sleep(600)  # never joins the allreduce the others wait in
    if mode == "skip":
        reduce("skipped.by.victim")
    i = 0
    while True:
        reduce(f"loop{i % 4}")
        i += 1
        time.sleep(0.01)
""")


def _start_time(pid):
    """The process's start time in clock ticks (tells a reused pid apart), or None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == b"Z" else int(fields[19])


def _command(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


def _environ(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


class Job:
    """One ``python -m hvdkit ...`` run with its own temporary directory and marker."""

    def __init__(self, tmp_path, argv, env=None):
        self.marker = f"{MARK}={uuid.uuid4().hex}".encode()
        self.tmpdir = tmp_path / "job-tmp"  # TMPDIR of every process of the job
        self.ready_dir = tmp_path / "ready"
        self.tmpdir.mkdir()
        self.ready_dir.mkdir()
        self.out_path, self.err_path = tmp_path / "stdout", tmp_path / "stderr"
        full_env = dict(os.environ, TMPDIR=str(self.tmpdir), READY_DIR=str(self.ready_dir),
                        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        full_env.update(env or {})
        full_env[MARK] = self.marker.split(b"=", 1)[1].decode()
        self.shm_before = set(os.listdir("/dev/shm"))
        self.seen = {}  # pid -> start time, of every job process seen while it ran
        self.files = set()  # /dev/shm and temporary files the job's processes had open or mapped
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "hvdkit", *argv], cwd=REPO, env=full_env,
                                         stdout=out, stderr=err, start_new_session=True)

    def processes(self):
        """{pid: start time} of the live processes that carry this job's marker."""
        found = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and self.marker in _environ(entry):
                started = _start_time(entry)
                if started is not None:
                    found[int(entry)] = started
        return found

    def observe(self):
        """Remember the job's processes and the shared-memory and temporary files they use."""
        for pid, started in self.processes().items():
            self.seen[pid] = started
            paths = []
            try:
                with open(f"/proc/{pid}/maps") as f:
                    paths += [line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6]
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    paths.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
            self.files.update(p.replace(" (deleted)", "") for p in paths
                              if p.startswith(("/dev/shm/", "/tmp/", str(self.tmpdir)))
                              and not p.startswith(INSTALLED))

    def output(self):
        return self.out_path.read_text() + self.err_path.read_text()

    def stderr(self):
        return self.err_path.read_text()

    def wait_until(self, condition, what):
        """Wait (at most START_TIMEOUT) until ``condition()`` holds while the job runs."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the job ended (code {self.proc.returncode}) before {what}:\n" + self.output()[-4000:])
            if condition():
                self.observe()
                return
            time.sleep(0.2)
        self.kill()
        pytest.fail(f"not {what} within {START_TIMEOUT} s:\n" + self.output()[-4000:])

    def wait_ready(self, ranks):
        """Wait until every rank wrote its ready file; return their pids."""
        self.wait_until(lambda: all((self.ready_dir / f"rank{r}").exists() for r in range(ranks)),
                        "every rank was ready")
        return {r: int((self.ready_dir / f"rank{r}").read_text()) for r in range(ranks)}

    def recorded_pid(self, rank):
        """The rank's pid as ``hvdkit.runtime.rank_status`` recorded it in the launcher's status directory
        (None before the record exists)."""
        records = glob.glob(str(self.tmpdir / "hvdkit-run-*" / f"rank{rank}.pids.json"))
        assert len(records) <= 1, f"expected one status record of rank {rank}, found {records}"
        if not records:
            return None
        with open(records[0]) as f:
            return json.load(f)["pid"]

    def wait_end(self, limit):
        """Seconds until the launcher exits; a failure (after killing the job) past ``limit``."""
        started = time.monotonic()
        try:
            self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the job still ran {limit} s after the fault (a hang):\n" + self.output()[-4000:])
        return time.monotonic() - started

    def kill(self):
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)

    def assert_clean(self):
        """No process, shared-memory segment or temporary file of the job is left."""
        live = {pid: _command(pid) for pid in self.processes()}
        assert not live, f"processes of the job left running: {live}"
        survivors = [pid for pid, started in self.seen.items() if _start_time(pid) == started]
        assert not survivors, f"job processes still alive: {survivors}"
        mine = str(self.tmpdir.parent) + os.sep  # the test's own files (output, ready files) live there
        left = sorted(p for p in self.files if os.path.exists(p) and not os.path.isdir(p)
                      and (not p.startswith(mine) or p.startswith(str(self.tmpdir)))
                      and not (p.startswith("/dev/shm/") and os.path.basename(p) in self.shm_before))
        assert not left, f"files of the job left behind: {left}"
        left = [p for p in self.tmpdir.iterdir() if not p.name.startswith(PERSISTENT_CACHES)]
        assert not left, f"temporary files left: {left}"


def run_job(tmp_path, np, launcher, mode, victim, env=None):
    script = tmp_path / "job.py"
    script.write_text(PROGRAM)
    job_env = {"FAULT_MODE": mode, "FAULT_RANK": str(victim)}
    job_env.update(env or {})
    return Job(tmp_path, ["run", "-np", str(np), launcher, "--", sys.executable, str(script)], job_env)


def assert_pids_recorded(job, pids):
    for rank, pid in pids.items():
        assert job.recorded_pid(rank) == pid, f"rank {rank}: the status wrapper recorded another pid"


@pytest.mark.parametrize("launcher", ["--mpi", "--gloo"])
def test_exception_on_one_rank_aborts_the_job(tmp_path, launcher):
    job = run_job(tmp_path, 2, launcher, "raise", victim=1)
    job.wait_ready(2)
    elapsed = job.wait_end(END_LIMIT)
    err = job.stderr()
    assert job.proc.returncode == 1, job.output()
    first = err.index("[hvdkit rank ")
    assert err.startswith("[hvdkit rank 1] Traceback", first), f"rank 1's traceback is not first:\n{err}"
    assert "[hvdkit rank 1] ValueError: injected failure on rank 1" in err
    assert "hvdkit run: rank 1 raised ValueError: injected failure on rank 1" in err
    assert elapsed < END_LIMIT
    job.assert_clean()


@pytest.mark.parametrize("launcher", ["--mpi", "--gloo"])
def test_with_the_abort_hook_off_the_job_still_ends(tmp_path, launcher):
    """HVDKIT_ABORT_ON_EXCEPTION=0: Python's own excepthook prints the traceback and rank 1 exits
    through its clean-up; Horovod's shutdown there fails rank 0's pending allreduce, so the job
    still ends in bounded time, without hvdkit's tags or abort."""
    job = run_job(tmp_path, 2, launcher, "raise", victim=1, env={"HVDKIT_ABORT_ON_EXCEPTION": "0"})
    job.wait_ready(2)
    elapsed = job.wait_end(END_LIMIT)
    err = job.stderr()
    assert job.proc.returncode != 0, job.output()
    # Python's own traceback (horovodrun prefixes each line with the rank)
    assert re.search(r"^(\[1\]<stderr>:)?ValueError: injected failure on rank 1$", err, re.MULTILINE), err
    assert "[hvdkit rank " not in err, err  # hvdkit's hook never ran
    assert "hvdkit run: rank " in err, err  # the launcher still names the first rank that failed
    job.assert_clean()
    print(f"{launcher}: with the hook off, the job ended {elapsed:.1f} s after rank 1 raised")


# Both launchers at 2 ranks; 4 ranks (a rank in the middle) under mpirun only, to fit make test's budget.
@pytest.mark.parametrize("launcher, np, victim", [("--mpi", 2, 1), ("--gloo", 2, 1), ("--mpi", 4, 2)])
def test_sigkill_of_a_rank_ends_the_job(tmp_path, launcher, np, victim):
    job = run_job(tmp_path, np, launcher, "loop", victim=-1)
    pids = job.wait_ready(np)
    assert_pids_recorded(job, pids)
    if launcher == "--mpi":  # Open MPI's shared-memory transport: what the /dev/shm check must see go
        assert any(p.startswith("/dev/shm/") for p in job.files), sorted(job.files)
    os.kill(job.recorded_pid(victim), signal.SIGKILL)
    elapsed = job.wait_end(END_LIMIT)
    assert job.proc.returncode == 128 + signal.SIGKILL, job.output()
    assert f"hvdkit run: rank {victim} killed by SIGKILL" in job.stderr(), job.output()
    job.assert_clean()
    print(f"{launcher} np {np}: SIGKILL of rank {victim} -> launcher exit in {elapsed:.1f} s")


@pytest.mark.parametrize("launcher", ["--mpi", "--gloo"])
def test_stopped_rank_is_named_and_ends_the_job(tmp_path, launcher):
    """SIGSTOP freezes the whole rank, Horovod's background thread included, so
    Horovod cannot see it; the status wrapper does, and kills the rank once it
    has been stopped for HOROVOD_STALL_SHUTDOWN_TIME_SECONDS (4 s here)."""
    job = run_job(tmp_path, 2, launcher, "loop", victim=-1, env=SHORT_STALL)
    job.wait_ready(2)
    os.kill(job.recorded_pid(1), signal.SIGSTOP)
    elapsed = job.wait_end(END_LIMIT)
    err = job.stderr()
    assert job.proc.returncode != 0, job.output()
    assert "hvdkit: rank 1 (pid" in err and "was stopped by SIGSTOP" in err, err
    assert "hvdkit run: rank 1 stalled: stopped by SIGSTOP" in err, err
    assert elapsed >= 4, f"the job ended {elapsed:.1f} s after the stop, before the 4 s limit"
    job.assert_clean()


@pytest.mark.parametrize("launcher", ["--mpi", "--gloo"])
def test_rank_skipping_a_collective_is_named_and_ends_the_job(tmp_path, launcher):
    """Horovod's stall check shuts the job down, and hvdkit run names the
    stalled rank. (Under Gloo the check never fires in Horovod 0.28.1 as
    released; scripts/build_horovod.sh patches it.)"""
    job = run_job(tmp_path, 2, launcher, "skip", victim=1, env=SHORT_STALL)
    job.wait_ready(2)
    elapsed = job.wait_end(END_LIMIT)
    err = job.stderr()
    assert job.proc.returncode != 0, job.output()
    assert "1!: [allreduce.skipped.by.victim]" in err, err  # Horovod's own report
    assert "hvdkit run: rank 1 stalled: rank 1 did not join allreduce.skipped.by.victim" in err, err
    assert elapsed >= 4, f"the job ended {elapsed:.1f} s after rank 1 stopped reducing, before the 4 s limit"
    job.assert_clean()


def test_sigkill_during_hvdkit_train_ends_the_job(tmp_path):
    job = Job(tmp_path, ["train", "-np", "2", "--gloo", "--epochs", "1000", "--log-dir", str(tmp_path / "log")])
    job.wait_until(lambda: "hvdkit train:" in job.out_path.read_text()  # rank 0's banner: training starts
                   and None not in (job.recorded_pid(0), job.recorded_pid(1)), "training started")
    time.sleep(1)  # a few steps into training
    os.kill(job.recorded_pid(1), signal.SIGKILL)
    job.wait_end(END_LIMIT)
    assert job.proc.returncode == 128 + signal.SIGKILL, job.output()
    assert "hvdkit run: rank 1 killed by SIGKILL" in job.stderr(), job.output()
    job.assert_clean()
