"""TensorFlow top-k with error feedback, random-k and scatter-add: against the
TensorFlow references and the torch ops, eagerly and inside tf.function."""
import numpy as np
import pytest

from tf_ops_support import (FLOATS, SIZES, assert_all_bitwise_equal, assert_bitwise_equal, eager_and_graph, every_isa,
                            random_vector, tf, to_torch, torch)

from hvdkit.kernels import torch_ops
from hvdkit.kernels import tf_ops as ops
from hvdkit.kernels import tf_reference as ref


def check_error_feedback(x, residual, indices, values, new_residual):
    """What holds in both modes: pads are (0, -0.0); distinct selected indices,
    values = c[indices], no zero selected, and sent + kept == c bit for bit.
    Returns the selected indices."""
    c = (x + residual).numpy()
    indices, values, kept = indices.numpy(), values.numpy(), new_residual.numpy()
    pad = values.view(np.uint32) == np.uint32(0x80000000)  # -0.0
    assert indices.dtype == np.int32 and not indices[pad].any()
    indices, values = indices[~pad], values[~pad]
    assert len(np.unique(indices)) == len(indices) and np.all(values != 0)
    np.testing.assert_array_equal(values, c[indices])
    sent = np.zeros_like(c)
    sent[indices] = values
    np.testing.assert_array_equal(sent + kept, c)
    # Bit for bit (-0.0 included): kept is c wherever nothing was selected.
    untouched = np.ones(len(c), bool)
    untouched[indices] = False
    np.testing.assert_array_equal(kept[untouched].view(np.uint32), c[untouched].view(np.uint32))
    assert not kept[indices].any()
    return indices


def k_of(n, fraction):
    return n if fraction == 1 else int(n * fraction)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("fraction", [0.0, 0.01, 1.0])
def test_exact_topk(n, fraction):
    k = k_of(n, fraction)
    x, residual = random_vector(n, seed=n), random_vector(n, seed=n + 1, scale=0.2)
    got = eager_and_graph(lambda x, r: ops.topk_ef(x, r, k), x, residual)
    assert got[0].shape == (k,)
    check_error_feedback(x, residual, *got)
    # Random floats have no ties: the selected set is unique, so every
    # implementation picks the same one (in its own order).
    order = np.argsort(got[0].numpy())
    expected = ref.topk_ef(x, residual, k)
    torch_residual = to_torch(residual)
    torch_indices, torch_values = torch_ops.topk_ef(to_torch(x), torch_residual, k)
    for indices, values in (expected[:2], (torch_indices, torch_values)):
        theirs = np.argsort(np.asarray(indices))
        np.testing.assert_array_equal(got[0].numpy()[order], np.asarray(indices)[theirs])
        np.testing.assert_array_equal(got[1].numpy()[order], np.asarray(values)[theirs])
    assert_bitwise_equal(got[2], expected[2])
    assert_bitwise_equal(got[2], torch_residual)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("fraction", [0.01, 0.3])
def test_approx_topk(n, fraction):
    k = k_of(n, fraction)
    x, residual = random_vector(n, seed=n), random_vector(n, seed=n + 1, scale=0.2)
    for fn in (ops.topk_ef, tf.function(ops.topk_ef, reduce_retracing=True)):
        indices, values, new_residual = fn(x, residual, k, approx=True)
        assert indices.shape[0] == k and values.shape[0] == k
        chosen = check_error_feedback(x, residual, indices, values, new_residual)
        assert ops.topk_approx_floor(k) <= len(chosen) <= k
        if 0 < len(chosen) < n:  # every selected |c| >= every unselected one
            magnitudes = np.abs((x + residual).numpy())
            unselected = np.ones(n, bool)
            unselected[chosen] = False
            assert magnitudes[chosen].min() >= magnitudes[unselected].max()


def sparse_vector(n, nonzero, seed):
    """99 % zeros: `nonzero` entries with distinct magnitudes; element 0 is -0.0."""
    rng = np.random.default_rng(seed)
    values = np.zeros(n, np.float32)
    where = rng.choice(np.arange(1, n), size=nonzero, replace=False)
    values[where] = rng.permutation(np.arange(1, nonzero + 1, dtype=np.float32)) * np.where(
        rng.random(nonzero) < 0.5, np.float32(-0.5), np.float32(0.5))
    values[0] = np.float32(-0.0)
    return values


@pytest.mark.parametrize("n, nonzero, k", [(100_000, 1_000, 500), (100_000, 1_000, 5_000), (4_099, 41, 300),
                                           (4_099, 41, 4_099), (100_000, 0, 1_000)])
