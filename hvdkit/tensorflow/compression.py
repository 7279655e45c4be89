"""``hvd.Compression`` for TensorFlow: Horovod's names plus hvdkit's algorithms, and what ``compression=`` accepts.

``Compression.none`` and ``Compression.fp16`` subclass Horovod's TensorFlow
compressors, so ``hvd.allreduce(..., compression=hvd.Compression.fp16)`` keeps
working; given to hvdkit's tape or optimizer they select the ``none`` and
``fp16`` specs (fp16 divided by the world size before the sum, so it cannot
overflow where Horovod's would).
"""
import horovod.tensorflow as _horovod

from hvdkit.compression import spec as _spec
from hvdkit.compression.registry import ALGORITHMS as _ALGORITHMS

__all__ = ["Compression", "resolve"]


class _NoneCompressor(_horovod.Compression.none):
    """No compression (Horovod's NoneCompressor); spec ``none``."""

    spec = "none"


class _FP16Compressor(_horovod.Compression.fp16):
    """Half precision (Horovod's FP16Compressor); spec ``fp16``."""

    spec = "fp16"


def _spec_with(head, options):
    return _spec.parse(",".join([head] + [f"{k}={int(v) if isinstance(v, bool) else v}"
                                          for k, v in options.items()]))


class Compression:
    """Compression choices for ``compression=``; any spec string (``"topk:0.01,warmup=100"``) works too."""

    none = _NoneCompressor
    fp16 = _FP16Compressor
    bf16 = "bf16"
    int8 = "int8"
    onebit = "onebit"

    @staticmethod
    def topk(ratio, **options):
        return _spec_with(f"topk:{ratio}", options)

    @staticmethod
    def randomk(ratio, **options):
        return _spec_with(f"randomk:{ratio}", options)

    @staticmethod
    def powersgd(rank, **options):
        return _spec_with(f"powersgd:{rank}", options)


def resolve(compression):
    """A parsed Spec from a spec string, a Spec, hvdkit's ``Compression.none/fp16`` or Horovod's own."""
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
                     f"hvd.Compression.<name>, got {compression!r}; valid specs: "
                     f"{_spec.usage(_ALGORITHMS)}")
