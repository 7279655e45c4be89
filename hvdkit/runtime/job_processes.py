"""Find and end the processes of one ``hvdkit run`` job on this host.

The launcher puts ``HVDKIT_STATUS_DIR=<its private directory>`` in the job's
environment; every process of the job (mpirun or horovodrun, the status
wrappers, the ranks and anything they start) inherits it, and Linux keeps a
process's initial environment (psutil's ``Process.environ()``). So the job's
processes are found by that unique value, not by name, and a process of
another job is never touched. What Open MPI and horovodrun leave after a
failure (a DataLoader worker whose rank was killed, a rank that ignores
SIGTERM) is ended this way when the launcher returns.

A process is identified by its pid and its create time, so a pid the kernel
has reused for another process is told apart. A zombie has already exited
(only its exit status is left, for its parent to collect) and counts as gone.
"""
import os
import time

import psutil

__all__ = ["find", "end", "create_time", "kill_tree"]

POLL_SECONDS = 0.05  # how often end() looks again while it waits


def _process(pid):
    """A fresh ``psutil.Process`` (its identity fixed now), or None when the pid is gone."""
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _alive(proc):
    """Running, and still the process ``proc`` was made for (not a zombie, not a reused pid)."""
    try:
        return proc.is_running() and proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return False


def _command(proc):
    try:
        return " ".join(proc.cmdline()).strip()
    except psutil.Error:
        return "?"


def _has(proc, name, value):
    try:
        return proc.environ().get(name) == value
    except psutil.Error:  # gone, a zombie, or another user's
        return False


def create_time(pid):
    """When the process started (seconds since the epoch, as psutil reports it: tells a reused pid
    apart), or None when it is gone or a zombie."""
    proc = _process(pid)
    if proc is None or not _alive(proc):
        return None
    try:
        return proc.create_time()
    except psutil.Error:
        return None


def _marked(name, value):
    """``{pid: Process}`` of the processes whose environment holds ``name=value`` (this one excluded).

    Fresh ``Process`` objects rather than ``psutil.process_iter``'s cached
    ones: a cached object made for an earlier holder of a reused pid would
    refuse to signal the job process that holds it now.
    """
    marked = {}
    for pid in psutil.pids():
        proc = _process(pid) if pid != os.getpid() else None
        if proc is not None and _has(proc, name, value):
            marked[pid] = proc
    return marked


def _recorded(known):
    """``{pid: Process}`` of the ``known`` pids that still have the recorded create time."""
    found = {}
    for pid, started in known.items():
        proc = _process(pid) if started is not None else None
        try:
            if proc is not None and proc.create_time() == started:
                found[pid] = proc
        except psutil.Error:
            continue
    return found


def _job(name, value, known):
    """``{pid: Process}`` of the job's live processes: marked or recorded."""
    procs = _recorded(known)
    procs.update(_marked(name, value))
    return {pid: proc for pid, proc in procs.items() if _alive(proc)}


def find(name, value):
    """``{pid: command line}`` of the live processes whose environment holds ``name=value``
    (this process excluded)."""
    return {pid: _command(proc) for pid, proc in _job(name, value, {}).items()}


def _wait(name, value, known, grace):
    """The job's live processes once they are all gone or ``grace`` seconds have passed.

    Not ``psutil.wait_procs``: it reaps the caller's own children (taking
    their exit status from ``subprocess.Popen``), and it waits for a zombie
    that is not our child until its parent collects it.
    """
    deadline = time.monotonic() + grace
    left = _job(name, value, known)
    while left and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        left = _job(name, value, known)
    return left


def end(name, value, known=None, grace=2.0):
    """Give the job's remaining processes ``grace`` seconds to exit, then SIGKILL them.

    The job's processes are those whose environment holds ``name=value``, and
    ``known`` ({pid: create time}, as :func:`create_time` gave it when they
    started): a process in the middle of exiting no longer shows its
    environment, but it is not gone until it is a zombie. Returns ``{pid:
    command line}`` of those killed (empty when all had exited); returns once
    they are gone.
    """
    known = dict(known or {})
    left = _wait(name, value, known, grace)
    killed = {}
    for pid, proc in left.items():
        command = _command(proc)
        try:
            proc.kill()  # psutil checks first that the pid still names the same process
        except psutil.Error:
            continue  # it exited (or its pid was reused) meanwhile
        killed[pid] = command
    _wait(name, value, known, grace)
    return killed


def kill_tree(pid):
    """SIGKILL ``pid`` and everything it started, down the tree; returns the pids killed.

    Each process is stopped (SIGSTOP) before its children are listed, so none
    can start another one unseen, and killed only after: a killed parent's
    children are re-parented and could no longer be found through it.
    """
    killed = []
    todo = [_process(pid)]
    while todo:
        proc = todo.pop()
        if proc is None or proc.pid in killed:
            continue
        try:
            proc.suspend()
            todo.extend(proc.children())
            proc.kill()
        except psutil.Error:
            continue  # it exited meanwhile
        killed.append(proc.pid)
    return killed
