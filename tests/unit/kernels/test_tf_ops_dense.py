"""TensorFlow pack / unpack / cast, int8 and one-bit ops: against the
TensorFlow references and the torch ops, eagerly and inside tf.function."""
import numpy as np
import pytest

from tf_ops_support import (FLOATS, SIZES, assert_all_bitwise_equal, assert_bitwise_equal, eager_and_graph, every_isa,
                            random_vector, resnet_tensors, tf, to_torch, torch, torch_dtype)

from hvdkit.kernels import torch_ops
from hvdkit.kernels.checks import seed64
from hvdkit.kernels import tf_ops as ops
from hvdkit.kernels import tf_reference as ref

SEED = 2**64 - 5  # seeds are used modulo 2**64; this one is negative as an int64


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("source, target", [(tf.float32, tf.float16), (tf.float32, tf.bfloat16),
                                            (tf.float16, tf.bfloat16), (tf.bfloat16, tf.float32)])
def test_cast(n, source, target):
    # Scaled by 64, some values leave the float16 range and must saturate.
    x = random_vector(n, seed=n, scale=1000.0, dtype=source)
    y, nonfinite = eager_and_graph(lambda x: ops.cast(x, target, scale=64.0), x)
    assert_bitwise_equal(y, ref.cast(x, target, scale=64.0)[0])
    assert_bitwise_equal(y, torch_ops.cast(to_torch(x), torch_dtype(target), 64.0)[0])
    assert nonfinite.shape == () and not bool(nonfinite)


@pytest.mark.parametrize("target", [tf.float16, tf.bfloat16])
def test_cast_saturates_finite_and_flags_nonfinite(target):
    x = tf.constant([3.4e38, -3.4e38, 1.0, np.nan, np.inf, -np.inf] * 3)
    y, nonfinite = ops.cast(x, target)
    assert bool(nonfinite)
    assert y[:3].numpy().astype(np.float32).tolist() == [target.max, -target.max, 1.0]
    assert_bitwise_equal(y, ref.cast(x, target)[0])
    assert not bool(ops.cast(x[:3], target)[1])
    assert bool(ops.cast(tf.fill([5], 1e30), tf.float32, scale=1e10)[1])


@pytest.mark.parametrize("flat_dtype", FLOATS)
def test_pack_resnet_list(flat_dtype):
    tensors = resnet_tensors(dtypes=FLOATS)
    assert len(tensors) >= 150
    flat = eager_and_graph(lambda *ts: ops.pack(list(ts), flat_dtype, scale=3.0), *tensors)
    assert_bitwise_equal(flat, ref.pack(tensors, flat_dtype, scale=3.0))
    assert_bitwise_equal(flat, torch_ops.pack([to_torch(t) for t in tensors], torch_dtype(flat_dtype), 3.0))


@pytest.mark.parametrize("flat_dtype", FLOATS)
def test_pack_mixes_sizes_and_dtypes(flat_dtype):
    tensors = [random_vector(n, seed=n, dtype=FLOATS[i % 3]) for i, n in enumerate(SIZES)]
    flat = eager_and_graph(lambda *ts: ops.pack(list(ts), flat_dtype, scale=0.25), *tensors)
    assert_bitwise_equal(flat, ref.pack(tensors, flat_dtype, scale=0.25))
    assert ops.pack([], tf.float16).shape == (0,) and ops.unpack(tf.zeros([0]), []) == []


@pytest.mark.parametrize("flat_dtype", FLOATS)
@pytest.mark.parametrize("accumulate", [False, True])
def test_unpack_resnet_list(flat_dtype, accumulate):
    tensors = resnet_tensors(dtypes=FLOATS, seed=1)
    flat = random_vector(sum(int(tf.size(t)) for t in tensors), seed=2, dtype=flat_dtype)
    got = eager_and_graph(lambda f, *ts: ops.unpack(f, list(ts), scale=0.5, accumulate=accumulate), flat, *tensors)
    assert_all_bitwise_equal(got, ref.unpack(flat, tensors, scale=0.5, accumulate=accumulate))
    in_place = [to_torch(t) for t in tensors]
    torch_ops.unpack(to_torch(flat), in_place, scale=0.5, accumulate=accumulate)
    assert_all_bitwise_equal(got, in_place)


def test_pack_unpack_round_trip_is_bit_exact():
    originals = resnet_tensors(dtypes=FLOATS, seed=3)
    copies = ops.unpack(ops.pack(originals, tf.float32, scale=8.0), originals, scale=0.125)
    assert_all_bitwise_equal(copies, originals)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("block, stochastic", [(1, False), (7, True), (1024, False), (1024, True)])
def test_quantize_int8(n, block, stochastic):
    x = random_vector(n, seed=n + block, scale=5.0)
    seed = tf.constant(seed64(SEED), tf.int64)  # a tensor: the graph takes it as an input
    q, scales = eager_and_graph(lambda x, s: ops.quantize_int8(x, block, stochastic, s), x, seed)
    assert_all_bitwise_equal((q, scales), ref.quantize_int8(x, block, stochastic, SEED))
    assert_all_bitwise_equal((q, scales), torch_ops.quantize_int8(to_torch(x), block, stochastic, SEED))


