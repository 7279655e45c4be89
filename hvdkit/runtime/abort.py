"""End the whole job when one rank raises, instead of leaving its peers waiting.

A rank that dies of an uncaught exception normally exits through Python's
clean-up: Horovod's shutdown and ``MPI_Finalize`` wait for the other ranks,
which are themselves blocked in a collective the failed rank will never join,
so the job hangs (Horovod issues #642, #1102). ``install`` (called by
``hvdkit.topology.init``) replaces ``sys.excepthook``. The hook prints the
traceback first, each line tagged ``[hvdkit rank R]`` (a peer's consequent
HorovodInternalError gets one line, so the cause stands out), flushes, notes
the exception for ``hvdkit run`` (which names the rank), then aborts MPI
(``MPI_Abort`` makes mpirun kill every rank) or, under Gloo, exits at once
without clean-up (the peers' connections break, and horovodrun stops them).

``HVDKIT_ABORT_ON_EXCEPTION=0`` keeps Python's own hook (for a program that
installs its own, or wants its atexit handlers to run); ``1`` is the default.
"""
import os
import sys
import threading
import time
import traceback

from hvdkit.runtime import env_check
from hvdkit.runtime import rank_status

__all__ = ["install", "installed", "wanted", "tagged_traceback", "secondary_note", "exit_code_for"]

# If MPI_Abort has not ended this process after this long, exit anyway.
ABORT_GRACE_SECONDS = 10.0
# A rank whose Horovod shut down because a peer failed waits this long before
# its one-line note, so that the failing rank's traceback (on its way through
# other pipes of the launcher) is printed first; under MPI the abort usually
# ends this rank before it prints at all.
SECONDARY_DELAY_SECONDS = 1.0

_installed = None  # (rank, launcher) once install() ran


def tag(rank):
    return f"[hvdkit rank {rank}] "


def tagged_traceback(rank, exc_type, exc, tb):
    """The traceback Python would print, every line prefixed with this rank's tag."""
    prefix = tag(rank)
    text = "".join(traceback.format_exception(exc_type, exc, tb))
    return "".join(prefix + line + "\n" for line in text.splitlines())


def _is_horovod_shutdown(exc_type):
    """Horovod raises HorovodInternalError on every rank once its background loop stops: a
    consequence of another rank's failure or a stall shutdown, not a cause."""
    return any(cls.__name__ == "HorovodInternalError" for cls in exc_type.__mro__)


def secondary_note(rank, exc_type, exc, tb):
    """One tagged line for a Horovod shutdown: where this rank was waiting, and why it stopped."""
    library = ("site-packages", f"{os.sep}horovod{os.sep}")
    frames = ([f for f in traceback.extract_tb(tb) if not any(part in f.filename for part in library)]
              or traceback.extract_tb(tb))
    where = f" in {frames[-1].filename}:{frames[-1].lineno} ({frames[-1].name})" if frames else ""
    first = str(exc).split(". ")[0]
    return (f"{tag(rank)}{exc_type.__name__}{where}: {first}; another rank failed or stalled first "
            "(its error is above)\n")


def exit_code_for(exc_type):
    """1 as Python uses for an uncaught exception; 130 (128 + SIGINT) for Ctrl-C."""
    return 130 if issubclass(exc_type, KeyboardInterrupt) else 1


def _note_for_launcher(rank, exc_type, exc):
    status_dir = os.environ.get(rank_status.STATUS_DIR_VARIABLE)
    if not status_dir:
        return
    try:
        rank_status.record_exception(status_dir, rank, exc_type.__name__, str(exc))
    except OSError:
        pass  # the launcher is gone or the directory with it: the traceback above still tells


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


def abort(code, launcher):
    """Never returns: MPI_Abort under an MPI launcher, else an immediate exit.

    Python's own clean-up (atexit handlers, buffers of files the program left
    open) does not run: Horovod's atexit shutdown is what would wait for the
    peers. Standard streams and ``logging`` handlers are flushed first.
    """
    _flush()
    if "logging" in sys.modules:
        try:
            sys.modules["logging"].shutdown()
        except Exception:  # noqa: BLE001 - a broken handler must not stop the abort
            pass
    timer = threading.Timer(ABORT_GRACE_SECONDS, os._exit, (code,))
    timer.daemon = True
    timer.start()
    mpi = sys.modules.get("mpi4py.MPI")
    if launcher == "mpi" and mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.COMM_WORLD.Abort(code)
    os._exit(code)


def _hook(exc_type, exc, tb):
    rank, launcher = _installed
    try:
        if issubclass(exc_type, KeyboardInterrupt):  # Ctrl-C reaches every rank: one line each
            sys.stderr.write(f"{tag(rank)}interrupted (KeyboardInterrupt)\n")
            return
        if _is_horovod_shutdown(exc_type):
            time.sleep(SECONDARY_DELAY_SECONDS)
            sys.stderr.write(secondary_note(rank, exc_type, exc, tb))
        else:
            sys.stderr.write(tagged_traceback(rank, exc_type, exc, tb))
            sys.stderr.write(f"{tag(rank)}uncaught {exc_type.__name__}: aborting the job so that no rank "
                             "waits for this one\n")
        _note_for_launcher(rank, exc_type, exc)
    finally:
        abort(exit_code_for(exc_type), launcher)


def wanted(environ=None):
    """Whether ``hvdkit.topology.init`` installs the hook: ``HVDKIT_ABORT_ON_EXCEPTION`` unset or
    ``1``; ``0`` turns it off. Any other value is a ValueError naming it and the valid values, so a
    typo never silently changes how a failing job ends."""
    return env_check.value(env_check.ABORT_ON_EXCEPTION, environ) != "0"


def install(rank, launcher):
    """Make an uncaught exception on this rank end the job; ``launcher`` is ``"mpi"`` or ``"gloo"``.

    Idempotent. Only the main thread's exceptions end a process in Python, so
    only those abort; an exception in another thread keeps Python's behaviour.
    """
    global _installed
    if launcher not in ("mpi", "gloo"):
        raise ValueError(f"hvdkit.runtime.abort.install: launcher must be 'mpi' or 'gloo', got {launcher!r}")
    _installed = (int(rank), launcher)
    sys.excepthook = _hook


def installed():
    """True when this process's uncaught exceptions abort the job."""
    return _installed is not None and sys.excepthook is _hook
