"""hvdkit for TensorFlow 2 and Keras 3: a drop-in for ``horovod.tensorflow``.

``import hvdkit.tensorflow as hvd`` in a Horovod TensorFlow 2 script keeps
every call working (``init``, ``rank``, ``size``, ``allreduce``,
``broadcast``, ``Compression.fp16``, ...: every public name of
``horovod.tensorflow`` that hvdkit does not define is Horovod's own) and
replaces the parts that fail on Keras 3 or lack hvdkit's features:
``DistributedGradientTape`` and ``PartialDistributedGradientTape``
(compressed, fused, hierarchical exchange through the same Reducer and
compression code as ``hvdkit.torch``; local sources for model parallelism),
``SyncBatchNormalization`` (a Keras 3 layer),
``broadcast_variables`` (Keras 3 variables), ``Compression`` (spec strings)
and ``init`` (hvdkit's topology and node process sets). ``GradientExchange``
is the exchange itself, for custom loops; ``hvdkit.tensorflow.keras`` mirrors
``horovod.tensorflow.keras``.
"""
import horovod.tensorflow as _horovod

from hvdkit import dropin as _dropin
from hvdkit import topology as _topology
from hvdkit.compression.horovod_names import namespace as _compression_namespace
from hvdkit.exchange.options import DEFAULT_FUSION_MB  # noqa: F401
from hvdkit.tensorflow.exchange import GradientExchange  # noqa: F401
from hvdkit.tensorflow.state_sync import broadcast_variables  # noqa: F401
from hvdkit.tensorflow.sync_batch_norm import SyncBatchNormalization  # noqa: F401
from hvdkit.tensorflow.tape import DistributedGradientTape, PartialDistributedGradientTape  # noqa: F401

Compression = _compression_namespace(_horovod)


def init(*args, **kwargs):
    """Start Horovod through hvdkit's topology (node process sets, hvdkit's Horovod settings).

    Idempotent; returns the ``hvdkit.topology.Topology``.
    """
    return _dropin.init(_horovod, __name__, args, kwargs)


topology = _topology.current


def __getattr__(name):
    # Horovod's hvd.DistributedOptimizer hands Keras optimizers to its Keras layer; so does this one, looked
    # up on first use because hvdkit.tensorflow.keras itself imports this package.
    if name == "DistributedOptimizer":
        from hvdkit.tensorflow.keras import DistributedOptimizer

        return DistributedOptimizer
    return _dropin.horovod_attribute(_horovod, __name__, name)


_dropin.export_horovod_names(_horovod, globals(), excluded=("DistributedOptimizer",))
