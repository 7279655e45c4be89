"""hvdkit for TensorFlow 2 and Keras 3: a drop-in for ``horovod.tensorflow``.

``import hvdkit.tensorflow as hvd`` in a Horovod TensorFlow 2 script keeps
every call working (``init``, ``rank``, ``size``, ``allreduce``,
``broadcast``, ``Compression.fp16``, ...) and replaces the parts that fail on
Keras 3 or lack hvdkit's features: ``DistributedGradientTape`` (compressed,
fused, hierarchical exchange through the same Reducer and compression code
as ``hvdkit.torch``), ``broadcast_variables`` (Keras 3 variables),
``Compression`` (spec strings) and ``init`` (hvdkit's topology and node
process sets). ``GradientExchange`` is the exchange itself, for custom loops;
``hvdkit.tensorflow.keras`` mirrors ``horovod.tensorflow.keras``.
"""
import horovod.tensorflow as _horovod
from horovod.tensorflow import (  # noqa: F401  (re-exported for Horovod scripts)
    Adasum,
    Average,
    Max,
    Min,
    ProcessSet,
    Product,
    Sum,
    SyncBatchNormalization,
    add_process_set,
    allgather,
    allgather_object,
    allreduce,
    alltoall,
    broadcast,
    broadcast_,
    broadcast_global_variables,
    broadcast_object,
    broadcast_object_fn,
    ccl_built,
    cross_rank,
    cross_size,
    cuda_built,
    ddl_built,
    global_process_set,
    gloo_built,
    gloo_enabled,
    grouped_allgather,
    grouped_allreduce,
    grouped_reducescatter,
    is_homogeneous,
    is_initialized,
    join,
    local_rank,
    local_rank_op,
    local_size,
    local_size_op,
    mpi_built,
    mpi_enabled,
    mpi_threads_supported,
    nccl_built,
    process_set_included_op,
    rank,
    rank_op,
    reducescatter,
    remove_process_set,
    rocm_built,
    shutdown,
    size,
    size_op,
    start_timeline,
    stop_timeline,
)

from hvdkit import topology as _topology
from hvdkit.tensorflow.compression import Compression
from hvdkit.tensorflow.exchange import DEFAULT_FUSION_MB, GradientExchange
from hvdkit.tensorflow.state_sync import broadcast_variables
from hvdkit.tensorflow.tape import DistributedGradientTape


def init(*args, **kwargs):
    """Start Horovod through hvdkit's topology (node process sets, hvdkit's Horovod settings).

    Idempotent; returns the ``hvdkit.topology.Topology``. Horovod's own ``init`` arguments
    (``comm``, ``process_sets``) are not supported: hvdkit registers its process sets itself.
    """
    if args or kwargs:
        raise ValueError("hvdkit.tensorflow.init() takes no arguments (hvdkit registers its own process sets)")
    return _topology.init(_horovod)


def topology():
    """This rank's ``hvdkit.topology.Topology`` (after ``init``)."""
    return _topology.current()


def __getattr__(name):
    # Horovod's hvd.DistributedOptimizer hands Keras optimizers to its Keras layer; so does this one, looked
    # up on first use because hvdkit.tensorflow.keras itself imports this package.
    if name == "DistributedOptimizer":
        from hvdkit.tensorflow.keras import DistributedOptimizer

        return DistributedOptimizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