def test_quantize_int8_nonfinite_and_tiny_blocks():
    x = random_vector(40, seed=7).numpy()
    x[3], x[25], x[30:32] = np.inf, np.nan, [1e-40, -3e-41]
    q, scales = ops.quantize_int8(tf.constant(x), 10)
    assert_all_bitwise_equal((q, scales), ref.quantize_int8(tf.constant(x), 10))
    assert np.isnan(scales.numpy()[[0, 2]]).all() and not q.numpy()[:10].any()


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("accumulate", [False, True])
def test_dequantize_int8(n, accumulate):
    q, scales = ops.quantize_int8(random_vector(n, seed=2), 256)
    out = tf.reshape(random_vector(n, seed=3), [1, n])  # results take out's shape
    got = eager_and_graph(lambda q, s, o: ops.dequantize_int8(q, s, 256, out=o, accumulate=accumulate), q, scales, out)
    assert got.shape == out.shape
    assert_bitwise_equal(got, ref.dequantize_int8(q, scales, 256, out=out, accumulate=accumulate))
    in_place = to_torch(out)
    torch_ops.dequantize_int8(to_torch(q), to_torch(scales), 256, out=in_place, accumulate=accumulate)
    assert_bitwise_equal(got, in_place)
    assert_bitwise_equal(ops.dequantize_int8(q, scales, 256), ref.dequantize_int8(q, scales, 256))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("block", [8, 24, 1024])
def test_sign_ef(n, block):
    x = random_vector(n, seed=n)
    residual = random_vector(n, seed=n + 1, scale=0.3)
    got = eager_and_graph(lambda x, r: ops.sign_ef(x, r, block), x, residual)
    assert_all_bitwise_equal(got, ref.sign_ef(x, residual, block))
    in_place = to_torch(residual)
    bits, scales = torch_ops.sign_ef(to_torch(x), in_place, block)
    assert_all_bitwise_equal(got, (bits, scales, in_place))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("ranks, layout, accumulate", [(1, "1-D", False), (3, "2-D", True), (3, "1-D", False)])
def test_sign_decode(n, ranks, layout, accumulate):
    rng = np.random.default_rng(n)
    bits = rng.integers(0, 256, (ranks, -(-n // 8)), dtype=np.uint8)
    scales = rng.random((ranks, -(-n // 64)), dtype=np.float32)
    if layout == "1-D":  # several ranks' payloads end to end, as allgather returns them
        bits, scales = bits.reshape(-1), scales.reshape(-1)
    bits, scales, out = tf.constant(bits), tf.constant(scales), random_vector(n, seed=5)
    got = eager_and_graph(lambda b, s, o: ops.sign_decode(b, s, n, 64, out=o, accumulate=accumulate),
                          bits, scales, out)
    assert_bitwise_equal(got, ref.sign_decode(bits, scales, n, 64, out=out, accumulate=accumulate))
    in_place = to_torch(out)
    torch_ops.sign_decode(to_torch(bits), to_torch(scales), n, 64, out=in_place, accumulate=accumulate)
    assert_bitwise_equal(got, in_place)


def test_error_feedback_state_in_a_variable_across_steps():
    # The TensorFlow pattern: the residual lives in a tf.Variable that a
    # tf.function updates each step; it must track torch's in-place residual.
    n, block = 100_003, 512
    residual = tf.Variable(tf.zeros([n]))
    torch_residual = torch.zeros(n)

    @tf.function
    def step(x):
        bits, scales, new_residual = ops.sign_ef(x, residual, block)
        residual.assign(new_residual)
        return bits, scales

    for s in range(3):
        x = random_vector(n, seed=10 + s)
        assert_all_bitwise_equal(step(x), torch_ops.sign_ef(to_torch(x), torch_residual, block))
        assert_bitwise_equal(residual.read_value(), torch_residual)


def test_inputs_are_never_written_and_forwarded_buffers_are_right():
    # Eager inputs stay referenced by the caller, so the kernels copy them;
    # inside a graph, intermediate tensors may be handed over and updated in
    # place. Both must give the same results and leave the caller's tensors alone.
    x, residual = random_vector(4099, seed=1), random_vector(4099, seed=2)
    before = residual.numpy().copy()
    eager = ops.sign_ef(x, residual, 64) + ops.topk_ef(x, residual, 40) + (ops.scatter_add(
        tf.constant([3, 3], tf.int32), tf.constant([1.0, 2.0]), residual),)
    np.testing.assert_array_equal(residual.numpy(), before)

    @tf.function
    def forwarded(x, residual):
        fresh = residual * 1.0  # an intermediate only the next op holds
        return (ops.sign_ef(x, fresh, 64) + ops.topk_ef(x, residual * 1.0, 40)
                + (ops.scatter_add(tf.constant([3, 3], tf.int32), tf.constant([1.0, 2.0]), residual * 1.0),))

    assert_all_bitwise_equal(forwarded(x, residual), eager)
    np.testing.assert_array_equal(residual.numpy(), before)


def test_every_cpu_isa_and_its_own_setting():
    x, residual = random_vector(4099, seed=3, scale=3e4), random_vector(4099, seed=4)
    torch_isa = torch_ops.backends()["cpu_isa"]
    for isa in every_isa():
        previous = ops.set_cpu_isa(isa)
        try:
            assert ops.backends()["cpu_isa"] == isa
            assert torch_ops.backends()["cpu_isa"] == torch_isa, "the two libraries must not share state"
            assert_bitwise_equal(ops.cast(x, tf.float16, 3.0)[0], ref.cast(x, tf.float16, 3.0)[0])
            assert_all_bitwise_equal(ops.quantize_int8(x, 100, True, 9), ref.quantize_int8(x, 100, True, 9))
            assert_all_bitwise_equal(ops.sign_ef(x, residual, 40), ref.sign_ef(x, residual, 40))
        finally:
            ops.set_cpu_isa(previous)
