"""``hvd.Compression``: Horovod's names plus hvdkit's algorithms, and what ``compression=`` accepts.

``Compression.none`` and ``Compression.fp16`` are Horovod's compressor classes
(subclassed), so they still work where Horovod takes a compressor (e.g.
``hvd.allreduce(..., compression=hvd.Compression.fp16)``); inside hvdkit's
DistributedOptimizer they select the ``none`` and ``fp16`` specs.
"""
import horovod.torch as _horovod

from hvdkit.compression import spec as _spec

__all__ = ["Compression", "resolve"]


class _NoneCompressor(_horovod.Compression.none):
    """No compression (Horovod's NoneCompressor); spec ``none``."""

    spec = "none"


class _FP16Compressor(_horovod.Compression.fp16):
    """Half precision (Horovod's FP16Compressor); spec ``fp16``, divided before summing."""

    spec = "fp16"


def _with_options(text, options):
    return ",".join([text] + [f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in options.items()])


class Compression:
    """Compression choices for ``DistributedOptimizer(compression=...)``."""

    none = _NoneCompressor
    fp16 = _FP16Compressor
    bf16 = "bf16"
    int8 = "int8"
    onebit = "onebit"

    @staticmethod
    def topk(ratio, **options):
        return _spec.parse(_with_options(f"topk:{ratio}", options))

    @staticmethod
    def randomk(ratio, **options):
        return _spec.parse(_with_options(f"randomk:{ratio}", options))

    @staticmethod
    def powersgd(rank, **options):
        return _spec.parse(_with_options(f"powersgd:{rank}", options))


def resolve(compression):
    """A parsed Spec from a spec string, a Spec, or a compressor class with a ``spec`` attribute
    (hvdkit's ``Compression.none/fp16``; Horovod's own ``Compression.none/fp16`` map to the same)."""
    if isinstance(compression, _spec.Spec):
        return compression
    if isinstance(compression, str):
        return _spec.parse(compression)
    if compression is _horovod.Compression.none:
        return _spec.parse("none")
    if compression is _horovod.Compression.fp16:
        return _spec.parse("fp16")
    text = getattr(compression, "spec", None)
    if isinstance(text, str):
        return _spec.parse(text)
    raise ValueError(f"compression must be a spec string (e.g. 'topk:0.01'), a hvdkit Spec or "
                     f"hvd.Compression.<name>, got {compression!r}")
