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

    def numel(self, t):
        return t.numel()

    def copy(self, t):
        """A copy the receiver may change in place."""
        return t.clone()

    def add_ranks(self, a, b):
        """``a + b`` as Horovod sums two ranks' values (float16 added in float32, as its MPI sum does)."""
        if a.dtype == self._torch.float16:
            return (a.float() + b.float()).to(a.dtype)
        return a + b


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

    def numel(self, t):
        return int(self._tf.size(t))

    def copy(self, t):
        """TensorFlow tensors are immutable: sharing one is as good as a copy."""
        return t

    def add_ranks(self, a, b):
        """``a + b`` as Horovod sums two ranks' values (float16 added in float32, as its MPI sum does)."""
        tf = self._tf
        if a.dtype == tf.float16:
            return tf.cast(tf.cast(a, tf.float32) + tf.cast(b, tf.float32), a.dtype)
        return a + b


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
