"""TensorFlow and Keras 3 variables as hvdkit sees them.

Horovod's TensorFlow wrappers key variables by ``v.ref()``, which Keras 3
variables lack (``'Variable' object has no attribute 'ref'``). hvdkit reaches
the ``tf.Variable`` behind a Keras 3 variable through its ``.value`` and
names variables by position plus their short name: Keras' layer paths carry
per-process counters (``dense_3/kernel``) that differ between ranks which
built different numbers of layers, and must not make identical models look
different.
"""
import tensorflow as tf

from hvdkit.exchange.buckets import TensorInfo

__all__ = ["unwrap", "tensor_infos", "label"]


def unwrap(v):
    """The ``tf.Variable`` holding ``v`` (``v`` itself, or a Keras 3 variable's ``.value``); None for tensors."""
    if isinstance(v, tf.Variable):
        return v
    value = getattr(v, "value", None)  # a property on Keras 3 variables (a method on tf.Variable)
    return value if isinstance(value, tf.Variable) else None


def label(v):
    """The name people know ``v`` by, for messages: a Keras path, a tf.Variable name, or a description."""
    path = getattr(v, "path", None)
    if isinstance(path, str):
        return path
    if unwrap(v) is not None or not tf.executing_eagerly():
        return v.name
    return f"a tensor of shape {tuple(v.shape)}"


def _short_name(v):
    if unwrap(v) is None:
        return "tensor"
    return v.name.split("/")[-1].split(":")[0]


def tensor_infos(sources):
    """``fusion.TensorInfo`` per variable (or watched tensor), named ``"<position>/<short name>"``."""
    infos = []
    for i, v in enumerate(sources):
        shape = tf.TensorShape(v.shape)
        if not shape.is_fully_defined():
            raise ValueError(f"hvdkit: variable {i} ({label(v)}) has shape {shape}; gradients are exchanged in "
                             f"fixed-size buffers, so every shape must be fully known")
        dtype = tf.as_dtype(v.dtype)
        infos.append(TensorInfo(f"{i}/{_short_name(v)}", tuple(shape.as_list()), dtype.name, dtype.size))
    return infos

