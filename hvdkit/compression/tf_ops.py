"""``TensorOps`` for TensorFlow: hvdkit's kernels (``hvdkit.kernels.tf_ops``) plus a few TF calls.

The compression algorithms in ``hvdkit/compression/`` run unchanged on these;
the tests compare every algorithm's payloads and results with ``TorchOps``
on the same inputs. Tensors are eager (the exchange runs eagerly, inside one
``tf.py_function`` when traced) and immutable, so every method returns new
tensors where ``TorchOps`` writes in place.

Only ``randn`` draws different numbers than torch does (TensorFlow's
stateless Philox generator): it must agree across ranks, not across
frameworks.
"""
import tensorflow as tf

from hvdkit.compression.tensor_ops import TensorOps
from hvdkit.kernels import tf_ops as kernels

__all__ = ["TFOps"]

_DTYPES = {"float16": tf.float16, "bfloat16": tf.bfloat16, "float32": tf.float32, "float64": tf.float64,
           "int16": tf.int16}
_NAN_BITS = {tf.int16: 0x7FC0}  # bfloat16 NaN seen as int16 (bf16 payloads travel as int16)
_EPS = 1e-8  # keeps an all-zero column (vanishing gradient) from dividing by zero


class TFOps(TensorOps):
    kernels = kernels

    def zeros(self, n, like):
        return tf.zeros([n], tf.float32)

    def randn(self, n, seed, like):
        seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        pair = tf.constant([seed & 0x7FFFFFFF, seed >> 32], tf.int64)
        return tf.random.stateless_normal([n], seed=pair, dtype=tf.float32)

    def numel(self, x):
        return int(x.shape.num_elements())

    def slice(self, x, start, stop):
        return x[start:stop]

    def matrix(self, x, offset, rows, cols):
        return tf.reshape(x[offset:offset + rows * cols], [rows, cols])

    def flatten(self, x):
        return tf.reshape(x, [-1])

    def concat(self, parts):
        return tf.concat(parts, 0) if len(parts) != 1 else tf.reshape(parts[0], [-1])

    def bitcast(self, x, dtype):
        return tf.bitcast(x, _DTYPES[dtype])

    def shape(self, x):
        return tuple(x.shape)

    def reshape(self, x, shape):
        return tf.reshape(x, shape)

    def concat_rows(self, parts):
        return tf.concat(parts, axis=0)

    def to_list(self, x):
        return x.numpy().tolist()

    def int64_tensor(self, values, like):
        return tf.constant(values, dtype=tf.int64)

    def copy(self, x):
        return x

    def write_into(self, target, flat):
        return tf.reshape(flat, target.shape)

    def add_ranks(self, a, b):
        if a.dtype == tf.float16:
            return tf.cast(tf.cast(a, tf.float32) + tf.cast(b, tf.float32), a.dtype)
        return a + b

    def parameter_tensors(self, parameters):
        return [tf.convert_to_tensor(v) for v in parameters]

    def assign(self, parameters, values):
        for variable, value in zip(parameters, values):
            variable.assign(value)

    def pack(self, tensors, scale, out=None):  # immutable tensors: no buffer to reuse
        # Horovod cannot reduce bfloat16: such buckets travel as float32 (unpack casts back).
        wire = tf.float32 if tensors[0].dtype == tf.bfloat16 else tensors[0].dtype
        if all(t.dtype in kernels.FLOAT_DTYPES for t in tensors):
            flat, nonfinite = kernels.pack(list(tensors), dtype=wire, scale=scale, report_nonfinite=True)
            return flat, bool(nonfinite)
        flat = tf.concat([tf.reshape(tf.cast(t, wire), [-1]) for t in tensors], 0) * tf.cast(scale, wire)
        return flat, not self.all_finite(flat)

    def unpack(self, flat, tensors, scale=1.0):
        if scale != 1.0:
            flat = flat * tf.cast(scale, flat.dtype)
        if flat.dtype in kernels.FLOAT_DTYPES and all(t.dtype in kernels.FLOAT_DTYPES for t in tensors):
            return kernels.unpack(flat, list(tensors))
        out, offset = [], 0
        for t in tensors:
            n = self.numel(t)
            out.append(tf.reshape(tf.cast(flat[offset:offset + n], t.dtype), tf.shape(t)))
            offset += n
        return out

    def add(self, x, y):
        return x + y

    def sub_(self, x, y):
        return x - y

    def scale(self, x, factor):
        return x * tf.constant(factor, x.dtype)

    def rescale_(self, x, factor):
        return x * tf.cast(factor, x.dtype)

    def neg(self, x):
        return -x

    def momentum(self, velocity, x, factor):
        return x + velocity * tf.constant(factor, velocity.dtype)

    def zero_where_zero(self, x, reference):
        return tf.where(tf.equal(reference, 0), tf.zeros_like(x), x)

    def clip_norm(self, x, max_norm):
        return tf.clip_by_norm(x, max_norm)

    def all_finite(self, x):
        if not x.dtype.is_floating or self.numel(x) == 0:
            return True
        # One reduction first (NaN and +-Inf reach the sum); every element only when the sum overflowed.
        if bool(tf.math.is_finite(tf.reduce_sum(tf.cast(x, tf.float32)))):
            return True
        return bool(tf.reduce_all(tf.math.is_finite(x)))

    def poison(self, x):
        if self.numel(x) == 0:
            return x
        first = tf.constant([_NAN_BITS.get(x.dtype, float("nan"))], x.dtype)
        return tf.concat([first, tf.reshape(x, [-1])[1:]], 0)

    def sum_chunks(self, x, n, dtype):
        if not n:
            return tf.zeros([0], tf.float32)
        chunks = tf.cast(tf.reshape(tf.bitcast(x, _DTYPES[dtype]), [-1, n]), tf.float32)
        total = chunks[0]
        for r in range(1, chunks.shape[0]):  # rank order, one add at a time: the same rounding as torch
            total = total + chunks[r]
        return total

    def cast(self, x, dtype):
        if dtype in ("float32", "float64"):
            return tf.cast(x, _DTYPES[dtype]), False
        y, nonfinite = kernels.cast(x, _DTYPES[dtype])
        return y, bool(nonfinite)  # finite values beyond the range saturate; only NaN/Inf inputs flag

    def sign_ef(self, x, residual, block):
        return kernels.sign_ef(x, residual, block=block)

    def topk_ef(self, x, residual, k, approx):
        if residual is None:
            residual = tf.zeros_like(x)
        return kernels.topk_ef(x, residual, k, approx=approx)

    def scatter_add(self, indices, values, out):
        return kernels.scatter_add(indices, values, out)

    def matmul(self, a, b, transpose_a=False, transpose_b=False):
        return tf.linalg.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)

    def orthogonalize(self, m):
        if m.shape[1] > 2:
            return tf.linalg.qr(m).q
        cols = []
        rest = m
        for i in range(m.shape[1]):
            col = rest[:, :1]
            norm = tf.norm(col)
            col = col / (norm + _EPS)
            # An all-zero column becomes a unit vector (no host read: a masked add).
            col = col + tf.one_hot([i % m.shape[0]], m.shape[0], dtype=m.dtype)[0][:, None] * tf.cast(norm == 0, m.dtype)
            rest = rest[:, 1:]
            if rest.shape[1]:
                rest = rest - tf.reduce_sum(col * rest, axis=0, keepdims=True) * col
            cols.append(col)
        return tf.concat(cols, 1)
