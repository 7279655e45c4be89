"""Pure-TensorFlow references for every op in :mod:`hvdkit.kernels.tf_ops`.

Same names, arguments and results, written for clarity rather than speed (run
them eagerly). The arithmetic is that of :mod:`hvdkit.kernels.torch_reference`: float32
products and sums in the stated order, round half to even, saturation, the
counter-based random numbers of ``csrc/core/counter_hash.h``; so the kernels
can be compared with them bit for bit.
"""
import tensorflow as tf

DEFAULT_BLOCK = 1024
_MASK32 = 0xFFFFFFFF
_STREAM_STOCHASTIC_ROUNDING = 1
_STREAM_RANDOMK = 2
_bits = tf.bitwise


# ---- counter-based random numbers (csrc/core/counter_hash.h) ------------------


def _mul32(x, c):
    """(x * c) mod 2**32 for int64 x < 2**32 without overflowing int64."""
    high = _bits.left_shift(_bits.bitwise_and(x * (c >> 16), 0xFFFF), 16)
    return _bits.bitwise_and(x * (c & 0xFFFF) + high, _MASK32)


def mix32(x):
    """The "lowbias32" mixer on int64 tensors holding uint32 values."""
    x = _bits.bitwise_xor(x, _bits.right_shift(x, 16))
    x = _mul32(x, 0x7FEB352D)
    x = _bits.bitwise_xor(x, _bits.right_shift(x, 15))
    x = _mul32(x, 0x846CA68B)
    return _bits.bitwise_xor(x, _bits.right_shift(x, 16))


def stream_key(seed, stream):
    seed &= 2**64 - 1
    high = mix32(tf.constant((seed >> 32) ^ stream, tf.int64))
    return mix32(_bits.bitwise_xor(tf.constant(seed & _MASK32, tf.int64), high))


def uniform01(key, index):
    """Uniform float32 in [0, 1) for each int64 element index (mod 2**32)."""
    bits = mix32(_bits.bitwise_xor(_bits.bitwise_and(index, _MASK32), key))
    return tf.cast(_bits.right_shift(bits, 8), tf.float32) * 2.0**-24


# ---- casts and fused buffers --------------------------------------------------------


def _flat(x):
    return tf.reshape(x, [-1])


def _scaled(x, scale):
    return tf.cast(x, tf.float32) * tf.constant(scale, tf.float32)


def _saturate(v, dtype):
    """float32 -> dtype: finite values clamp to the largest finite, NaN/Inf stay."""
    if dtype == tf.float32:
        return v
    return tf.cast(tf.where(tf.math.is_finite(v), tf.clip_by_value(v, -dtype.max, dtype.max), v), dtype)


def pack(tensors, dtype=None, scale=1.0):
    dtype = dtype or (tensors[0].dtype if tensors else tf.float32)
    if not tensors:
        return tf.zeros([0], dtype)
    return _saturate(_scaled(tf.concat([_flat(tf.cast(t, tf.float32)) for t in tensors], 0), scale), dtype)


def unpack(flat, tensors, scale=1.0, accumulate=False):
    values = _scaled(_flat(flat), scale)
    result, offset = [], 0
    for t in tensors:
        size = int(tf.size(t))
        v = tf.reshape(values[offset:offset + size], tf.shape(t))
        if accumulate:
            v = tf.cast(t, tf.float32) + v
        result.append(_saturate(v, t.dtype))
        offset += size
    return result


def cast(x, dtype, scale=1.0):
    v = _scaled(x, scale)
    return _saturate(v, dtype), tf.logical_not(tf.reduce_all(tf.math.is_finite(v)))


# ---- int8 blockwise -------------------------------------------------------------------


