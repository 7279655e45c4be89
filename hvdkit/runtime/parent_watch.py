"""End a job's ranks when its launcher dies, on every node, and tell the checkpoint writer.

``mpirun`` puts each rank's wrapper (:mod:`hvdkit.runtime.rank_status`) in a
process group of its own and ``horovodrun`` in a session of its own, so a
``kill -9`` of the launcher's group never reaches the ranks: they would train
on, and write checkpoints, with no launcher. Each link of the chain therefore
watches the one above it:

* ``hvdkit run`` starts the launcher (``mpirun``/``horovodrun``) with
  ``PR_SET_PDEATHSIG`` = SIGTERM (:func:`die_with_parent`), so the launcher
  is told when ``hvdkit run`` dies and ends its job in its own way (cleaning
  up its session files); a wrapper that gets the launcher's SIGTERM while
  its chain is broken kills its rank's tree instead of passing it on, so no
  rank gets a grace period it could spend writing a checkpoint;
* each wrapper runs a :class:`Watch` on its *chain* (:func:`ancestors`): its
  parent (``mpirun``, an ssh-started ``orted``, horovodrun's shell) and the
  ancestors above it that belong to the job, up to ``hvdkit run`` where that
  is on the same host. A process of the chain that is gone (by pid *and*
  start time, so a reused pid is no alibi), or a pipe on the wrapper's stderr
  that nobody reads any more (the launcher's ssh connection closed, which is
  how a node started by ``horovodrun`` over ssh learns it), ends the rank and
  everything it started with SIGKILL (also what the rank's children left
  behind, found by the chain in their environment);
* the rank dies with its wrapper (``PR_SET_PDEATHSIG`` = SIGKILL: the wrapper
  forks it from its main thread, which lives as long as the wrapper).

Polling rather than ``PR_SET_PDEATHSIG`` in the wrapper itself: that signal
follows the *thread* that forked the process, and the wrapper does not know
how mpirun, orted or horovodrun's middleman fork. Every fact used is about the
wrapper's own host (its ancestors, its stderr), so the same watch works on a
node reached by ssh, where the remote daemon (``orted``) or the ssh session
ends when the launcher's connection goes.

The wrapper hands the rank its chain (itself first) in ``HVDKIT_LAUNCHER_CHAIN``;
:func:`launcher_gone` checks it afresh, so the checkpoint writer
(:mod:`hvdkit.state.checkpoint`) publishes nothing once the launcher is known
gone, even in the moments before the wrapper's watch kills the rank.
"""
import ctypes
import os
import select
import signal
import stat
import threading
import time

__all__ = ["CHAIN_VARIABLE", "LAUNCHER_VARIABLE", "Watch", "alive", "ancestors", "die_with_parent",
           "format_chain", "identity", "launcher_gone", "parse_chain", "start_ticks"]

CHAIN_VARIABLE = "HVDKIT_LAUNCHER_CHAIN"  # in a rank: "pid:start,..." of its wrapper and the wrapper's chain
LAUNCHER_VARIABLE = "HVDKIT_LAUNCHER_PID"  # in the job: "pid:start" of hvdkit run, where a chain walk stops
POLL_SECONDS = 0.25  # how often a watch looks at its chain; a closed stderr pipe wakes it at once
PR_SET_PDEATHSIG = 1


