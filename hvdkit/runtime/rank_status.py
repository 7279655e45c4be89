"""Run one rank's command, watch it, and record how it ended.

``horovodrun`` reports a failed job with exit code 1 whatever the rank's own
code was, and ``mpirun`` reports whichever rank it noticed first, often a
healthy rank that Horovod's shutdown made fail. ``hvdkit run`` starts each
rank through this wrapper, which

* records the rank's process ids at start and its exit code and time at the
  end, so the launcher can name the rank that failed first and check that no
  process of the job is left;
* kills the rank if the wrapper dies (even by SIGKILL), and kills the rank
  and all it started when the launcher dies (:mod:`hvdkit.runtime.parent_watch`),
  so no rank outlives its launcher;
* notices when the rank is stopped (SIGSTOP, SIGTSTP): a stopped rank blocks
  every peer in its next collective, and under MPI Horovod's own stall check
  cannot see it (the coordinator is itself blocked in MPI), so after
  ``HOROVOD_STALL_SHUTDOWN_TIME_SECONDS`` without a SIGCONT the wrapper kills
  it, which ends the job;
* copies the rank's stderr through, picking out Horovod's stall-shutdown
  report so the launcher can name the stalled rank, and dropping the
  start-up lines TensorFlow prints before it reads ``TF_CPP_MIN_LOG_LEVEL``
  when that level hides INFO (:mod:`hvdkit.runtime.tf_log`).

    python -m hvdkit.runtime.rank_status STATUS_DIR -- command ...

The other records (``record_exception``) come from :mod:`hvdkit.runtime.abort` in
the rank; :func:`culprit` reads them all back for the launcher.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from hvdkit.runtime import parent_watch
from hvdkit.runtime import tf_log

STATUS_DIR_VARIABLE = "HVDKIT_STATUS_DIR"  # set for the rank (hvdkit.runtime.abort writes its note there)
STDERR_JOIN_SECONDS = 5.0  # how long to wait for the rank's last stderr after it exited


def launcher_rank():
    return os.environ.get("HOROVOD_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or "0"


def _write(status_dir, name, payload):
    """Write one JSON record atomically (a reader never sees half a file)."""
    path = os.path.join(status_dir, name)
    with open(path + ".tmp", "w") as f:
        json.dump(payload, f)
    os.replace(path + ".tmp", path)


def record(status_dir, rank, returncode, stopped=None, ended=None):
    """The rank's exit (at ``ended``, default now); ``stopped`` describes a stop that made the wrapper kill it."""
    payload = {"rank": int(rank), "returncode": returncode, "time": time.time() if ended is None else ended}
    if stopped:
        payload["stopped"] = stopped
    _write(status_dir, f"rank{rank}.json", payload)


def record_start(status_dir, rank, pid):
    """The rank's and this wrapper's pids, with their create times (so the launcher can end them
    later without mistaking a reused pid for them: hvdkit.runtime.job_processes)."""
    from hvdkit.runtime.job_processes import create_time

    _write(status_dir, f"rank{rank}.pids.json",
           {"rank": int(rank), "pid": pid, "start": create_time(pid), "wrapper_pid": os.getpid(),
            "wrapper_start": create_time(os.getpid()), "host": socket.gethostname(), "time": time.time()})


def recorded_processes(status_dir):
    """``{pid: create time}`` of every rank and wrapper this host's wrappers recorded."""
    host = socket.gethostname()
    known = {}
    for rec in read_records(status_dir)["pids"]:
        if rec.get("host") == host:
            known[rec["pid"]] = rec.get("start")
            known[rec["wrapper_pid"]] = rec.get("wrapper_start")
    return known


def record_exception(status_dir, rank, type_name, message):
    _write(status_dir, f"rank{rank}.exception.json",
           {"rank": int(rank), "type": type_name, "message": message[:500], "time": time.time()})


def note_role(role, environ=os.environ):
    """In a rank: what it is in the job (e.g. its pipeline stage), for the launcher's failure report."""
    status_dir = environ.get(STATUS_DIR_VARIABLE)
    if status_dir:
        try:
            _write(status_dir, f"rank{launcher_rank()}.role.json", {"rank": int(launcher_rank()), "role": role})
        except OSError:
            pass  # the report then names the rank only


