"""``import hvdkit.torch as hvd`` must keep every Horovod name a script calls:
no submodule or wrapper may shadow Horovod's function of the same name."""
import horovod.torch

import hvdkit.torch

REPLACED = {"init", "DistributedOptimizer", "broadcast_optimizer_state", "Compression", "join"}
HOROVOD_NAMES = ["rank", "size", "local_rank", "local_size", "cross_rank", "allreduce", "allreduce_",
                 "allreduce_async", "allgather", "broadcast", "broadcast_", "broadcast_parameters",
                 "broadcast_object", "alltoall", "reducescatter", "grouped_allreduce", "barrier",
                 "synchronize", "poll", "shutdown", "is_initialized", "Average", "Sum", "Adasum",
                 "SyncBatchNorm", "mpi_enabled", "gloo_enabled"]


def test_horovod_names_are_horovods_own():
    for name in HOROVOD_NAMES:
        assert getattr(hvdkit.torch, name) is getattr(horovod.torch, name), name


def test_replaced_names_exist_and_are_callable_or_namespaces():
    for name in REPLACED:
        assert hasattr(hvdkit.torch, name), name
    assert callable(hvdkit.torch.init) and callable(hvdkit.torch.broadcast_optimizer_state)
    assert hasattr(hvdkit.torch.Compression, "fp16") and hasattr(hvdkit.torch.Compression, "none")
