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
    # other ranks on which tensors are ready, and an op needs about two
    # cycles from submission to completion, so the shipped 1 ms makes every
    # small allreduce take 1-2 ms. Measured on the 2-core machine (2 ranks,
    # 4 B-64 KiB): 1 ms -> 1.3-2.1 ms mean, 0.1 ms -> 0.30-0.36 ms, 0.05 ms ->
    # 0.22-0.25 ms, 0 (no sleep) -> 0.08 ms but a core kept busy. 0.1 ms takes
    # most of the gain while keeping a cycle long enough for the tensors of
    # a backward pass to be fused together.
    "HOROVOD_CYCLE_TIME": "0.1",
    # Tensors ready in the same cycle are packed into fused buffers of up to
    # this many bytes, each reduced as one message. Reducing 64 MiB of
    # gradients given as 64 x 1 MiB tensors (2 ranks, the 2-core machine)
    # took 28-33 ms with 16 MiB, 32-37 ms with 8 MiB, 42-50 ms with 32 MiB
    # and 41-48 ms with the shipped 128 MiB (4 MiB: 17 or 43 ms, unstable):
    # an allreduce whose working set (the buffer on both ranks) fits the
    # 32 MiB L3 cache runs 2-3x faster (raw MPI_Allreduce: 6-7 GB/s busbw at
    # 16 MiB, 2.5 GB/s at 64 MiB). A single tensor never goes through the
    # fusion buffer. Machines with larger caches may prefer more.
    "HOROVOD_FUSION_THRESHOLD": str(16 * 1024 * 1024),
    # Stall check (horovod/common/stall_inspector.cc, controller.cc). Only the
    # coordinator (rank 0 of each process set) checks, once per this period:
    # it lists, by global rank, the ranks that have not submitted a tensor
    # others submitted more than this long ago ("Missing ranks: 1: [name]").
    # A warning therefore comes 1-2 periods after the stall began (one more
    # for a tensor answered from Horovod's response cache, which is first
    # invalidated after one period and only then timed). Horovod's default.
    "HOROVOD_STALL_CHECK_TIME_SECONDS": "60",
    # End the job when a rank has been missing from a collective this long
    # (Horovod: 0, never). At a check where a lag exceeds it, every rank's
    # pending ops fail with HorovodInternalError, which hvdkit's excepthook
    # (hvdkit.runtime.abort) turns into the end of the job, and `hvdkit run` names
    # the rank marked "!" in Horovod's report. A rank legitimately busy
    # alone (rank 0 writing a checkpoint to slow storage, evaluating, a
    # first-step compile) looks exactly like a stall, so the limit is long:
    # 10 minutes, the collective timeout PyTorch uses for NCCL, which users
    # already live with. A real hang then costs 10-11 min, not forever. It
    # must be 0 or >= the check time (Horovod silently ignores a shorter
    # one; hvdkit.runtime.env_check refuses it); both are whole seconds (strtol).
    # Horovod 0.28.1 under Gloo never reports or shuts down:
    # GlooController fills global_ranks_ after reserve() instead of
    # resize(), so the inspector's loop over global_ranks_.size() ranks
    # runs zero times (gloo/gloo_controller.cc:92). A stopped rank is caught
    # under both controllers by hvdkit.runtime.rank_status, with this same limit.
    "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "600",
    # Open MPI busy-polls while a rank waits inside a collective. Horovod's
    # background thread is always inside one (every cycle it negotiates with
    # the other ranks), so on a machine whose cores the ranks fill, an idle
    # Horovod took 35-50 % of a core per rank and made single-threaded
    # compute beside it 1.4-2.1x slower. Yielding while idle removed that
    # slowdown; where cores are spare, a yield with nothing else to run
    # returns at once (raw MPI was no slower with it).
    "OMPI_MCA_mpi_yield_when_idle": "1",
}


# Settings a process reads when it starts, before hvdkit runs: a launcher
# (``hvdkit run``) should put them in every rank's environment.
LAUNCH_DEFAULTS = {
    # PyTorch backs CPU tensors of 2 MiB and more with transparent huge pages
    # (read once, at torch's first allocation). MPI's shared-memory transport
    # moves the data page by page: a 16 MiB in-place MPI_Allreduce on torch
    # memory took 3.7 ms with 4 KiB pages and 2.8 ms with huge pages (numpy
    # arrays get huge pages by default: 2.5 ms).
    "THP_MEM_ALLOC_ENABLE": "1",
}


def apply_defaults(environ=None):
    """Set every unset variable of DEFAULTS; return the values now in effect."""
    environ = os.environ if environ is None else environ
    return {name: environ.setdefault(name, value) for name, value in DEFAULTS.items()}
