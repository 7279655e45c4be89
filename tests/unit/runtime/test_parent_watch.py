"""hvdkit.runtime.parent_watch on single processes: how a rank's wrapper finds the processes whose death
means its launcher is gone, that it then ends the rank and everything the rank started, that the
checkpoint writer publishes nothing after that, and the pieces underneath (start times, the chain
format, killing a tree). The same with real launchers: tests/integration/test_orphans.py."""
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import psutil
import pytest

from hvdkit.runtime import job_processes
from hvdkit.runtime import parent_watch
from hvdkit.runtime import rank_status
from hvdkit.state import checkpoint
import paths  # tests/support

REPO = str(paths.REPO)
MARK = "HVDKIT_PARENT_WATCH_TEST"  # in the environment of every process a test starts
LIMIT = 5.0  # seconds for a watch to act: POLL_SECONDS is 0.25, the rest is slack for a loaded machine

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def marker():
    """A unique value of MARK; whatever still carries it at the end is killed (by pid, ours only)."""
    value = uuid.uuid4().hex
    yield value
    for pid, _ in job_processes.find(MARK, value).items():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _env(marker, **extra):
    return dict(os.environ, PYTHONPATH=REPO, **{MARK: marker}, **extra)


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} (after {timeout} s)"
        time.sleep(0.02)
    return time.monotonic()


def _gone(pid, started):
    """Exited (or a zombie), judged by psutil: the oracle for parent_watch's own /proc reading."""
    try:
        proc = psutil.Process(pid)
        return proc.create_time() != started or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _read_json(path, timeout=60):
    _wait(lambda: os.path.exists(path), timeout, f"{path} never appeared")
    with open(path) as f:
        return json.load(f)


def _write_json_code(path, expression):
    """Python code (one line) that writes ``expression`` to ``path`` atomically."""
    temp = str(path) + ".tmp"
    return (f"import json, os; f = open({temp!r}, 'w'); json.dump({expression}, f); f.close(); "
            f"os.replace({temp!r}, {str(path)!r})")


# ---------------------------------------------------------------- the pieces


def test_start_ticks_agree_with_psutil_and_a_zombie_counts_as_gone():
    boot = psutil.boot_time()
    ticks = os.sysconf("SC_CLK_TCK")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(child.pid).create_time()
    assert boot + parent_watch.start_ticks(child.pid) / ticks == pytest.approx(started, abs=2.0 / ticks)
    _wait(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, 30, "the child never exited")
    assert parent_watch.start_ticks(child.pid) is None  # not reaped yet: a zombie
    child.wait()
    assert parent_watch.start_ticks(child.pid) is None and parent_watch.identity(child.pid) is None


def test_a_chain_reads_back_and_a_malformed_one_is_named():
    chain = [(12, 3456), (7, 89)]
    assert parent_watch.parse_chain(parent_watch.format_chain(chain)) == chain
    assert parent_watch.parse_chain("") == [] and parent_watch.parse_chain(None) == []
    with pytest.raises(ValueError, match=r"HVDKIT_LAUNCHER_CHAIN: expected 'pid:start,...', got '12:x'"):
        parent_watch.parse_chain("12:x")


def test_a_reused_pid_is_no_alibi():
    me = (os.getpid(), parent_watch.start_ticks(os.getpid()))
    assert parent_watch.alive([me]) is None
    assert parent_watch.alive([me, (me[0], me[1] - 1)]) == (me[0], me[1] - 1)


def test_kill_tree_reaches_grandchildren_a_killed_parent_would_orphan(tmp_path, marker):
    # root -> child -> grandchild, each reporting its pid; killing the root alone would leave the others.
    leaf = f"import time; {_write_json_code(tmp_path / 'grandchild', 'os.getpid()')}; time.sleep(600)"
    middle = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {leaf!r}]); "
              f"{_write_json_code(tmp_path / 'child', 'os.getpid()')}; time.sleep(600)")
    root = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys, time; "
                             f"subprocess.Popen([sys.executable, '-c', {middle!r}]); time.sleep(600)"],
                            env=_env(marker))
    pids = [root.pid, _read_json(tmp_path / "child"), _read_json(tmp_path / "grandchild")]
    starts = [psutil.Process(pid).create_time() for pid in pids]
    assert sorted(job_processes.kill_tree(root.pid)) == sorted(pids)
    assert root.wait(timeout=30) == -signal.SIGKILL
    _wait(lambda: all(_gone(p, s) for p, s in zip(pids, starts)), LIMIT, "a process of the tree outlived kill_tree")