def _stopped_path(status_dir, rank):
    return os.path.join(status_dir, f"rank{rank}.stopped.json")


def record_stall(status_dir, reporter, stalled, shutdown_seconds):
    """Horovod's stall shutdown as rank ``reporter`` logged it: {rank: [tensor names]}."""
    _write(status_dir, f"stall{reporter}.json",
           {"reporter": int(reporter), "stalled": {str(r): names for r, names in stalled.items()},
            "shutdown_seconds": shutdown_seconds, "time": time.time()})


def describe(returncode):
    if returncode < 0:
        number = -returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            return f"killed by signal {number}"
        return f"killed by {name} (signal {number})"
    return f"exited with code {returncode}"


# ---------------------------------------------------------------- reading back


def read_records(status_dir):
    """Every record in ``status_dir``, grouped: exits, pids, exceptions, stopped, stalls, roles."""
    groups = {"exits": [], "pids": [], "exceptions": [], "stopped": [], "stalls": [], "roles": []}
    for name in sorted(os.listdir(status_dir)):
        if not name.endswith(".json"):
            continue
        if name.startswith("stall"):
            kind = "stalls"
        elif name.endswith(".pids.json"):
            kind = "pids"
        elif name.endswith(".exception.json"):
            kind = "exceptions"
        elif name.endswith(".stopped.json"):
            kind = "stopped"
        elif name.endswith(".role.json"):
            kind = "roles"
        elif name.startswith("rank"):
            kind = "exits"
        else:
            continue
        try:
            with open(os.path.join(status_dir, name)) as f:
                groups[kind].append(json.load(f))
        except (OSError, ValueError):
            continue  # removed or replaced while listing
    return groups


def first_failure(status_dir):
    """The exit record of the rank that failed first, or None when none failed.

    Ranks that the launcher terminated (SIGTERM) after that failure come later
    in time, so the earliest non-zero record names the culprit (see ``_cause_first``).
    """
    failed = [(r["time"], r["rank"], "exit", r) for r in read_records(status_dir)["exits"] if r["returncode"] != 0]
    return min(failed, key=_cause_first)[3] if failed else None


def _rank_list(ranks):
    ranks = sorted(ranks)
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(str(r) for r in ranks)


def _stall_message(stall):
    stalled = {int(r): names for r, names in stall["stalled"].items()}
    missing = "; ".join(f"rank {r} did not join {', '.join(names)}" for r, names in sorted(stalled.items()))
    return (f"{_rank_list(stalled)} stalled: {missing} for more than {stall['shutdown_seconds']} s "
            f"while the other ranks waited, and Horovod's stall check ended the job "
            f"(HOROVOD_STALL_SHUTDOWN_TIME_SECONDS)")


def _stop_message(rank, stop):
    if stop.get("killed_after") is not None:
        return (f"rank {rank} stalled: stopped by {stop['signal']} and not resumed within "
                f"{stop['killed_after']:.0f} s (HOROVOD_STALL_SHUTDOWN_TIME_SECONDS); hvdkit killed it")
    return f"rank {rank} stalled: stopped by {stop['signal']} {time.time() - stop['since']:.0f} s before the job ended"


def culprit(status_dir):
    """``(rank, message)`` naming the rank that ended the job (and its role, where it noted one), or None
    when no rank failed.

    A stalled rank comes first (its peers fail after it, and are not the
    cause); then the rank whose failure (exit, signal, uncaught exception)
    came first in time.
    """
    groups = read_records(status_dir)
    found = _culprit(groups)
    roles = {r["rank"]: r["role"] for r in groups["roles"]}
    if found is None or found[0] not in roles:
        return found
    rank, message = found
    return rank, message.replace(f"rank {rank} ", f"rank {rank} ({roles[rank]}) ", 1)


TERMINATED = (-signal.SIGTERM, 128 + signal.SIGTERM)  # how the launcher ends the ranks left after a failure


