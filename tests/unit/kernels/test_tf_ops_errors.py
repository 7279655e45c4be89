"""Bad arguments to the TensorFlow ops raise an exception naming the argument:
TypeError / ValueError when the call (or trace) can tell, InvalidArgumentError
from the kernels when only the running graph can; never a crash."""
import pytest

from tf_ops_support import tf

from hvdkit.kernels import tf_ops as ops

X = tf.random.normal([64])
R = tf.zeros([64])
Q, SCALES = ops.quantize_int8(X, 16)
BITS, SIGN_SCALES, _ = ops.sign_ef(X, R, 16)
I32 = tf.zeros([3], tf.int32)

CASES = [
    # (call, exception, argument named in the message)
    (lambda: ops.pack(X), TypeError, "tensors"),
    (lambda: ops.pack([X, tf.ones([3], tf.int32)]), TypeError, "tensors[1]"),
    (lambda: ops.pack([X, X.numpy()]), TypeError, "tensors[1]"),
    (lambda: ops.pack([X], dtype=tf.int8), TypeError, "dtype"),
    (lambda: ops.pack([X], dtype="float16"), TypeError, "dtype"),
    (lambda: ops.pack([X], scale=float("nan")), ValueError, "scale"),
    (lambda: ops.pack([X], scale=tf.constant(1.0, tf.float64)), TypeError, "scale"),
    (lambda: ops.pack([X], scale=tf.ones([2])), ValueError, "scale"),
    (lambda: ops.pack([X, tf.cast(X, tf.float16)]), TypeError, "dtype"),
    (lambda: ops.unpack(tf.zeros([63]), [X]), ValueError, "flat"),
    (lambda: ops.unpack(tf.zeros([64]), [X], accumulate=1), TypeError, "accumulate"),
    (lambda: ops.cast(tf.cast(X, tf.float64), tf.float16), TypeError, "x"),
    (lambda: ops.cast(tf.IndexedSlices(X, tf.range(64)), tf.float16), TypeError, "x"),
    (lambda: ops.quantize_int8(X, 0), ValueError, "block"),
    (lambda: ops.quantize_int8(X, 1.5), TypeError, "block"),
    (lambda: ops.quantize_int8(tf.cast(X, tf.float16)), TypeError, "x"),
    (lambda: ops.quantize_int8(X, seed=0.5), TypeError, "seed"),
    (lambda: ops.quantize_int8(X, seed=tf.constant(1, tf.int32)), TypeError, "seed"),
    (lambda: ops.dequantize_int8(Q, SCALES[:-1], 16), ValueError, "scales"),
    (lambda: ops.dequantize_int8(tf.cast(Q, tf.float32), SCALES, 16), TypeError, "q"),
    (lambda: ops.dequantize_int8(Q, SCALES, 16, out=tf.zeros([63])), ValueError, "out"),
    (lambda: ops.dequantize_int8(Q, SCALES, 16, accumulate=True), ValueError, "out"),
    (lambda: ops.sign_ef(X, tf.zeros([63])), ValueError, "residual"),
    (lambda: ops.sign_ef(X, tf.cast(R, tf.float64)), TypeError, "residual"),
    (lambda: ops.sign_ef(X, R, block=12), ValueError, "block"),
    (lambda: ops.sign_ef(X, R, block=0), ValueError, "block"),
    (lambda: ops.sign_decode(BITS[:-1], SIGN_SCALES, 64, 16), ValueError, "bits"),
    (lambda: ops.sign_decode(BITS, tf.concat([SIGN_SCALES, SIGN_SCALES], 0), 64, 16), ValueError, "scales"),
    (lambda: ops.sign_decode(BITS, SIGN_SCALES, -1, 16), ValueError, "n"),
    (lambda: ops.sign_decode(tf.cast(BITS, tf.int32), SIGN_SCALES, 64, 16), TypeError, "bits"),
    (lambda: ops.topk_ef(X, R, 65), ValueError, "k"),
    (lambda: ops.topk_ef(X, R, -1), ValueError, "k"),
    (lambda: ops.topk_ef(X, R, 2.0), TypeError, "k"),
    (lambda: ops.topk_ef(X, tf.zeros([65]), 2), ValueError, "residual"),
    (lambda: ops.topk_ef(X, R, 2, approx="yes"), TypeError, "approx"),
    (lambda: ops.randomk(X, 65, 0), ValueError, "k"),
    (lambda: ops.randomk(tf.cast(X, tf.int64), 5, 0), TypeError, "x"),
    (lambda: ops.randomk(X, 5, None), TypeError, "seed"),
    (lambda: ops.scatter_add(I32, tf.ones([4]), R), ValueError, "values"),
    (lambda: ops.scatter_add(tf.zeros([3], tf.int64), tf.ones([3]), R), TypeError, "indices"),
    (lambda: ops.set_cpu_isa("avx1024"), ValueError, "name"),
]


