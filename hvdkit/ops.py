"""``hvdkit.ops``: the torch kernels under their public name.

The module itself is :mod:`hvdkit.kernels.torch_ops`; importing ``hvdkit.ops``
gives that same module object, so attributes set on one are seen on the other.
"""
import sys

from hvdkit.kernels import torch_ops

sys.modules[__name__] = torch_ops