def _vanished(groups):
    """``(rank, message)`` for the ranks that started but recorded no exit, grouped by host.

    A wrapper records its rank's exit however the rank ends, so a silent rank
    means the wrapper itself was killed, or its whole host (or the link to it)
    was lost. When the other ranks only ended by the launcher's terminate
    signal, these are the cause.
    """
    exited = {r["rank"] for r in groups["exits"]}
    silent = sorted((p["rank"], p.get("host", "?")) for p in groups["pids"] if p["rank"] not in exited)
    if not silent:
        return None
    hosts = {}
    for rank, host in silent:
        hosts.setdefault(host, []).append(rank)
    where = "; ".join(f"{_rank_list(ranks)} on {host}" for host, ranks in hosts.items())
    return silent[0][0], (f"{where} ended without a word (no exit recorded: the rank and its wrapper were "
                          "killed, or the node or its link was lost)")


KILLED_WINDOW_SECONDS = 2.0  # a peer's error this soon before a rank's recorded death by signal is its echo


def _cause_first(event):
    """Sort key of failure events: by time, except that a death by signal (not the launcher's terminate)
    moves ahead of what its peers raised up to ``KILLED_WINDOW_SECONDS`` before it was recorded.

    A killed rank cannot have been the consequence of a peer's error (a peer's MPI_ABORT ends the
    wrappers as well, so it is not recorded), while its peers see its sockets close at once and
    may raise before its wrapper is scheduled to record the death on a loaded machine.
    """
    when, _, kind, record_ = event
    if kind == "exit" and record_["returncode"] < 0 and record_["returncode"] not in TERMINATED:
        return when - KILLED_WINDOW_SECONDS
    return when


def _culprit(groups):
    if groups["stalls"]:
        stall = min(groups["stalls"], key=lambda s: s["time"])
        return min(int(r) for r in stall["stalled"]), _stall_message(stall)
    stops = [(r["rank"], r["stopped"]) for r in groups["exits"] if r.get("stopped")]
    stops += [(s["rank"], s) for s in groups["stopped"]]
    if stops:
        rank, stop = min(stops, key=lambda item: item[1]["since"])
        return rank, _stop_message(rank, stop)
    events = [(r["time"], r["rank"], "exit", r) for r in groups["exits"] if r["returncode"] != 0]
    events += [(e["time"], e["rank"], "exception", e) for e in groups["exceptions"]]
    vanished = _vanished(groups)
    if vanished and all(kind == "exit" and event["returncode"] in TERMINATED for _, _, kind, event in events):
        return vanished
    if not events:
        return None
    _, rank, kind, event = min(events, key=_cause_first)
    if kind == "exit":
        exception = next((e for e in groups["exceptions"] if e["rank"] == rank), None)
        if exception is None:
            return rank, f"rank {rank} {describe(event['returncode'])}"
        event = exception
    return rank, (f"rank {rank} raised {event['type']}: {event['message']} "
                  f"(its traceback is above, tagged [hvdkit rank {rank}])")


# ---------------------------------------------------------------- the wrapper


class StallLogScanner:
    """Finds Horovod's stall-shutdown report in a rank's stderr, line by line.

    Horovod's coordinator logs (horovod/common/stall_inspector.cc)::

        ... Missing ranks:
        1!: [allreduce.grad.3]
        One or more rank (marked by "!") is stalled for longer than 600 seconds. Will shutdown.

    ``feed`` returns ``(stalled, seconds)`` ({rank: [tensor names]} of the
    ranks marked "!") when a report with a shutdown is complete, else None.
    """

    RANK_LINE = re.compile(r"^\s*(\d+)(!?): \[(.*)\]\s*$")
    SHUTDOWN_LINE = re.compile(r"stalled for longer than (\d+) seconds\. Will shutdown")

    def __init__(self):
        self._ranks = None  # {rank: [names]} while inside a "Missing ranks:" block

    def feed(self, line):
        if "Missing ranks:" in line:
            self._ranks = {}
            return None
        if self._ranks is None:
            return None
        match = self.RANK_LINE.match(line)
        if match:
            if match.group(2) == "!":
                names = [n.strip() for n in match.group(3).split(",") if n.strip() and n.strip() != "..."]
                self._ranks[int(match.group(1))] = names
            return None
        shutdown = self.SHUTDOWN_LINE.search(line)
        stalled, self._ranks = self._ranks, None
        if shutdown and stalled:
            return stalled, int(shutdown.group(1))
        return None


