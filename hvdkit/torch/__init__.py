"""hvdkit for PyTorch: a drop-in for ``horovod.torch``.

``import hvdkit.torch as hvd`` in a Horovod script keeps every call working
(``init``, ``rank``, ``size``, ``broadcast_parameters``, ``allreduce``,
``DistributedOptimizer``, ``Compression.fp16``, ...: every public name of
``horovod.torch`` that hvdkit does not define is Horovod's own) and adds
compressed, fused, overlapped and hierarchical gradient exchange through
``DistributedOptimizer(compression=..., fusion_mb=..., hierarchical=...)``,
plus ``broadcast_state(model, optimizer)``.
"""
import horovod.torch as _horovod

from hvdkit import dropin as _dropin
from hvdkit import topology as _topology
from hvdkit.compression.horovod_names import namespace as _compression_namespace
from hvdkit.exchange.options import DEFAULT_FUSION_MB  # noqa: F401
from hvdkit.torch import elastic  # noqa: F401  (hvd.elastic: Horovod's elastic API with hvdkit's state)
from hvdkit.torch.distributed_optimizer import DistributedOptimizer  # noqa: F401
from hvdkit.torch.joined import join  # noqa: F401
from hvdkit.torch.state_sync import broadcast_optimizer_state, broadcast_state, check_model  # noqa: F401

Compression = _compression_namespace(_horovod)


def init(*args, **kwargs):
    """Start Horovod through hvdkit's topology (node process sets, hvdkit's Horovod settings).

    Idempotent; returns the ``hvdkit.topology.Topology``.
    """
    return _dropin.init(_horovod, __name__, args, kwargs)


topology = _topology.current


def __getattr__(name):
    return _dropin.horovod_attribute(_horovod, __name__, name)


_dropin.export_horovod_names(_horovod, globals())
