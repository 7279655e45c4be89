"""PowerSGD on simulated ranks against a few lines of numpy that restate Vogels et al.'s algorithm, and
the zero-gradient case that used to collapse Q for good."""
import numpy as np
import pytest
import torch

from hvdkit.compression.torch_ops import TorchOps
from hvdkit.exchange.buckets import TensorInfo
from hvdkit.exchange.reducer import Reducer
from hvdkit.exchange.simulate import SimulatedWorld

SHAPES = [(24, 40), (40, 16)]
RANKS = 2


def orthogonalize(m):
    """Gram-Schmidt with PyTorch's epsilon for up to 2 columns, QR beyond (as PyTorch's hook); hvdkit's
    documented difference: an all-zero column becomes the unit vector e_i."""
    m = m.astype(np.float32).copy()
    if m.shape[1] > 2:
        return np.linalg.qr(m)[0].astype(np.float32)
    for i in range(m.shape[1]):
        norm = np.linalg.norm(m[:, i])
        m[:, i] /= norm + np.float32(1e-8)
        if norm == 0:
            m[i % m.shape[0], i] = 1
        if i + 1 < m.shape[1]:
            m[:, i + 1:] -= (m[:, i:i + 1] * m[:, i + 1:]).sum(axis=0, keepdims=True) * m[:, i:i + 1]
    return m


class NumpyPowerSGD:
    """Warm-started PowerSGD with error feedback on each matrix, every rank in one process."""

    def __init__(self, q0, rank):
        self.q = q0  # [(cols x r) per matrix]
        self.residuals = None
        self.rank = rank

    def step(self, grads):  # grads[r][i]: rank r's matrix i, already divided by the number of ranks
        if self.residuals is None:
            self.residuals = [[np.zeros_like(m) for m in g] for g in grads]
        out = []
        for i in range(len(grads[0])):
            c = [grads[r][i] + self.residuals[r][i] for r in range(len(grads))]
            q = orthogonalize(self.q[i])
            p = orthogonalize(sum(ci @ q for ci in c))
            q = sum(ci.T @ p for ci in c)
            approx = p @ q.T
            for r in range(len(grads)):
                self.residuals[r][i] = c[r] - approx / np.float32(len(grads))
            self.q[i] = q
            out.append(approx)
        return out


def grads(rank, step, zero_first):
    if zero_first and step == 0:
        return [np.zeros(s, np.float32) for s in SHAPES]
    rng = np.random.default_rng([rank, step, 3])
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def run(spec, steps, zero_first=False):
    """Per rank: [averaged matrices per step], and rank 0's initial Q (what PowerSGD starts from)."""
    world = SimulatedWorld(RANKS)
    infos = [TensorInfo(f"m{i}", s, "float32", 4) for i, s in enumerate(SHAPES)]
    initial = {}

    def body(rank):
        reducer = Reducer(infos, spec, TorchOps(), world.transport(rank), world.links(rank), fusion_bytes=1 << 30,
                          average=True, name="psgd")
        bucket, = reducer.buckets
        state = reducer._state(bucket, "flat")
        reducer.compressor.prepare(state, torch.zeros(1))
        initial[rank] = state.memory.clone()
        out = []
        for step in range(steps):
            mine = [torch.from_numpy(g) for g in grads(rank, step, zero_first)]
            reducer.launch(0, [mine[s.index] for s in bucket.slots])
            results, _ = reducer.finish()
            flat = results[0]
            out.append([flat[s.offset:s.offset + s.numel].view(s.shape).numpy().copy()
                        for s in sorted(bucket.slots, key=lambda s: s.index)])
        return out, bucket

    results = world.run(body)
    return results, initial[0]


def initial_q(q_flat, bucket, rank):
    """Split hvdkit's flat Q memory into per-matrix (cols x r) blocks, in matrix order."""
    blocks, offset = {}, 0
    for slot in bucket.slots:
        cols = int(np.prod(slot.shape[1:]))
        r = min(rank, slot.shape[0], cols)
        blocks[slot.index] = q_flat[offset:offset + cols * r].reshape(cols, r).numpy().astype(np.float32)
        offset += cols * r
    return [blocks[i] for i in range(len(SHAPES))]


