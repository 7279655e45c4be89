"""hvdkit: data-parallel training on Horovod, with gradient compression,
fused gradient buffers, rank-aware sharding and hierarchical averaging.

Framework front ends live in ``hvdkit.torch`` and ``hvdkit.tensorflow``;
importing ``hvdkit`` itself pulls in neither framework.
"""
from hvdkit._version import __version__

__all__ = ["__version__"]