@pytest.mark.parametrize("call, error, argument", CASES, ids=[f"{i}-{c[2]}" for i, c in enumerate(CASES)])
def test_bad_argument_is_named(call, error, argument):
    with pytest.raises(error) as raised:
        call()
    assert argument in str(raised.value)


def unknown_shapes(fn, count):
    return tf.function(fn, input_signature=[tf.TensorSpec(None, tf.float32)] * count)


RUNTIME_CASES = [
    # Shapes unknown at trace time: the kernels check when the graph runs.
    (unknown_shapes(lambda x, r: ops.sign_ef(x, r, 16), 2), (X, tf.zeros([63])), "residual"),
    (unknown_shapes(lambda x, r: ops.topk_ef(x, r, 65), 2), (X, R), "k must be"),
    (unknown_shapes(lambda x, r: ops.topk_ef(x, r, 5), 2), (X, tf.zeros([63])), "residual"),
    (unknown_shapes(lambda s: ops.dequantize_int8(Q, s, 16), 1), (SCALES[:-1],), "scales"),
    (unknown_shapes(lambda s: ops.sign_decode(BITS, s, 64, 16), 1), (SIGN_SCALES[:-1],), "scales"),
    (unknown_shapes(lambda o: ops.sign_decode(BITS, SIGN_SCALES, 64, 16, o, True), 1), (tf.zeros([65]),), "bits"),
    (unknown_shapes(lambda f: ops.unpack(f, [X]), 1), (tf.zeros([63]),), "flat"),
    (unknown_shapes(lambda x: ops.randomk(x, 65, 0), 1), (X,), "k must be"),
    (unknown_shapes(lambda v: ops.scatter_add(I32, v, R), 1), (tf.ones([4]),), "values"),
    (unknown_shapes(lambda s: ops.cast(X, tf.float16, s), 1), (tf.constant(float("inf")),), "scale"),
]


@pytest.mark.parametrize("fn, args, message", RUNTIME_CASES, ids=[c[2] for c in RUNTIME_CASES])
def test_runtime_checks_raise_invalid_argument(fn, args, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        fn(*args)


def test_generated_ops_check_their_attributes_too():
    # Callers that bypass the wrappers get InvalidArgumentError, not a crash.
    library = ops._library()
    with pytest.raises(tf.errors.InvalidArgumentError, match="block"):
        library.hvdkit_sign_ef(X, R, block=12)
    with pytest.raises(tf.errors.InvalidArgumentError, match="k must be"):
        library.hvdkit_topk_ef(X, R, k=100)
    with pytest.raises(tf.errors.InvalidArgumentError, match="seed"):
        library.hvdkit_quantize_int8(X, tf.constant([1, 2], tf.int64), block=16)
    with pytest.raises(ValueError, match="block"):  # shape functions check while tracing
        tf.function(lambda x: library.hvdkit_quantize_int8(x, tf.constant(0, tf.int64), block=0))(X)


def test_library_loads_here_and_a_missing_one_is_reported(monkeypatch):
    assert ops.backends()["loaded"], ops.backends()["error"]
    assert ops.backends()["cpu_isa"] in ops.backends()["cpu_isas"]
    monkeypatch.setattr(ops, "_LIB", None)
    monkeypatch.setattr(ops, "_LOAD_ERROR", "ImportError: simulated")
    assert ops.backends() == {"loaded": False, "error": "ImportError: simulated", "cpu": False, "cuda": False,
                              "cuda_built": False, "cpu_isa": None, "cpu_isas": []}
    with pytest.raises(RuntimeError, match="hvdkit._tf_ops failed to load .*simulated"):
        ops.sign_ef(X, R)
