"""``import hvdkit.tensorflow as hvd`` must keep every Horovod name a TensorFlow 2 script calls: no submodule
or wrapper may shadow Horovod's function of the same name."""
import pytest

import horovod.tensorflow as horovod_tf

import hvdkit.tensorflow  # noqa: E402

REPLACED = {"init", "DistributedGradientTape", "broadcast_variables", "Compression", "SyncBatchNormalization",
            "PartialDistributedGradientTape"}
HOROVOD_NAMES = ["rank", "size", "local_rank", "local_size", "cross_rank", "cross_size", "allreduce", "allgather",
                 "allgather_object", "broadcast", "broadcast_", "broadcast_object", "alltoall", "reducescatter",
                 "grouped_allreduce", "grouped_allgather", "join", "shutdown", "is_initialized", "Average", "Sum",
                 "Adasum", "ProcessSet", "global_process_set", "mpi_enabled",
                 "gloo_enabled", "rank_op", "size_op"]


def test_horovod_names_are_horovods_own():
    for name in HOROVOD_NAMES:
        assert getattr(hvdkit.tensorflow, name) is getattr(horovod_tf, name), name


def test_replaced_names_exist_and_horovod_compression_names_still_work():
    for name in REPLACED:
        assert getattr(hvdkit.tensorflow, name) is not getattr(horovod_tf, name), name
    compression = hvdkit.tensorflow.Compression
    assert issubclass(compression.fp16, horovod_tf.Compression.fp16)
    assert issubclass(compression.none, horovod_tf.Compression.none)
    assert str(compression.topk(0.01, ef=False)) == ("topk:0.01,approx=0,clip=0.0,ef=0,mask=1,mc=0,min_numel=1024,"
                                                     "ramp=0,two_phase=auto,warmup=0")


def test_distributed_optimizer_is_the_keras_layers():
    import hvdkit.tensorflow.keras

    assert hvdkit.tensorflow.DistributedOptimizer is hvdkit.tensorflow.keras.DistributedOptimizer
    with pytest.raises(AttributeError, match="has no attribute 'Nonexistent'"):
        hvdkit.tensorflow.Nonexistent  # noqa: B018


def test_spec_strings_and_horovod_compressors_resolve_to_specs():
    from hvdkit.compression.horovod_names import resolve

    assert resolve("fp16").name == "fp16" and resolve(horovod_tf.Compression.fp16).name == "fp16"
    assert resolve(hvdkit.tensorflow.Compression.none).name == "none"
    with pytest.raises(ValueError, match="compression spec 'zstd': unknown algorithm 'zstd'; valid specs: none"):
        resolve("zstd")
    with pytest.raises(ValueError, match="compression must be a spec string .* got 0.5; valid specs: none, fp16"):
        resolve(0.5)
