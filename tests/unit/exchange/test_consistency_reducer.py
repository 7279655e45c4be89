"""Mismatches between ranks' Reducers raise on every simulated rank, naming the culprit, and never hang.

The ranks run in threads of one process (hvdkit.exchange.simulate) whose collectives give up after a few
seconds, so a rank left waiting fails the test instead of hanging it. tests/parallel/torch/
test_mismatch.py runs the same cases on real Horovod ranks.
"""
import pytest
import torch

from hvdkit.exchange.buckets import TensorInfo
from hvdkit.exchange.reducer import Reducer
from hvdkit.compression.torch_ops import TorchOps
from hvdkit.exchange.simulate import SimulatedWorld

SHAPES = [(64, 32), (64,), (32, 16), (32,), (10, 32), (10,)]
INFOS = [TensorInfo(f"t{i}", shape, "float32", 4) for i, shape in enumerate(SHAPES)]
SPECS = ["none", "fp16", "int8", "topk:0.1", "onebit", "powersgd:2"]


def world_of(size, per_node=None):
    return SimulatedWorld(size, per_node, timeout=20.0)


def grads(rank, step, infos=INFOS):
    g = torch.Generator().manual_seed(1000 * step + rank)
    return [torch.randn(info.shape, generator=g).to(getattr(torch, info.dtype)) for info in infos]


def messages(world, body):
    """Run ``body(rank)`` on every simulated rank; the error message each rank raised (None: none)."""
    def catching(rank):
        try:
            body(rank)
        except ValueError as err:
            return str(err)
        return None

    return world.run(catching)


def reducer(world, rank, spec="none", hierarchical=False, fusion_bytes=4096, infos=INFOS, average=True, name="t"):
    return Reducer(infos, spec, TorchOps(), world.transport(rank), world.links(rank, hierarchical),
                   fusion_bytes=fusion_bytes, average=average, name=name)


def step(r, tensors):
    for b in r.buckets:
        r.launch(b.index, [tensors[s.index] for s in b.slots])
    return r.finish()


@pytest.mark.parametrize("size,per_node,changes,expected", [
    (2, None, {"spec": "topk:0.02"}, "compression is 'topk:0.01' on rank 0 but 'topk:0.02' on rank 1"),
    (2, None, {"spec": "topk:0.01,warmup=5"}, "compression option warmup is 0 on rank 0 but 5 on rank 1"),
    (4, None, {"spec": "topk:0.01,min_numel=100"}, "compression option min_numel is 1024 on ranks 0-2 but 100 on rank 3"),
    (4, None, {"spec": "topk:0.01,ef=0"}, "compression option ef is True on ranks 0-2 but False on rank 3"),
    (2, None, {"fusion_bytes": 8192}, "fusion_mb is 0.003906 on rank 0 but 0.007812 on rank 1"),
    (4, 2, {"hierarchical": True}, "hierarchical is False on ranks 0-2 but True on rank 3"),
    (2, None, {"average": False}, "op is 'average' on rank 0 but 'sum' on rank 1"),
    (2, None, {"name": "o1"}, "the optimizer's name (create DistributedOptimizers in the same order on every rank) "
                              "is 't' on rank 0 but 'o1' on rank 1"),
])
def test_settings_differing_on_the_last_rank_raise_on_every_rank(size, per_node, changes, expected):
    world = world_of(size, per_node)

    def body(rank):
        kwargs = {"spec": "topk:0.01"}
        if rank == size - 1:
            kwargs.update(changes)
        step(reducer(world, rank, **kwargs), grads(rank, 0))

    got = messages(world, body)
    assert all(m == got[0] for m in got), got
    assert got[0] == f"hvdkit DistributedOptimizer: the settings differ across ranks: {expected}"


def test_a_different_parameter_count_raises_on_every_rank_before_any_exchange():
    world = world_of(4, 2)

    def body(rank):
        infos = INFOS + [TensorInfo("extra", (3,), "float32", 4)] if rank in (1, 3) else INFOS
        r = reducer(world, rank, "topk:0.1", hierarchical=True, infos=infos)
        step(r, grads(rank, 0, infos))

    got = messages(world, body)
    assert got == ["hvdkit DistributedOptimizer: the model differs across ranks: parameter 'extra' exists on "
                   "ranks 1, 3 but not on ranks 0, 2"] * 4