def test_the_launcher_tool_gets_sigterm_when_hvdkit_run_dies(tmp_path, marker):
    # hvdkit run (here: a process calling launcher.run) killed with SIGKILL; the tool it ran (here: a
    # stand-in for mpirun) hears of it by SIGTERM, and was told hvdkit run's identity.
    tool = (f"import os, signal, time\n"
            f"def note(signum, frame):\n"
            f"    {_write_json_code(tmp_path / 'got', 'signum')}\n"
            f"    os._exit(0)\n"
            f"signal.signal(signal.SIGTERM, note)\n"
            f"{_write_json_code(tmp_path / 'told', 'os.environ[' + repr(parent_watch.LAUNCHER_VARIABLE) + ']')}\n"
            f"time.sleep(600)\n")
    runner = subprocess.Popen([sys.executable, "-c", "import os, sys; from hvdkit.runtime import launcher; "
                               "launcher.run([sys.executable, '-c', sys.argv[1]], dict(os.environ))", tool],
                              env=_env(marker), cwd=REPO)
    assert _read_json(tmp_path / "told") == f"{runner.pid}:{parent_watch.start_ticks(runner.pid)}"
    runner.kill()
    runner.wait(timeout=30)
    # the kernel signals at once, but the tool must then be scheduled: once in a CI run of the unit tests on two
    # busy xdist workers it had not written within 5 s, so this bound is a loaded machine's, not the watch's
    assert _read_json(tmp_path / "got", timeout=30) == signal.SIGTERM


# ---------------------------------------------------------------- the chain a wrapper watches

# Prints parent_watch.ancestors() as the process at the bottom of a tree sees it, with and without
# a launcher identity, and its ancestors as psutil lists them.
REPORT = textwrap.dedent("""
    import json, os, sys
    import psutil
    from hvdkit.runtime import parent_watch
    mark = os.environ["HVDKIT_PARENT_WATCH_TEST"]
    print(json.dumps({
        "with_launcher": parent_watch.ancestors("HVDKIT_PARENT_WATCH_TEST", mark, os.environ.get("LAUNCHER")),
        "without": parent_watch.ancestors("HVDKIT_PARENT_WATCH_TEST", mark),
        "unmarked": parent_watch.ancestors("HVDKIT_PARENT_WATCH_TEST", "another job"),
        "parents": [[p.pid, p.create_time()] for p in psutil.Process().parents()],
    }))
""")


