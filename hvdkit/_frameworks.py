"""The few tensor operations framework-neutral code needs, per framework.

Chosen from the tensor's type, so neither framework is imported unless a
tensor of it is passed in.
"""


class _Torch:
    def __init__(self):
        import torch

        self._torch = torch

    def shape(self, t):
        return tuple(t.shape)

    def reshape(self, t, shape):
        return t.reshape(shape)

    def concat(self, parts):
        return self._torch.cat(parts)

    def to_list(self, t):
        return t.tolist()

    def copy_into(self, dst, flat):
        """Write ``flat`` into ``dst`` (same element count); return ``dst``."""
        dst.copy_(flat.reshape(dst.shape))
        return dst

    def int64_tensor_like(self, like, values):
        return self._torch.tensor(values, dtype=self._torch.int64, device=like.device)


class _TensorFlow:
    def __init__(self):
        import tensorflow as tf

        self._tf = tf

    def shape(self, t):
        return tuple(t.shape)

    def reshape(self, t, shape):
        return self._tf.reshape(t, shape)

    def concat(self, parts):
        return self._tf.concat(parts, axis=0)

    def to_list(self, t):
        return t.numpy().tolist()

    def copy_into(self, dst, flat):
        """TensorFlow tensors are immutable: the result comes back as a new tensor."""
        return self._tf.reshape(flat, dst.shape)

    def int64_tensor_like(self, like, values):
        return self._tf.constant(values, dtype=self._tf.int64)


_adapters = {}


def of(tensor):
    """The adapter for ``tensor``'s framework (torch or TensorFlow)."""
    module = type(tensor).__module__.split(".")[0]
    if module not in _adapters:
        if module == "torch":
            _adapters[module] = _Torch()
        elif module in ("tensorflow", "keras"):
            _adapters[module] = _TensorFlow()
        else:
            raise TypeError(f"expected a torch or TensorFlow tensor, got {type(tensor).__name__}")
    return _adapters[module]
