"""TFOps against TorchOps: the shared compression algorithms, and the Reducer on simulated ranks, give the
same payloads, results and error-feedback state in both frameworks on the same inputs, over several steps."""
import numpy as np
import pytest

import tensorflow as tf
import torch

from hvdkit.compression.tensor_ops import ops_for  # noqa: E402
from hvdkit.compression import BucketState, create  # noqa: E402
from hvdkit.exchange.buckets import TensorInfo  # noqa: E402
from hvdkit.exchange.reducer import Reducer  # noqa: E402
from hvdkit.exchange.simulate import SimulatedWorld  # noqa: E402
from hvdkit.compression.tf_ops import TFOps  # noqa: E402
from hvdkit.compression.torch_ops import TorchOps  # noqa: E402
from tf_ops_support import assert_bitwise_equal, to_torch  # noqa: E402

RANKS = 3
N = 1000  # not a multiple of any block size used here
STEPS = 4
LAYOUT = ((0, (20, 30)), (600, (16, 25)))  # two matrices filling the 1000 elements (PowerSGD works per matrix)
# Bit-exact in both frameworks: the same csrc kernels and elementwise float32 maths.
EXACT = ["none", "fp16", "fp16,ef=1", "bf16", "bf16,ef=1", "int8:64", "int8:64,ef=1,stochastic=1", "topk:0.1",
         "topk:0.1,ef=0", "topk:0.1,approx=1", "randomk:0.2", "randomk:0.2,ef=0", "onebit", "onebit,block=64,ef=0"]


class SharedRandnTFOps(TFOps):
    """TFOps drawing PowerSGD's starting Q from torch's generator: randn need only agree across ranks,
    so this lets the rest of PowerSGD be compared across frameworks."""

    def randn(self, n, seed, like):
        return tf.constant(TorchOps().randn(n, seed, None if like is None else torch.zeros(1)).numpy())


def inputs(step, ranks=RANKS, n=N):
    rng = np.random.default_rng([step, 5])
    return [rng.standard_normal(n).astype(np.float32) for _ in range(ranks)]


def combine(compressor, payloads):
    """What allreduce (sum in rank order) or allgather (joined in rank order) hands every rank."""
    out = []
    for parts in zip(*payloads):
        fw = ops_for(parts[0])
        if compressor.summable:
            total = parts[0]
            for p in parts[1:]:
                total = fw.add_ranks(total, p)
            out.append(total)
        else:
            out.append(fw.concat(list(parts)))
    return tuple(out)


def run_exchange(compressor, xs, sts):
    """(first-round payloads per rank, every round's reduced payload, decoded result of rank 0)."""
    compressed = [compressor.compress(x, s) for x, s in zip(xs, sts)]
    first = [p for p, _ in compressed]
    payloads, ctxs, reduced_rounds = first, [c for _, c in compressed], []
    for round_index in range(compressor.rounds):
        reduced = combine(compressor, payloads)
        reduced_rounds.append(reduced)
        if round_index + 1 < compressor.rounds:
            nxt = [compressor.next_round(reduced, c) for c in ctxs]
            payloads, ctxs = [p for p, _ in nxt], [c for _, c in nxt]
    results = [compressor.decompress(reduced, c) for c in ctxs]
    for s in sts:
        s.steps += 1
    return first, reduced_rounds, results[0]


def snapshot(t):
    """A copy that later in-place updates (torch's residuals) leave alone."""
    return None if t is None else ops_for(t).copy(t)


def framework_run(spec, ops, to_tensor, steps=STEPS, layout=()):
    """Per step: (payloads, reduced payloads, result, [(residual, memory) per rank])."""
    compressor = create(spec, ops)
    sts = [BucketState(N, layout, peers=RANKS, peer=r, seed=11) for r in range(RANKS)]
    for s in sts:
        compressor.prepare(s, to_tensor(np.zeros(1, np.float32)))
    history = []
    for step in range(steps):
        xs = [to_tensor(x) for x in inputs(step)]
        first, reduced, result = run_exchange(compressor, xs, sts)
        history.append((first, reduced, result, [(snapshot(s.residual), snapshot(s.memory)) for s in sts]))
    return history


