"""hvdkit for Keras 3: a drop-in for ``horovod.tensorflow.keras``.

``import hvdkit.tensorflow.keras as hvd`` in a Horovod Keras script keeps its
calls working on Keras 3 (where Horovod's own Keras layer fails):
``init``, ``rank``, ``size``, ``DistributedOptimizer``, ``callbacks.*``,
``allreduce``, ``load_model``, ``Compression.fp16``, ``elastic.*``, ... with
hvdkit's compression, fusion and hierarchy in
``DistributedOptimizer(compression=..., fusion_mb=..., hierarchical=...)``,
and ``SyncBatchNormalization`` for Keras 3.
"""
import horovod.tensorflow.keras as _horovod

from hvdkit import dropin as _dropin
from hvdkit.exchange.options import DEFAULT_FUSION_MB  # noqa: F401
from hvdkit.tensorflow import Compression, init  # noqa: F401
from hvdkit.tensorflow.keras import callbacks  # noqa: F401
from hvdkit.tensorflow.keras.optimizer import DistributedOptimizer  # noqa: F401
from hvdkit.tensorflow.keras.saving import load_model  # noqa: F401
from hvdkit.tensorflow.sync_batch_norm import SyncBatchNormalization  # noqa: F401

# ``elastic`` is hvdkit's submodule (Horovod's relies on Keras 2): export_horovod_names leaves it alone.
_dropin.export_horovod_names(_horovod, globals())


def __getattr__(name):
    return _dropin.horovod_attribute(_horovod, __name__, name)