@pytest.mark.parametrize("approx", [False, True])
def test_topk_on_sparse_input_pads_with_negative_zero(n, nonzero, k, approx):
    """Exactly k pairs (a static shape, in graphs too); zeros never selected;
    the free slots are (0, -0.0) and residual[0] (-0.0 here) is left alone."""
    x = tf.constant(sparse_vector(n, nonzero, seed=k))
    residual = tf.constant(np.where(np.arange(n) == 0, np.float32(-0.0), np.float32(0.0)))
    graph = tf.function(lambda x, r: ops.topk_ef(x, r, k, approx=approx))
    assert graph.get_concrete_function(tf.TensorSpec([None], tf.float32),
                                       tf.TensorSpec([None], tf.float32)).structured_outputs[0].shape == (k,)
    indices, values, kept = graph(x, residual)
    assert indices.shape == (k,) and values.shape == (k,)
    chosen = check_error_feedback(x, residual, indices, values, kept)
    c = (x + residual).numpy()
    assert kept.numpy()[:1].view(np.uint32)[0] == np.uint32(0x80000000), "padding touched residual[0]"
    magnitudes = np.abs(c)
    expected = np.flatnonzero(c)[np.argsort(-magnitudes[np.flatnonzero(c)], kind="stable")][:k]  # numpy top-k
    if approx:
        assert min(ops.topk_approx_floor(k), nonzero) <= len(chosen) <= k
        if k >= 2 * nonzero:
            np.testing.assert_array_equal(np.sort(chosen), np.sort(expected))
    else:
        np.testing.assert_array_equal(np.sort(chosen), np.sort(expected))
    torch_residual = to_torch(residual)
    torch_indices, torch_values = torch_ops.topk_ef(to_torch(x), torch_residual, k, approx=approx)
    assert_bitwise_equal(kept, torch_residual)  # one CPU core behind both
    np.testing.assert_array_equal(np.sort(indices.numpy()), np.sort(torch_indices.numpy()))


def test_topk_takes_nan_and_inf_first_like_torch():
    x = random_vector(100_000, seed=3).numpy()
    x[[11, 99_000]], x[500] = np.nan, -np.inf
    indices, _, _ = ops.topk_ef(tf.constant(x), tf.zeros([100_000]), 3)
    assert sorted(indices.numpy().tolist()) == [11, 500, 99_000]
    assert sorted(torch_ops.topk_ef(torch.from_numpy(x), torch.zeros(100_000), 3)[0].tolist()) == [11, 500, 99_000]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("fraction", [0.0, 0.01, 1.0])
@pytest.mark.parametrize("dtype", FLOATS)
def test_randomk(n, fraction, dtype):
    k = k_of(n, fraction)
    x = random_vector(n, seed=n, dtype=dtype)
    seed = tf.constant(-5, tf.int64)  # as a tensor: the graph takes it as an input
    got = eager_and_graph(lambda x, s: ops.randomk(x, k, s), x, seed)
    assert_all_bitwise_equal(got, ref.randomk(x, k, 2**64 - 5))
    assert_all_bitwise_equal(got, torch_ops.randomk(to_torch(x), k, 2**64 - 5))
    assert np.all(np.diff(got[0].numpy()) > 0), "indices must be distinct and sorted"


@pytest.mark.parametrize("n", SIZES)
def test_scatter_add_of_many_ranks(n):
    rng = np.random.default_rng(n)
    count = min(3 * n, 300_000)  # several ranks' payloads end to end: many duplicates
    indices = tf.constant(rng.integers(0, max(n, 1), count, dtype=np.int32))
    values, out = random_vector(count, seed=1), tf.reshape(random_vector(n, seed=2), [n, 1])
    got = eager_and_graph(ops.scatter_add, indices, values, out)
    assert_bitwise_equal(got, ref.scatter_add(indices, values, out))
    in_place = to_torch(out)
    torch_ops.scatter_add(to_torch(indices), to_torch(values), in_place)
    assert_bitwise_equal(got, in_place)


@pytest.mark.parametrize("bad", [10, -1])
def test_scatter_add_rejects_out_of_range_in_eager_and_graph(bad):
    indices = tf.constant([1, bad, 2], tf.int32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="indices must lie in"):
        ops.scatter_add(indices, tf.ones([3]), tf.zeros([10]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="indices must lie in"):
        tf.function(ops.scatter_add)(indices, tf.ones([3]), tf.zeros([10]))


def test_scatter_add_poison_returns_nan_at_0_instead_of_raising():
    out = tf.range(10, dtype=tf.float32)
    for bad in (10, -1):
        indices = tf.constant([1, bad, 2], tf.int32)
        for fn in (ops.scatter_add, tf.function(ops.scatter_add)):
            got = fn(indices, tf.ones([3]), out, on_invalid="poison").numpy()
            assert np.isnan(got[0])
            np.testing.assert_array_equal(got[1:], out.numpy()[1:])  # nothing added
        expected = ref.scatter_add(indices, tf.ones([3]), out, on_invalid="poison").numpy()
        assert np.isnan(expected[0]) and np.array_equal(expected[1:], got[1:])
    with pytest.raises(ValueError, match="on_invalid"):
        ops.scatter_add(tf.constant([1], tf.int32), tf.ones([1]), out, on_invalid="skip")


def test_scatter_add_pads_change_nothing():
    out = tf.constant([-0.0, 1.5, -2.0])
    got = ops.scatter_add(tf.constant([0, 0, 2, 0], tf.int32), tf.constant([-0.0, -0.0, 0.25, -0.0]), out)
    np.testing.assert_array_equal(got.numpy().view(np.uint32),
                                  np.array([-0.0, 1.5, -1.75], np.float32).view(np.uint32))


def test_topk_and_randomk_on_every_isa():
    x, residual = random_vector(300_001, seed=5), random_vector(300_001, seed=6)
    for isa in every_isa():
        previous = ops.set_cpu_isa(isa)
        try:
            got = ops.topk_ef(x, residual, 3000)
            check_error_feedback(x, residual, *got)
            assert_bitwise_equal(got[2], ref.topk_ef(x, residual, 3000)[2])
            assert_all_bitwise_equal(ops.randomk(x, 3000, 7), ref.randomk(x, 3000, 7))
        finally:
            ops.set_cpu_isa(previous)
