"""Inputs and helpers shared by the tests of hvdkit.kernels.tf_ops (this file
holds no tests). Each op is run eagerly and inside a tf.function traced with
unknown shapes, and compared bit for bit with its TensorFlow reference and
with the torch op of hvdkit.ops on the same inputs."""
import numpy as np
import tensorflow as tf
import torch

from hvdkit.kernels import torch_reference as torch_ref
from hvdkit.kernels import tf_ops as ops

SIZES = [0, 1, 7, 1023, 2**20 + 3]
FLOATS = [tf.float32, tf.float16, tf.bfloat16]
_FLOAT_NAMES = ("float32", "float16", "bfloat16")


def random_vector(n, seed, scale=1.0, dtype=tf.float32):
    values = np.random.default_rng(seed).standard_normal(n).astype(np.float32) * np.float32(scale)
    return tf.cast(tf.constant(values), dtype)


def resnet_tensors(dtypes=(tf.float32,), seed=0):
    """A ResNet-50-shaped list of 161 gradients (8 times narrower), their
    dtypes cycling through ``dtypes``."""
    rng = np.random.default_rng(seed)
    shapes = torch_ref.resnet50_shapes(width_divisor=8)
    return [tf.cast(tf.constant(rng.standard_normal(s).astype(np.float32)), dtypes[i % len(dtypes)])
            for i, s in enumerate(shapes)]


def torch_dtype(dtype):
    return {tf.float32: torch.float32, tf.float16: torch.float16, tf.bfloat16: torch.bfloat16}[dtype]


def to_torch(t):
    """The torch tensor with the same dtype, shape and bits."""
    array = t.numpy()
    if t.dtype == tf.bfloat16:
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(array))


def _raw(t):
    """(dtype name, shape, bits with NaNs zeroed, NaN mask) of a TensorFlow or torch tensor."""
    if isinstance(t, torch.Tensor):
        name = str(t.dtype).replace("torch.", "")
        nan = torch.isnan(t).numpy() if t.is_floating_point() else np.zeros(tuple(t.shape), bool)
        array = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()
    else:
        name = t.dtype.name
        array = t.numpy()
        nan = np.isnan(array.astype(np.float32)) if t.dtype.is_floating else np.zeros(array.shape, bool)
    if name in _FLOAT_NAMES:
        array = array.view(f"u{array.dtype.itemsize}")
    return name, tuple(array.shape), np.where(nan, 0, array), nan


def assert_bitwise_equal(actual, expected):
    """Same dtype, shape and bits; NaNs only need to be NaN in both."""
    a_name, a_shape, a_bits, a_nan = _raw(actual)
    e_name, e_shape, e_bits, e_nan = _raw(expected)
    assert (a_name, a_shape) == (e_name, e_shape)
    assert np.array_equal(a_nan, e_nan), "NaN positions differ"
    differ = a_bits != e_bits
    assert not differ.any(), f"{int(differ.sum())} values differ, first at {np.argwhere(differ)[0].tolist()}"


def assert_all_bitwise_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert_bitwise_equal(a, e)


def eager_and_graph(fn, *tensors):
    """``fn(*tensors)`` eagerly and inside a tf.function traced with unknown
    shapes (so the kernels' run-time checks and shape functions are used);
    asserts both give the same bits and returns the eager result."""
    eager = fn(*tensors)
    signature = [tf.TensorSpec(None, t.dtype) for t in tensors]
    graph = tf.function(fn, input_signature=signature)(*tensors)
    if isinstance(eager, (tuple, list)):
        assert_all_bitwise_equal(graph, eager)
    else:
        assert_bitwise_equal(graph, eager)
    return eager


def every_isa():
    return ops.backends()["cpu_isas"]