def _find_prctl():
    """libc's ``prctl``, looked up here, before any fork: a child of a threaded parent must not
    dlopen (another thread may have held the loader's lock at the fork)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()


def _stat(pid):
    """(state, ppid, start ticks) from ``/proc/PID/stat``, or None when the pid is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(b")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[0].decode(), int(fields[1]), int(fields[19])


def start_ticks(pid):
    """When ``pid`` started (clock ticks since boot: tells a reused pid apart), or None when it is
    gone or a zombie (it has exited; only its status is left for its parent)."""
    found = _stat(pid)
    return None if found is None or found[0] in ("Z", "X") else found[2]


def identity(pid):
    """``"pid:start"`` of a live process, or None."""
    start = start_ticks(pid)
    return None if start is None else f"{pid}:{start}"


def format_chain(chain):
    return ",".join(f"{pid}:{start}" for pid, start in chain)


def parse_chain(text):
    """``"pid:start,..."`` -> [(pid, start), ...]; a malformed value is a ValueError naming it."""
    chain = []
    for item in filter(None, (text or "").split(",")):
        pid, sep, start = item.partition(":")
        if not (sep and pid.isdigit() and start.isdigit()):
            raise ValueError(f"{CHAIN_VARIABLE}: expected 'pid:start,...', got {text!r}")
        chain.append((int(pid), int(start)))
    return chain


def alive(chain):
    """The first process of ``chain`` that is gone (pid, start), or None when all still run."""
    return next(((pid, start) for pid, start in chain if start_ticks(pid) != start), None)


def _has_marker(pid, name, value):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"{name}={value}".encode() in f.read().split(b"\0")
    except OSError:  # gone, or another user's
        return False


def ancestors(marker_name, marker_value, launcher=None, pid=None):
    """The chain a wrapper watches: [(pid, start), ...] from its parent upwards.

    The parent always (mpirun, orted, a shell); above it, each ancestor whose
    environment holds ``marker_name=marker_value`` (the processes hvdkit run
    started: mpirun, horovodrun and its middlemen and shells), and the
    launcher ``launcher`` ("pid:start", hvdkit run itself), where the walk
    stops. A user's shell or a node's sshd is never part of it.
    """
    own = _stat(os.getpid() if pid is None else pid)
    chain = []
    parent = own[1] if own else 0
    while parent > 1:
        found = _stat(parent)
        if found is None or found[0] in ("Z", "X"):
            break
        here = f"{parent}:{found[2]}"
        if chain and here != launcher and not (marker_value and _has_marker(parent, marker_name, marker_value)):
            break
        chain.append((parent, found[2]))
        if here == launcher:
            break
        parent = found[1]
    return chain


def _reader_gone_fd(fd):
    """``fd`` when it is a pipe or socket (whose reader can vanish), else None (a file, a tty)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return None
    return fd if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else None


class Watch:
    """A daemon thread calling ``on_gone(reason)`` once, when a process of ``chain`` is gone or
    nobody reads the pipe on ``fd`` (the stderr the launcher collects) any more."""

    __slots__ = ("chain", "on_gone", "fd", "interval", "thread", "reason")

    def __init__(self, chain, on_gone, fd=2, interval=POLL_SECONDS):
        self.chain = list(chain)  # [(pid, start)]: the parent first
        self.on_gone = on_gone  # called from the watch thread with a sentence saying what went
        self.fd = _reader_gone_fd(fd)  # None: nothing to watch there
        self.interval = interval
        self.thread = threading.Thread(target=self._run, name="hvdkit-parent-watch", daemon=True)
        self.reason = None  # set once, when the watch fired

    def start(self):
        self.thread.start()
        return self

    def check(self, poller=None):
        """What is gone now (a sentence), or None."""
        if self.chain and os.getppid() != self.chain[0][0]:
            return f"its parent (pid {self.chain[0][0]}) is gone"
        gone = alive(self.chain)
        if gone is not None:
            return f"pid {gone[0]} of its launcher's chain ({format_chain(self.chain)}) is gone"
        if poller is not None and poller.poll(self.interval * 1000):
            return "nobody reads its stderr any more (the launcher's end of the pipe or ssh session closed)"
        return None

    def _run(self):
        poller = None
        if self.fd is not None:
            poller = select.poll()
            poller.register(self.fd, 0)  # only POLLERR/POLLHUP, which are always reported
        while self.reason is None:
            self.reason = self.check(poller)
            if self.reason is None and poller is None:
                time.sleep(self.interval)
        self.on_gone(self.reason)


def launcher_gone(environ=os.environ):
    """In a rank: a sentence saying which process of its launcher's chain is gone, or None while
    all run (and where no chain is known: a rank not started by ``hvdkit run``). Looks afresh each
    call; cheap (one ``/proc`` read per process of the chain). Also right in a process the rank
    started (it inherits the chain), whose parent is the rank, not the wrapper."""
    chain = parse_chain(environ.get(CHAIN_VARIABLE))
    gone = alive(chain)
    return None if gone is None else f"pid {gone[0]} of its launcher's chain ({format_chain(chain)}) is gone"


def die_with_parent(parent_pid, signum=signal.SIGKILL):
    """In a child just forked from ``parent_pid``'s main thread (a ``preexec_fn``): receive
    ``signum`` when that parent dies, even by SIGKILL; exit at once if it already has."""
    if _PRCTL is None or _PRCTL(PR_SET_PDEATHSIG, int(signum)) != 0:
        return
    if os.getppid() != parent_pid:  # the parent died before the prctl took effect
        os._exit(1)
