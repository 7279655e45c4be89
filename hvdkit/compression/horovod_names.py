"""``hvd.Compression`` of the drop-in modules, and what ``compression=`` accepts.

One definition for both frameworks: :func:`namespace` builds the class from
the Horovod module of the front end (``horovod.torch`` or
``horovod.tensorflow``). Its ``none`` and ``fp16`` subclass that module's own
compressors, so they keep working where Horovod takes a compressor (e.g.
``hvd.allreduce(..., compression=hvd.Compression.fp16)``); given to hvdkit's
optimizer, tape or exchange they select the ``none`` and ``fp16`` specs (fp16
divided by the world size before the sum, so it cannot overflow where
Horovod's would).
"""
from hvdkit.compression import spec as _spec
from hvdkit.compression.registry import ALGORITHMS as _ALGORITHMS

__all__ = ["namespace", "resolve"]

# Horovod's own compressor classes, by (class name, defining module): what each selects.
_HOROVOD_COMPRESSORS = {"NoneCompressor": "none", "FP16Compressor": "fp16"}
_HOROVOD_MODULES = ("horovod.torch.compression", "horovod.tensorflow.compression")


def _parse_with(head, options):
    return _spec.parse(",".join([head] + [f"{k}={int(v) if isinstance(v, bool) else v}"
                                          for k, v in options.items()]))


def namespace(horovod):
    """The ``Compression`` class of a drop-in module over ``horovod`` (its Horovod module)."""

    class _NoneCompressor(horovod.Compression.none):
        """No compression (Horovod's NoneCompressor); spec ``none``."""

        spec = "none"

    class _FP16Compressor(horovod.Compression.fp16):
        """Half precision (Horovod's FP16Compressor); spec ``fp16``."""

        spec = "fp16"

    class Compression:
        """Compression choices for ``compression=``; any spec string (``"topk:0.01,warmup=100"``) works too."""

        none = _NoneCompressor
        fp16 = _FP16Compressor
        bf16 = "bf16"
        int8 = "int8"
        onebit = "onebit"

        @staticmethod
        def topk(ratio, **options):
            return _parse_with(f"topk:{ratio}", options)

        @staticmethod
        def randomk(ratio, **options):
            return _parse_with(f"randomk:{ratio}", options)

        @staticmethod
        def powersgd(rank, **options):
            return _parse_with(f"powersgd:{rank}", options)

    return Compression


def resolve(compression):
    """A parsed Spec from a spec string, a Spec, hvdkit's ``Compression.none/fp16`` or Horovod's own
    (torch or TensorFlow); anything else is a ValueError listing the valid specs."""
    if isinstance(compression, _spec.Spec):
        return compression
    if isinstance(compression, str):
        return _spec.parse(compression)
    text = getattr(compression, "spec", None)
    if isinstance(text, str):
        return _spec.parse(text)
    if getattr(compression, "__module__", None) in _HOROVOD_MODULES:
        name = _HOROVOD_COMPRESSORS.get(getattr(compression, "__name__", None))
        if name is not None:
            return _spec.parse(name)
    raise ValueError(f"compression must be a spec string (e.g. 'topk:0.01'), a hvdkit Spec or "
                     f"hvd.Compression.<name>, got {compression!r}; valid specs: {_spec.usage(_ALGORITHMS)}")