def _copy_stderr(source_fd, on_line, startup_filter=None):
    """Copy the rank's stderr to ours as it comes, handing each complete line to ``on_line``;
    ``startup_filter`` (a ``tf_log.StartupLogFilter``) drops TensorFlow's start-up lines on the way."""
    pending = b""
    writable = True
    while True:
        chunk = os.read(source_fd, 65536)
        if startup_filter is not None:
            out = startup_filter.feed(chunk) if chunk else startup_filter.flush()
        else:
            out = chunk
        writable = writable and tf_log.write_all(2, out)  # once our stderr is gone, drain so the rank never blocks
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        pending = pending[-65536:]
        for line in lines:
            on_line(line.decode("utf-8", "replace"))
    os.close(source_fd)


def stall_shutdown_seconds(environ):
    """The stop limit: HOROVOD_STALL_SHUTDOWN_TIME_SECONDS as the rank will see it (0: never)."""
    from hvdkit.runtime import horovod_env

    text = environ.get("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS",
                       horovod_env.DEFAULTS["HOROVOD_STALL_SHUTDOWN_TIME_SECONDS"])
    try:
        return max(int(text), 0)
    except ValueError:
        return 0  # as Horovod reads it (strtol); hvdkit run refuses such a value before launching


class RankWatch:
    """The child process and what the wrapper saw of it."""

    def __init__(self, command, status_dir, rank, stop_limit, chain=()):
        self.status_dir = status_dir  # None where the directory does not exist (a remote host)
        self.rank = rank
        self.stop_limit = stop_limit
        self.stopped = None  # {"signal", "since", "killed_after"} while the child is stopped
        self.ending_stop = None  # the stop during which the child was killed or terminated
        self.stop_timer = None
        self.exited = False
        env = dict(os.environ)
        self.orphaned = None  # why the launcher counts as gone, once the parent watch said so
        if status_dir:
            env[STATUS_DIR_VARIABLE] = status_dir
        parent = os.getpid()
        # The rank's own view of the chain, and the mark of everything it starts (see end_descendants).
        self.chain_value = parent_watch.format_chain([(parent, parent_watch.start_ticks(parent))] + list(chain))
        env[parent_watch.CHAIN_VARIABLE] = self.chain_value
        self.parent_watch = parent_watch.Watch(chain, self.orphan)
        self.proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE,
                                     preexec_fn=lambda: parent_watch.die_with_parent(parent))
        self.scanner = StallLogScanner()
        startup_filter = tf_log.StartupLogFilter() if tf_log.hides_info(env) else None
        self.copier = threading.Thread(target=_copy_stderr, daemon=True,
                                       args=(os.dup(self.proc.stderr.fileno()), self.on_line, startup_filter))
        self.proc.stderr.close()
        self.copier.start()
        if status_dir:
            record_start(status_dir, rank, self.proc.pid)

    def on_line(self, line):
        found = self.scanner.feed(line)
        if found and self.status_dir:
            record_stall(self.status_dir, self.rank, *found)

    def forward(self, signum, _frame):
        if self.exited:
            return
        gone = self.parent_watch.check()
        if gone:  # a launcher ending its job because hvdkit run died (SIGTERM): no grace for the rank
            self.orphan(gone)
            return
        os.kill(self.proc.pid, signum)
        if self.stopped:
            self.ending_stop = self.stopped
            os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued

    def orphan(self, reason):
        """The launcher is gone (``parent_watch.Watch``): end the rank and all it started, now, so that it
        neither trains on nor writes another checkpoint."""
        if self.orphaned or self.exited:
            return
        self.orphaned = reason
        _say(f"hvdkit: rank {self.rank} (pid {self.proc.pid}): {reason}; the launcher is gone, so hvdkit "
             "kills the rank and everything it started")
        from hvdkit.runtime import job_processes

        job_processes.kill_tree(self.proc.pid)

    def end_descendants(self):
        """SIGKILL what the rank started and left behind (re-parented, so no longer in its tree), found
        by the chain in their environment, which only this rank's descendants carry."""
        from hvdkit.runtime import job_processes

        job_processes.end(parent_watch.CHAIN_VARIABLE, self.chain_value, grace=0)

    def on_stop(self, signum):
        if self.orphaned:
            return  # stopped on its way to SIGKILL by orphan()
        name = signal.Signals(signum).name
        self.stopped = {"signal": name, "since": time.time(), "killed_after": None}
        limit = (f"hvdkit kills it (ending the job) if it is not resumed within {self.stop_limit} s "
                 "(HOROVOD_STALL_SHUTDOWN_TIME_SECONDS)" if self.stop_limit else
                 "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS=0, so hvdkit waits for it")
        _say(f"hvdkit: rank {self.rank} (pid {self.proc.pid}) was stopped by {name}; its peers wait for it; {limit}")
        if self.status_dir:
            _write(self.status_dir, f"rank{self.rank}.stopped.json", dict(self.stopped, rank=int(self.rank)))
        if self.stop_limit:
            self.stop_timer = threading.Timer(self.stop_limit, self.kill_stopped, (self.stopped,))
            self.stop_timer.daemon = True
            self.stop_timer.start()

    def on_continue(self):
        if self.stop_timer:
            self.stop_timer.cancel()
        self.stopped = None
        if self.ending_stop is not None:
            return  # continued by forward() so that it can act on the launcher's SIGTERM
        if self.status_dir:
            try:
                os.remove(_stopped_path(self.status_dir, self.rank))
            except FileNotFoundError:
                pass
        _say(f"hvdkit: rank {self.rank} (pid {self.proc.pid}) was resumed")

    def kill_stopped(self, stop):
        if self.stopped is not stop or self.exited:
            return
        stop["killed_after"] = time.time() - stop["since"]
        self.ending_stop = stop
        _say(f"hvdkit: rank {self.rank} (pid {self.proc.pid}) has been stopped for {stop['killed_after']:.0f} s; "
             "killing it to end the job")
        os.kill(self.proc.pid, signal.SIGKILL)

    def wait(self):
        """Wait for the child's exit, handling stops and continues on the way; its return code."""
        while True:
            _, status = os.waitpid(self.proc.pid, os.WUNTRACED | os.WCONTINUED)
            if os.WIFSTOPPED(status):
                self.on_stop(os.WSTOPSIG(status))
            elif os.WIFCONTINUED(status):
                self.on_continue()
            else:
                self.exited = True
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                if self.stop_timer:
                    self.stop_timer.cancel()
                return self.proc.returncode