@pytest.mark.parametrize("rank", [1, 2, 4])
@pytest.mark.parametrize("zero_first", [False, True], ids=["random", "zero-first-step"])
def test_powersgd_matches_the_numpy_restatement(rank, zero_first):
    steps = 4
    runs, q0 = run(f"powersgd:{rank}", steps, zero_first)
    (_, bucket) = runs[0]
    model = NumpyPowerSGD(initial_q(q0, bucket, rank), rank)
    for step in range(steps):
        expected = model.step([[g / np.float32(RANKS) for g in grads(r, step, zero_first)] for r in range(RANKS)])
        for r in range(RANKS):
            for got, want in zip(runs[r][0][step], expected):
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max() + 1e-12)
        if zero_first and step == 0:
            assert all(not m.any() for m in runs[0][0][0])
        else:
            assert all(np.abs(m).max() > 0 for m in expected)


@pytest.mark.parametrize("rank", [1, 2])
def test_a_zero_first_step_does_not_collapse_q(rank):
    """With a zero first gradient, P = M Q = 0 and Q = M^T P = 0 used to stay zero for good: nothing was
    sent again and the residual grew without bound. Later non-zero gradients must get through."""
    runs, _ = run(f"powersgd:{rank}", 6, zero_first=True)
    steps, _ = runs[0]
    assert all(np.abs(m).max() > 0 for step in steps[1:] for m in step)


def test_hierarchical_powersgd_divides_the_matrices_among_the_local_ranks():
    """4 ranks in 2 nodes: each matrix is exchanged between the nodes once, by the local rank that owns it,
    as PowerSGD over the 2 node sums; the numpy restatement starts from each owner's Q."""
    size, per_node, steps = 4, 2, 3
    world = SimulatedWorld(size, per_node)
    infos = [TensorInfo(f"m{i}", s, "float32", 4) for i, s in enumerate(SHAPES)]
    initial = {}

    def body(rank):
        reducer = Reducer(infos, "powersgd:2", TorchOps(), world.transport(rank), world.links(rank, True),
                          fusion_bytes=1 << 30, average=True, name="psgd")
        bucket, = reducer.buckets
        state = reducer._state(bucket, "matrix_sharded")
        reducer.compressor.prepare(state, torch.zeros(1))
        initial[rank] = (state.layout, state.memory.clone())
        out = []
        for step in range(steps):
            mine = [torch.from_numpy(g) for g in grads(rank, step, False)]
            reducer.launch(0, [mine[s.index] for s in bucket.slots])
            results, _ = reducer.finish()
            out.append(results[0].numpy().copy())
            assert dict(reducer.last_stats.routes) == {"matrix_sharded/allreduce": 1}
        return out, bucket

    runs = world.run(body)
    bucket = runs[0][1]
    q0 = {}
    for rank in range(per_node):  # node 0's local ranks own the matrices (node 1's hold the same Q)
        layout, memory = initial[rank]
        offset = 0
        for _, shape in layout:
            cols, r = int(np.prod(shape[1:])), min(2, shape[0], int(np.prod(shape[1:])))
            q0[shape] = memory[offset:offset + cols * r].reshape(cols, r).numpy()
            offset += cols * r
    assert len(q0) == len(SHAPES)  # every matrix has an owner
    model = NumpyPowerSGD([q0[s] for s in SHAPES], 2)
    for step in range(steps):
        node_sums = [[sum(grads(r, step, False)[i] / np.float32(size) for r in node) for i in range(len(SHAPES))]
                     for node in ((0, 1), (2, 3))]
        expected = model.step(node_sums)
        for rank in range(size):
            flat = runs[rank][0][step]
            for s in bucket.slots:
                got = flat[s.offset:s.offset + s.numel].reshape(s.shape)
                np.testing.assert_allclose(got, expected[s.index], rtol=1e-4,
                                           atol=1e-5 * np.abs(expected[s.index]).max())