def both(spec, tf_ops=None, layout=()):
    theirs = framework_run(spec, TorchOps(), torch.from_numpy, layout=layout)
    ours = framework_run(spec, tf_ops or TFOps(), tf.constant, layout=layout)
    return ours, theirs


def as_torch(t):
    return None if t is None else to_torch(t)


@pytest.mark.parametrize("spec", EXACT)
def test_payloads_results_and_state_are_bit_identical_to_torch(spec):
    ours, theirs = both(spec)
    for step, ((p_tf, r_tf, res_tf, st_tf), (p_pt, r_pt, res_pt, st_pt)) in enumerate(zip(ours, theirs)):
        for rank in range(RANKS):
            assert len(p_tf[rank]) == len(p_pt[rank])
            for a, b in zip(p_tf[rank], p_pt[rank]):
                assert_bitwise_equal(a, b)
            for a, b in zip(st_tf[rank], st_pt[rank]):
                assert (a is None) == (b is None), f"step {step}: state present in one framework only"
                if a is not None:
                    assert_bitwise_equal(a, b)
        for a, b in zip(r_tf[0], r_pt[0]):
            assert_bitwise_equal(a, b)
        assert_bitwise_equal(res_tf, res_pt)
    if "ef=0" not in spec and spec not in ("none", "fp16", "bf16", "int8:64"):
        assert ours[-1][3][0][0] is not None and float(tf.reduce_max(tf.abs(ours[-1][3][0][0]))) > 0


@pytest.mark.parametrize("spec", ["powersgd:2", "powersgd:4,ef=0", "powersgd:1,warm_start=0"])
def test_powersgd_matches_torch_to_rounding(spec):
    """Matrix products and QR come from different BLAS/LAPACK code in the two frameworks: close, not equal."""
    ours, theirs = both(spec, SharedRandnTFOps(), LAYOUT)
    for step, ((p_tf, _, res_tf, st_tf), (p_pt, _, res_pt, st_pt)) in enumerate(zip(ours, theirs)):
        for rank in range(RANKS):
            torch.testing.assert_close(as_torch(p_tf[rank][0]), p_pt[rank][0], rtol=1e-4, atol=1e-4)
            for a, b in zip(st_tf[rank], st_pt[rank]):
                if b is not None:
                    torch.testing.assert_close(as_torch(a), b, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(as_torch(res_tf), res_pt, rtol=1e-4, atol=1e-4, msg=lambda m: f"step {step}: {m}")


def test_tf_randn_is_seeded_normal_and_equal_for_equal_seeds():
    ops = TFOps()
    a, b, c = ops.randn(10000, 2**62 + 3, None), ops.randn(10000, 2**62 + 3, None), ops.randn(10000, 4, None)
    assert_bitwise_equal(a, b)
    assert not np.array_equal(a.numpy(), c.numpy())
    assert abs(float(tf.reduce_mean(a))) < 0.05 and abs(float(tf.math.reduce_std(a)) - 1) < 0.05


@pytest.mark.parametrize("cols", [1, 2, 5])
def test_orthogonalize_gives_orthonormal_columns_spanning_the_input(cols):
    m = tf.constant(np.random.default_rng(cols).standard_normal((40, cols)).astype(np.float32))
    q = TFOps().orthogonalize(m)
    np.testing.assert_allclose((tf.transpose(q) @ q).numpy(), np.eye(cols), atol=1e-5)
    projected = q @ (tf.transpose(q) @ m)
    np.testing.assert_allclose(projected.numpy(), m.numpy(), atol=1e-4)
    expected = TorchOps().orthogonalize(torch.from_numpy(m.numpy()))
    torch.testing.assert_close(to_torch(q), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float16, tf.bfloat16, tf.float64])