def _say(message):
    try:
        os.write(2, (message + "\n").encode())
    except OSError:
        pass


def _launcher_dead(launcher, chain):
    """True when ``launcher`` ("pid:start" of hvdkit run) was in this wrapper's chain and is gone."""
    return bool(launcher) and launcher in parent_watch.format_chain(chain).split(",") \
        and parent_watch.alive(parent_watch.parse_chain(launcher)) is not None


def main(argv):
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m hvdkit.runtime.rank_status STATUS_DIR -- command ...")
    status_dir = argv[0] if os.path.isdir(argv[0]) else None
    rank = launcher_rank()
    launcher = os.environ.get(parent_watch.LAUNCHER_VARIABLE)
    chain = parent_watch.ancestors(STATUS_DIR_VARIABLE, os.environ.get(STATUS_DIR_VARIABLE), launcher)
    watch = RankWatch(argv[2:], status_dir, rank, stall_shutdown_seconds(os.environ), chain)
    watch.parent_watch.start()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, watch.forward)
    returncode = watch.wait()
    ended = time.time()
    if status_dir and not _launcher_dead(launcher, chain):
        # Recorded before anything else: an MPI_ABORT by a peer that saw this rank die kills this
        # wrapper too, and the report must still name the rank that ended first.
        # An exit unseen by WCONTINUED may still follow a resume; only SIGKILL ends a process
        # that is still stopped.
        still_stopped = watch.stopped if returncode == -signal.SIGKILL else None
        try:
            record(status_dir, rank, returncode, watch.ending_stop or still_stopped, ended)
            os.remove(_stopped_path(status_dir, rank))
        except FileNotFoundError:
            pass  # no stop to forget; or the launcher died just now and a peer's wrapper removed the directory
    if watch.orphaned or watch.parent_watch.check():  # nobody will end what the rank left behind
        watch.end_descendants()
    watch.copier.join(STDERR_JOIN_SECONDS)
    if status_dir and _launcher_dead(launcher, chain):  # nobody will read or remove it now
        shutil.rmtree(status_dir, ignore_errors=True)
    return 128 - returncode if returncode < 0 else returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