def _blocks(flat, block):
    """[n] -> [ceil(n / block), block], zero padded."""
    n = int(tf.size(flat))
    return tf.reshape(tf.pad(flat, [[0, -(-n // block) * block - n]]), [-1, block])


def quantize_int8(x, block=DEFAULT_BLOCK, stochastic=False, seed=0):
    flat = _flat(x)
    n = int(tf.size(flat))
    blocks = _blocks(flat, block)
    absmax = tf.reduce_max(tf.abs(blocks), axis=1)
    bad = tf.logical_not(tf.reduce_all(tf.math.is_finite(blocks), axis=1))
    full127 = tf.fill(tf.shape(absmax), 127.0)  # tensor / tensor, as the kernels divide
    ratio = full127 / absmax
    inverse = tf.where((absmax > 0) & tf.math.is_finite(ratio), ratio, 0.0)
    v = blocks * inverse[:, None]
    if stochastic:
        index = tf.reshape(tf.range(tf.size(blocks, out_type=tf.int64)), tf.shape(blocks))
        v = tf.floor(v + uniform01(stream_key(seed, _STREAM_STOCHASTIC_ROUNDING), index))
    else:
        v = tf.round(v)  # half to even
    q = tf.where(bad[:, None], tf.zeros_like(v, tf.int8), tf.cast(tf.clip_by_value(v, -127.0, 127.0), tf.int8))
    scales = tf.where(bad, float("nan"), absmax / full127)
    return _flat(q)[:n], scales


def _per_element(scales, block, n):
    return tf.repeat(scales, block)[:n]


def dequantize_int8(q, scales, block, out=None, accumulate=False):
    decoded = tf.cast(_flat(q), tf.float32) * _per_element(scales, block, int(tf.size(q)))
    if accumulate:
        decoded = _flat(out) + decoded
    return decoded if out is None else tf.reshape(decoded, tf.shape(out))


# ---- one-bit sign with error feedback ------------------------------------------------


def _mean_abs(c, block):
    """mean |c| per block: 16 interleaved float32 partial sums, added in order,
    then combined pairwise (the kernels' order, so CPU scales match exactly)."""
    n = int(tf.size(c))
    padded_block = -(-block // 16) * 16
    padded = tf.pad(_blocks(tf.abs(c), block), [[0, 0], [0, padded_block - block]])
    lanes = tf.reshape(padded, [-1, padded_block // 16, 16])
    sums = tf.zeros([lanes.shape[0], 16])
    for j in range(padded_block // 16):
        sums = sums + lanes[:, j]
    while sums.shape[1] > 1:
        half = sums.shape[1] // 2
        sums = sums[:, :half] + sums[:, half:]
    lengths = tf.minimum(n - tf.range(sums.shape[0], dtype=tf.int64) * block, block)
    return sums[:, 0] / tf.cast(lengths, tf.float32)


def packbits(flags):
    """bool [n] -> uint8 [ceil(n / 8)], element 8j + b in bit b of byte j."""
    n = int(tf.size(flags))
    padded = tf.reshape(tf.pad(tf.cast(flags, tf.int32), [[0, -(-n // 8) * 8 - n]]), [-1, 8])
    return tf.cast(tf.reduce_sum(padded * [1, 2, 4, 8, 16, 32, 64, 128], axis=1), tf.uint8)


def unpackbits(bits, n):
    """uint8 [ceil(n / 8)] -> bool [n]."""
    flags = _bits.bitwise_and(_bits.right_shift(bits[:, None], tf.constant(list(range(8)), tf.uint8)), 1)
    return tf.cast(_flat(flags)[:n], tf.bool)


def _signed(positive, per_element):
    return tf.where(positive, per_element, -per_element)


def sign_ef(x, residual, block=DEFAULT_BLOCK):
    c = _flat(x) + _flat(residual)
    scales = _mean_abs(c, block)
    positive = c >= 0
    new_residual = c - _signed(positive, _per_element(scales, block, int(tf.size(c))))
    return packbits(positive), scales, tf.reshape(new_residual, tf.shape(residual))


def sign_decode(bits, scales, n, block=DEFAULT_BLOCK, out=None, accumulate=False):
    total = _flat(out) if accumulate else tf.zeros([n])
    if n:
        bits = tf.reshape(bits, [-1, -(-n // 8)])
        scales = tf.reshape(scales, [bits.shape[0], -1])
        for r in range(bits.shape[0]):
            total = total + _signed(unpackbits(bits[r], n), _per_element(scales[r], block, n))
    return total if out is None else tf.reshape(total, tf.shape(out))


# ---- sparsification ----------------------------------------------------------------------


def topk_ef(x, residual, k, approx=False):
    """Exact for either value of ``approx`` (the kernel's approximate mode is
    checked by its properties instead). Always ``k`` pairs: zeros of ``c`` are
    never selected, and where ``c`` has fewer than ``k`` non-zero entries the
    free slots (last) hold the pad ``(0, -0.0)``, the residual untouched there.
    NaN magnitudes are not ordered here as in the kernels (largest first): give
    it finite inputs."""
    c = _flat(x) + _flat(residual)
    indices = tf.math.top_k(tf.abs(c), k, sorted=False).indices
    values = tf.gather(c, indices)
    selected = tf.not_equal(values, 0.0)
    order = tf.argsort(tf.cast(tf.logical_not(selected), tf.int32), stable=True)  # pads last
    indices, values, selected = tf.gather(indices, order), tf.gather(values, order), tf.gather(selected, order)
    taken = tf.boolean_mask(indices, selected)
    new_residual = tf.tensor_scatter_nd_update(c, taken[:, None], tf.zeros_like(taken, tf.float32))
    indices = tf.where(selected, indices, tf.zeros_like(indices))
    values = tf.where(selected, values, tf.fill(tf.shape(values), -0.0))
    return indices, values, tf.reshape(new_residual, tf.shape(residual))


def randomk_indices(n, k, seed):
    if k == 0:
        return tf.zeros([0], tf.int32)
    j = tf.range(k, dtype=tf.int64)
    begin = j * n // k
    length = (j + 1) * n // k - begin
    draw = mix32(_bits.bitwise_xor(j, stream_key(seed, _STREAM_RANDOMK)))
    return tf.cast(begin + _bits.right_shift(draw * length, 32), tf.int32)


def randomk(x, k, seed):
    indices = randomk_indices(int(tf.size(x)), k, seed)
    return indices, tf.gather(_flat(x), indices)


def scatter_add(indices, values, out, *, on_invalid="raise"):
    """Duplicate indices add in input order (TensorFlow's CPU scatter loops in
    order). An index outside ``[0, out.size)`` adds nothing and raises, or with
    ``on_invalid="poison"`` returns ``out`` with its first element NaN."""
    flat = _flat(out)
    n = int(tf.size(flat))
    if bool(tf.reduce_any((indices < 0) | (indices >= n))):
        if on_invalid != "poison":
            raise tf.errors.InvalidArgumentError(None, None, f"indices must lie in [0, {n}) (the size of out)")
        if n:
            flat = tf.tensor_scatter_nd_update(flat, [[0]], [float("nan")])
        return tf.reshape(flat, tf.shape(out))
    return tf.reshape(tf.tensor_scatter_nd_add(flat, indices[:, None], values), tf.shape(out))
