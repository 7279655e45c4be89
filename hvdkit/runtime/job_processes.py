"""Find and end the processes of one ``hvdkit run`` job on this host.

The launcher puts ``HVDKIT_STATUS_DIR=<its private directory>`` in the job's
environment; every process of the job (mpirun or horovodrun, the status
wrappers, the ranks and anything they start) inherits it, and Linux keeps a
process's initial environment in ``/proc/PID/environ``. So the job's processes
are found by that unique value, not by name, and a process of another job is
never touched. What Open MPI and horovodrun leave after a failure (a
DataLoader worker whose rank was killed, a rank that ignores SIGTERM) is
ended this way when the launcher returns.
"""
import os
import signal
import time

__all__ = ["find", "end", "start_ticks"]


def _environ_has(pid, marker, proc_root):
    try:
        with open(os.path.join(proc_root, str(pid), "environ"), "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:  # gone, or another user's
        return False


def _command(pid, proc_root):
    try:
        with open(os.path.join(proc_root, str(pid), "cmdline"), "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return "?"


def start_ticks(pid, proc_root="/proc"):
    """When the process started (clock ticks since boot: tells a reused pid apart), or None
    when it is gone or a zombie (it has exited; only its exit status is left)."""
    try:
        with open(os.path.join(proc_root, str(pid), "stat"), "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def find(name, value, proc_root="/proc"):
    """``{pid: command line}`` of the live processes whose environment holds ``name=value``
    (this process excluded)."""
    marker = f"{name}={value}".encode()
    found = {}
    for entry in os.listdir(proc_root):
        if entry.isdigit() and int(entry) != os.getpid() and _environ_has(entry, marker, proc_root):
            if start_ticks(entry, proc_root) is not None:
                found[int(entry)] = _command(entry, proc_root)
    return found


def _left(name, value, known, proc_root):
    left = find(name, value, proc_root)
    for pid, started in known.items():
        if pid not in left and started is not None and start_ticks(pid, proc_root) == started:
            left[pid] = _command(pid, proc_root)
    return left


def end(name, value, known=None, grace=2.0, proc_root="/proc"):
    """Give the job's remaining processes ``grace`` seconds to exit, then SIGKILL them.

    The job's processes are those whose environment holds ``name=value``, and
    ``known`` ({pid: start ticks}, as recorded when they started): a process
    in the middle of exiting no longer shows its environment, but it is not
    gone until it is a zombie. Returns ``{pid: command line}`` of those
    killed (empty when all had exited); returns once they are gone.
    """
    known = dict(known or {})
    deadline = time.monotonic() + grace
    left = _left(name, value, known, proc_root)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = _left(name, value, known, proc_root)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while _left(name, value, known, proc_root) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left