def changed_at_step_1(rank, step_index, tensors, who, index, new):
    if step_index == 1 and rank in who:
        tensors[index] = new


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("size,per_node,hierarchical", [(2, None, False), (4, 2, True)])
def test_a_shape_change_after_the_first_step_raises_on_every_rank(spec, size, per_node, hierarchical):
    world = world_of(size, per_node)
    culprit = size - 1

    def body(rank):
        r = reducer(world, rank, spec, hierarchical)
        for s in range(3):
            tensors = grads(rank, s)
            changed_at_step_1(rank, s, tensors, {culprit}, 2, torch.randn(32, 17))
            step(r, tensors)

    got = messages(world, body)
    others = "rank 0" if size == 2 else "ranks 0-2"
    assert got == [f"hvdkit DistributedOptimizer: a gradient changed shape or dtype on some ranks after the optimizer "
                   f"was built: parameter 't2' has shape (32, 16), dtype float32 on {others} but shape (32, 17), "
                   f"dtype float32 on rank {culprit} (planned: shape (32, 16), dtype float32)"] * size


@pytest.mark.parametrize("spec", ["none", "topk:0.1"])
def test_a_dtype_change_on_one_rank_is_named(spec):
    world = world_of(2)

    def body(rank):
        r = reducer(world, rank, spec)
        for s in range(2):
            tensors = grads(rank, s)
            changed_at_step_1(rank, s, tensors, {0}, 5, tensors[5].double())
            step(r, tensors)

    got = messages(world, body)
    assert all("parameter 't5' has shape (10,), dtype float64 on rank 0 but shape (10,), dtype float32 on rank 1"
               in m for m in got), got


def test_a_float16_bucket_whose_tensor_became_float32_is_named():
    infos = [TensorInfo("h0", (40,), "float16", 2), TensorInfo("h1", (8,), "float16", 2)]
    world = world_of(2)

    def body(rank):
        r = reducer(world, rank, infos=infos)
        for s in range(2):
            tensors = grads(rank, s, infos)
            changed_at_step_1(rank, s, tensors, {1}, 0, tensors[0].float())
            step(r, tensors)

    got = messages(world, body)
    assert all("parameter 'h0' has shape (40,), dtype float16 on rank 0 but shape (40,), dtype float32 on rank 1"
               in m for m in got), got


@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_a_bucket_sent_in_its_own_dtype_names_a_shape_change(dtype):
    """The rank whose tensor changed sends a filler in the bucket's wire dtype: a filler of
    another dtype would make the reduction itself fail (Horovod refuses mismatched dtypes)."""
    infos = [TensorInfo("w0", (40,), dtype, 8), TensorInfo("w1", (8,), dtype, 8)]
    world = world_of(2)

    def body(rank):
        r = reducer(world, rank, infos=infos)
        for s in range(2):
            tensors = grads(rank, s, infos)
            changed_at_step_1(rank, s, tensors, {1}, 0, torch.zeros(41, dtype=getattr(torch, dtype)))
            step(r, tensors)

    got = messages(world, body)
    assert all(f"parameter 'w0' has shape (40,), dtype {dtype} on rank 0 but shape (41,), dtype {dtype} on rank 1"
               in m for m in got), got


def test_the_same_change_on_every_rank_says_when_to_build_the_optimizer():
    world = world_of(2)

    def body(rank):
        r = reducer(world, rank)
        step(r, [t.half() for t in grads(rank, 0)])

    got = messages(world, body)
    # buckets launch last layers first, so t5 is the first change seen
    assert all("parameter 't5' has shape (10,), dtype float16 on every rank, but the optimizer was built for "
               "shape (10,), dtype float32 (5 more parameters changed too)" in m for m in got), got


def test_a_lone_rank_raises_at_once_without_exchanging():
    world = world_of(1)
    r = reducer(world, 0, "topk:0.1")
    tensors = grads(0, 0)
    tensors[1] = torch.zeros(65)
    with pytest.raises(ValueError, match=r"parameter 't1' has shape \(65,\), dtype float32 on every rank"):
        step(r, tensors)
    assert r.transport.started == 1  # the first-step check only; no bucket went out
    assert not r.flights


def test_after_the_error_the_reducer_holds_no_exchange_in_flight():
    world = world_of(2)
    reducers = {}

    def body(rank):
        reducers[rank] = r = reducer(world, rank, "topk:0.1")
        tensors = grads(rank, 0)
        changed_at_step_1(rank, 1, tensors, {1}, 0, torch.zeros(3))
        step(r, tensors)
        tensors = grads(rank, 1)
        changed_at_step_1(rank, 1, tensors, {1}, 0, torch.zeros(3))
        step(r, tensors)

    assert all(m is not None for m in messages(world, body))
    assert all(not r.flights and not r.changed for r in reducers.values())


def test_unchanged_steps_with_nan_gradients_still_follow_the_nonfinite_policy():
    world = world_of(2)

    def body(rank):
        r = reducer(world, rank, "topk:0.1")
        tensors = grads(rank, 0)
        if rank == 1:
            tensors[0][0, 0] = float("nan")
        _, finite = step(r, tensors)
        return finite

    with pytest.warns(RuntimeWarning, match="not finite"):
        assert world.run(body) == [False, False]
