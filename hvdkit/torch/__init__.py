"""hvdkit for PyTorch: a drop-in for ``horovod.torch``.

``import hvdkit.torch as hvd`` in a Horovod script keeps every call working
(``init``, ``rank``, ``size``, ``broadcast_parameters``, ``allreduce``,
``DistributedOptimizer``, ``Compression.fp16``, ...) and adds compressed,
fused, overlapped and hierarchical gradient exchange through
``DistributedOptimizer(compression=..., fusion_mb=..., hierarchical=...)``,
plus ``broadcast_state(model, optimizer)``.
"""
import horovod.torch as _horovod
from horovod.torch import (  # noqa: F401  (re-exported for Horovod scripts)
    Adasum,
    Average,
    HorovodInternalError,
    Max,
    Min,
    ProcessSet,
    Product,
    Sum,
    SyncBatchNorm,
    allgather,
    allgather_async,
    allgather_object,
    allreduce,
    allreduce_,
    allreduce_async,
    allreduce_async_,
    alltoall,
    alltoall_async,
    barrier,
    broadcast,
    broadcast_,
    broadcast_async,
    broadcast_async_,
    broadcast_object,
    broadcast_parameters,
    cross_rank,
    cross_size,
    global_process_set,
    gloo_enabled,
    grouped_allgather,
    grouped_allreduce,
    grouped_allreduce_,
    grouped_allreduce_async,
    grouped_allreduce_async_,
    is_initialized,
    join,
    local_rank,
    local_size,
    mpi_enabled,
    mpi_threads_supported,
    nccl_built,
    poll,
    rank,
    reducescatter,
    reducescatter_async,
    shutdown,
    size,
    synchronize,
)

from hvdkit import topology as _topology
from hvdkit.torch.state_sync import broadcast_optimizer_state, broadcast_state, check_model
from hvdkit.torch.compression import Compression
from hvdkit.torch.optimizer import DEFAULT_FUSION_MB, DistributedOptimizer


def init(*args, **kwargs):
    """Start Horovod through hvdkit's topology (node process sets, hvdkit's Horovod settings).

    Idempotent; returns the ``hvdkit.topology.Topology``. Horovod's own ``init`` arguments
    (``comm``, ``process_sets``) are not supported: hvdkit registers its process sets itself.
    """
    if args or kwargs:
        raise ValueError("hvdkit.torch.init() takes no arguments (hvdkit registers its own process sets)")
    return _topology.init(_horovod)


def topology():
    """This rank's ``hvdkit.topology.Topology`` (after ``init``)."""
    return _topology.current()
