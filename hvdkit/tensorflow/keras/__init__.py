"""hvdkit for Keras 3: a drop-in for ``horovod.tensorflow.keras``.

``import hvdkit.tensorflow.keras as hvd`` in a Horovod Keras script keeps its
calls working on Keras 3 (where Horovod's own Keras layer fails):
``init``, ``rank``, ``size``, ``DistributedOptimizer``, ``callbacks.*``,
``allreduce``, ``load_model``, ``Compression.fp16``, ... with hvdkit's
compression, fusion and hierarchy in ``DistributedOptimizer(compression=...,
fusion_mb=..., hierarchical=...)``.

Not provided: ``elastic`` (Horovod's elastic Keras state, which relies on Keras 2).
"""
from horovod.tensorflow.keras import (  # noqa: F401  (re-exported for Horovod scripts)
    Average,
    ProcessSet,
    Sum,
    add_process_set,
    allgather,
    allreduce,
    broadcast,
    broadcast_global_variables,
    ccl_built,
    cross_rank,
    cross_size,
    cuda_built,
    ddl_built,
    global_process_set,
    gloo_built,
    gloo_enabled,
    is_initialized,
    local_rank,
    local_size,
    mpi_built,
    mpi_enabled,
    mpi_threads_supported,
    nccl_built,
    rank,
    reducescatter,
    remove_process_set,
    rocm_built,
    shutdown,
    size,
    start_timeline,
    stop_timeline,
)

from hvdkit.tensorflow import Compression, init  # noqa: F401
from hvdkit.tensorflow.keras import callbacks  # noqa: F401
from hvdkit.tensorflow.keras.optimizer import DEFAULT_FUSION_MB, DistributedOptimizer  # noqa: F401
from hvdkit.tensorflow.keras.saving import load_model  # noqa: F401