def test_pack_scales_flags_nonfinite_and_unpack_restores(dtype):
    ops = TFOps()
    tensors = [tf.cast(tf.reshape(tf.range(12, dtype=tf.float32), (3, 4)), dtype), tf.cast(tf.ones([5]), dtype)]
    flat, nonfinite = ops.pack(tensors, 0.5)
    assert not nonfinite and flat.dtype == (tf.float32 if dtype == tf.bfloat16 else dtype)
    np.testing.assert_array_equal(tf.cast(flat, tf.float64).numpy(), np.concatenate([np.arange(12), np.ones(5)]) / 2)
    back = ops.unpack(ops.scale(tf.cast(flat, tf.float32), 2.0) if dtype != tf.float64 else flat * 2, tensors)
    for got, want in zip(back, tensors):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(tf.cast(got, tf.float64).numpy(), tf.cast(want, tf.float64).numpy())
    bad = [tf.cast(tf.constant([1.0, np.nan]), dtype)]
    assert ops.pack(bad, 1.0)[1] and not ops.all_finite(ops.pack(bad, 1.0)[0])


def test_poison_marks_float_and_bf16_bit_payloads_as_nan():
    ops = TFOps()
    assert np.isnan(ops.poison(tf.ones([3])).numpy()[0]) and ops.poison(tf.ones([3])).numpy()[1] == 1
    bits = ops.poison(ops.bitcast(tf.ones([2], tf.bfloat16), "int16"))
    assert np.isnan(tf.cast(ops.bitcast(bits, "bfloat16"), tf.float32).numpy()[0])
    assert not ops.all_finite(ops.sum_chunks(bits, 2, "bfloat16"))


# --- the whole Reducer (buckets, strategies, warm-up, EF) on simulated ranks, in both frameworks ------------

SHAPES = [(24, 16), (24,), (16, 10), (10,), (6, 10), (6,)]
INFOS = [TensorInfo(f"t{i}", shape, "float32", 4) for i, shape in enumerate(SHAPES)]


def reducer_run(ops, to_tensor, spec, size, per_node, hierarchical, steps=3):
    world = SimulatedWorld(size, per_node)

    def body(rank):
        reducer = Reducer(INFOS, spec, ops, world.transport(rank), world.links(rank, hierarchical),
                          fusion_bytes=1024, average=True, name="t")
        out = []
        for step in range(steps):
            rng = np.random.default_rng([step, rank])
            mine = [to_tensor(rng.standard_normal(s).astype(np.float32)) for s in SHAPES]
            for b in reducer.buckets:
                reducer.launch(b.index, [mine[s.index] for s in b.slots])
            results, finite = reducer.finish(lambda index: [mine[s.index] for s in reducer.buckets[index].slots])
            assert finite
            out.append({index: list(tensors) for index, tensors in results.items()})
        return out

    return world.run(body)


@pytest.mark.parametrize("spec", ["none", "fp16,ef=1", "bf16", "int8:64,ef=1", "topk:0.1", "randomk:0.25",
                                  "onebit,block=64", "topk:0.1,warmup=1,min_numel=20"])
@pytest.mark.parametrize("size,per_node,hierarchical", [(3, None, False), (4, 2, True)])
def test_reducer_with_tfops_equals_reducer_with_torchops(spec, size, per_node, hierarchical):
    ours = reducer_run(TFOps(), tf.constant, spec, size, per_node, hierarchical)
    theirs = reducer_run(TorchOps(), torch.from_numpy, spec, size, per_node, hierarchical)
    for rank in range(size):
        for step, (a, b) in enumerate(zip(ours[rank], theirs[rank])):
            assert a.keys() == b.keys()
            for index in a:
                for x, y in zip(a[index], b[index]):
                    assert tuple(x.shape) == tuple(y.shape)
                    assert_bitwise_equal(x, y)


@pytest.mark.parametrize("hierarchical", [False, True])
def test_reducer_with_tfops_powersgd_is_close_to_torch(hierarchical):
    ours = reducer_run(SharedRandnTFOps(), tf.constant, "powersgd:2", 4, 2, hierarchical)
    theirs = reducer_run(TorchOps(), torch.from_numpy, "powersgd:2", 4, 2, hierarchical)
    for a, b in zip(ours[3], theirs[3]):
        for index in a:
            for x, y in zip(a[index], b[index]):
                torch.testing.assert_close(to_torch(x), y, rtol=1e-4, atol=1e-4)
