"""The Horovod (and MPI) settings hvdkit chooses, applied before Horovod starts.

Each is set with ``os.environ.setdefault``: a value the user exported (or a
launcher forwarded) always wins. ``hvdkit.topology.init`` applies them before
it first touches MPI, because Open MPI reads its ``OMPI_MCA_*`` settings when
``MPI_Init`` runs; if the program imported ``mpi4py.MPI`` earlier, export the
MPI one yourself. The measurements behind each value are in
``benchmarks/README.md`` (section "allreduce").
"""
import os

DEFAULTS = {
    # Horovod's background thread wakes once per cycle to agree with the
    # other ranks on which tensors are ready; an op waits for the next cycle
    # to start, so the 1 ms default is a latency floor of ~1 ms per op.
    # 0.1 ms brings small-message latency to ~0.2 ms on the 2-core machine;
    # shorter cycles gained nothing measurable there (the negotiation itself
    # takes tens of microseconds) and only add wake-ups.
    "HOROVOD_CYCLE_TIME": "0.1",
    # Ready tensors up to this many bytes are packed into one buffer and
    # reduced as one message. A single tensor never goes through the buffer,
    # and busbw on the benchmark machine peaks at 1-8 MiB messages, so 64 MiB
    # (half the shipped 128 MiB, and half the buffer memory) loses nothing.
    "HOROVOD_FUSION_THRESHOLD": str(64 * 1024 * 1024),
    # Warn when some ranks have submitted a tensor and others have not for
    # this long (Horovod's default, made explicit).
    "HOROVOD_STALL_CHECK_TIME_SECONDS": "60",
    # Never shut down on a stall (Horovod's default, made explicit): a rank
    # legitimately busy alone (evaluation, checkpointing on rank 0) looks like
    # a stall; hung jobs are bounded by the launcher's timeout instead.
    "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "0",
    # Open MPI busy-polls while a rank waits inside a collective. Horovod's
    # background thread is always inside one (every cycle it negotiates with
    # the other ranks), so on a machine whose cores the ranks fill, an idle
    # Horovod took 35-50 % of a core per rank and made single-threaded
    # compute beside it 1.4-2x slower. Yielding while idle removed that
    # slowdown; where cores are spare, a yield with nothing else to run
    # returns at once and costs about a microsecond.
    "OMPI_MCA_mpi_yield_when_idle": "1",
}


def apply_defaults(environ=None):
    """Set every unset variable of DEFAULTS; return the values now in effect."""
    environ = os.environ if environ is None else environ
    return {name: environ.setdefault(name, value) for name, value in DEFAULTS.items()}
