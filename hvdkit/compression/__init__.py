"""Gradient compression: spec strings, the algorithm registry and per-bucket state.

Framework-neutral: algorithms reach tensors only through a ``TensorOps``
implementation (``hvdkit.compression.torch_ops.TorchOps`` for torch).
"""
from hvdkit.compression.base import Compressor
from hvdkit.compression.registry import ALGORITHMS, create, names
from hvdkit.compression.spec import Spec, parse
from hvdkit.compression.state import BucketState

__all__ = ["ALGORITHMS", "BucketState", "Compressor", "Spec", "create", "names", "parse"]