def test_the_chain_is_the_parent_and_the_jobs_ancestors_up_to_the_launcher(marker):
    # pytest (the "launcher", unmarked) -> sh (marked) -> sh (marked) -> python: the walk passes the
    # marked shells, includes pytest as the launcher and stops there; unmarked, it keeps the parent only.
    me = parent_watch.identity(os.getpid())
    inner = f"{shlex.quote(sys.executable)} -c {shlex.quote(REPORT)}; exit $?"  # "; exit": sh must not exec
    out = subprocess.run(["sh", "-c", f"sh -c {shlex.quote(inner)}; exit $?"], env=_env(marker, LAUNCHER=me),
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    parents = [pid for pid, _ in seen["parents"]]
    assert parents[2] == os.getpid()
    ticks = os.sysconf("SC_CLK_TCK")
    for pid, start in seen["with_launcher"]:  # each start time is the process's own (psutil's)
        created = next(c for p, c in seen["parents"] if p == pid)
        assert psutil.boot_time() + start / ticks == pytest.approx(created, abs=2.0 / ticks)
    assert [pid for pid, _ in seen["with_launcher"]] == parents[:3]
    assert [pid for pid, _ in seen["without"]] == parents[:2]  # pytest is not marked
    assert [pid for pid, _ in seen["unmarked"]] == parents[:1]  # the parent always


# ---------------------------------------------------------------- the wrapper ends an orphaned rank

# The rank: starts a grandchild, reports both pids, then tries to write a checkpoint every 20 ms
# through hvdkit.state.checkpoint, noting each outcome.
RANK = textwrap.dedent("""
    import json, os, subprocess, sys, time
    from hvdkit.state import checkpoint

    class Raw(checkpoint.Codec):
        extension, name = "raw", "bytes"
        def dumps(self, payload): return payload
        def loads(self, data): return data

    out = sys.argv[1]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(out + "/pids.tmp", "w") as f:
        json.dump({"rank": os.getpid(), "grandchild": child.pid}, f)
    os.replace(out + "/pids.tmp", out + "/pids")
    step = 0
    while True:
        try:
            checkpoint.save(out + "/ckpt", step, b"x" * 1000, codec=Raw())
            step += 1
        except checkpoint.CheckpointError as err:
            with open(out + "/refused", "w") as f:
                f.write(str(err))
        time.sleep(0.02)
""")

# The intermediate "launcher" (a stand-in for mpirun): starts the wrapper, with its stderr in a file so
# that only the chain can tell the wrapper anything, and sleeps.
MIDDLE = textwrap.dedent("""
    import os, subprocess, sys, time
    from hvdkit.runtime import parent_watch
    if sys.argv[4] == "launcher":  # as hvdkit run does: the wrappers' chain walk stops here
        os.environ[parent_watch.LAUNCHER_VARIABLE] = parent_watch.identity(os.getpid())
    out, status_dir, rank = sys.argv[1:4]
    subprocess.Popen([sys.executable, "-m", "hvdkit.runtime.rank_status", status_dir, "--",
                      sys.executable, "-c", rank, out], stderr=open(out + "/wrapper.err", "w"))
    time.sleep(600)
""")


def _rank_processes(out):
    pids = _read_json(out / "pids")
    wrapper = psutil.Process(pids["rank"]).ppid()
    return {pid: psutil.Process(pid).create_time() for pid in (wrapper, pids["rank"], pids["grandchild"])}


def _ckpt_state(out):
    folder = out / "ckpt"
    return {name: os.stat(folder / name).st_mtime_ns for name in os.listdir(folder)}


def test_a_rank_ends_when_the_process_above_its_wrapper_dies(tmp_path, marker):
    status_dir = tmp_path / "status"
    status_dir.mkdir()
    middle = subprocess.Popen([sys.executable, "-c", MIDDLE, str(tmp_path), str(status_dir), RANK, "middle"],
                              env=_env(marker, HOROVOD_RANK="1", **{rank_status.STATUS_DIR_VARIABLE: str(status_dir)}),
                              cwd=REPO)
    procs = _rank_processes(tmp_path)
    _wait(lambda: (tmp_path / "ckpt" / checkpoint.LATEST).exists(), 60, "the rank never wrote a checkpoint")
    assert not (tmp_path / "refused").exists()
    middle.kill()
    middle.wait(timeout=30)
    killed = time.monotonic()
    before = _ckpt_state(tmp_path)
    ended = _wait(lambda: all(_gone(pid, start) for pid, start in procs.items()), LIMIT,
                  "the wrapper, its rank or the rank's child outlived the process above the wrapper")
    assert ended - killed < LIMIT
    assert _ckpt_state(tmp_path) == before, "a checkpoint was written after the launcher died"
    err = (tmp_path / "wrapper.err").read_text()
    assert f"hvdkit: rank 1 (pid {list(procs)[1]}): its parent (pid {middle.pid}) is gone" in err, err
    assert "kills the rank and everything it started" in err


def test_a_rank_ends_when_nobody_reads_its_wrappers_stderr(tmp_path, marker):
    # The wrapper's parent (this process) lives on; its stderr pipe's reader goes, as when the ssh
    # connection of a remote node's launcher closes.
    wrapper = subprocess.Popen([sys.executable, "-m", "hvdkit.runtime.rank_status", str(tmp_path / "none"), "--",
                                sys.executable, "-c", RANK, str(tmp_path)],
                               env=_env(marker, HOROVOD_RANK="1"), cwd=REPO, stderr=subprocess.PIPE)
    procs = _rank_processes(tmp_path)
    _wait(lambda: (tmp_path / "ckpt" / checkpoint.LATEST).exists(), 60, "the rank never wrote a checkpoint")
    assert wrapper.poll() is None
    wrapper.stderr.close()
    wrapper.wait(timeout=LIMIT)
    _wait(lambda: all(_gone(pid, start) for pid, start in procs.items()), LIMIT,
          "the rank or its child outlived a wrapper whose stderr nobody read")
    assert wrapper.returncode == 128 + signal.SIGKILL


def test_the_status_directory_goes_with_a_dead_launcher(tmp_path, marker):
    # The wrapper's chain ends at the launcher (this test's intermediate process, named as
    # HVDKIT_LAUNCHER_PID); once it is dead nobody will remove its status directory, so the wrapper does.
    status_dir = tmp_path / "status"
    status_dir.mkdir()
    (status_dir / "rank0.json").write_text("{}")
    middle = subprocess.Popen([sys.executable, "-c", MIDDLE, str(tmp_path), str(status_dir), RANK, "launcher"],
                              env=_env(marker, HOROVOD_RANK="1", **{rank_status.STATUS_DIR_VARIABLE: str(status_dir)}),
                              cwd=REPO)
    procs = _rank_processes(tmp_path)
    middle.kill()
    middle.wait(timeout=30)
    _wait(lambda: all(_gone(pid, start) for pid, start in procs.items()), LIMIT, "the rank outlived its launcher")
    _wait(lambda: not status_dir.exists(), LIMIT, "the dead launcher's status directory was left behind")


# ---------------------------------------------------------------- the checkpoint writer's guard


class Raw(checkpoint.Codec):
    extension, name = "raw", "bytes"

    def dumps(self, payload):
        return payload

    def loads(self, data):
        return data


def _dead_process():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    start = parent_watch.start_ticks(child.pid)
    child.wait()
    return child.pid, start


def test_launcher_gone_looks_at_the_chain_afresh(monkeypatch):
    parent = (os.getppid(), parent_watch.start_ticks(os.getppid()))
    assert parent_watch.launcher_gone({}) is None  # not started by hvdkit run: nothing known
    live = {parent_watch.CHAIN_VARIABLE: parent_watch.format_chain([parent])}
    assert parent_watch.launcher_gone(live) is None
    dead = _dead_process()
    gone = parent_watch.launcher_gone({parent_watch.CHAIN_VARIABLE: parent_watch.format_chain([parent, dead])})
    assert gone.startswith(f"pid {dead[0]} of its launcher's chain")
    reused = {parent_watch.CHAIN_VARIABLE: parent_watch.format_chain([(parent[0], parent[1] + 1)])}
    assert parent_watch.launcher_gone(reused).startswith(f"pid {parent[0]} of its launcher's chain")


def test_no_checkpoint_is_written_once_the_launcher_is_gone(tmp_path, monkeypatch):
    parent = (os.getppid(), parent_watch.start_ticks(os.getppid()))
    monkeypatch.setenv(parent_watch.CHAIN_VARIABLE, parent_watch.format_chain([parent]))
    checkpoint.save(tmp_path, 1, b"one", codec=Raw())
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    assert set(before) == {"ckpt-00000001.raw", checkpoint.LATEST}
    dead = _dead_process()
    monkeypatch.setenv(parent_watch.CHAIN_VARIABLE, parent_watch.format_chain([parent, dead]))
    with pytest.raises(checkpoint.CheckpointError, match=r"not writing checkpoint file 'ckpt-00000002.raw'.*"
                                                         r"launcher is gone"):
        checkpoint.save(tmp_path, 2, b"two", codec=Raw())
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


def test_a_launcher_lost_while_the_file_is_written_publishes_nothing(tmp_path, monkeypatch):
    answers = iter([None, "pid 1 of its launcher's chain (1:1) is gone"])  # alive before the write, gone after
    monkeypatch.setattr(parent_watch, "launcher_gone", lambda: next(answers))
    with pytest.raises(checkpoint.CheckpointError, match="launcher is gone"):
        checkpoint.save(tmp_path, 3, b"three", codec=Raw())
    assert os.listdir(tmp_path) == []  # not even the temporary
