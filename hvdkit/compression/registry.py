"""Compression algorithms by spec name: the one place that lists them."""
from hvdkit.compression import spec as _spec
from hvdkit.compression.bf16 import BF16
from hvdkit.compression.fp16 import FP16
from hvdkit.compression.int8 import Int8
from hvdkit.compression.none import NoCompression
from hvdkit.compression.onebit import OneBit
from hvdkit.compression.powersgd import PowerSGD
from hvdkit.compression.randomk import RandomK
from hvdkit.compression.topk import TopK

__all__ = ["ALGORITHMS", "create", "names"]

ALGORITHMS = {cls.name: cls for cls in (NoCompression, FP16, BF16, Int8, TopK, RandomK, OneBit, PowerSGD)}


def names():
    return tuple(ALGORITHMS)


def create(spec, ops):
    """A compressor for ``spec`` (a spec string or a parsed Spec) working through ``ops``."""
    if not isinstance(spec, _spec.Spec):
        spec = _spec.parse(spec, ALGORITHMS)
    if spec.name == _spec.AUTO.name:
        raise ValueError("compression 'auto' is a choice among compressors, made by the exchange per bucket "
                         "(hvdkit.exchange.auto); it has no compressor of its own")
    return ALGORITHMS[spec.name](spec, ops)
