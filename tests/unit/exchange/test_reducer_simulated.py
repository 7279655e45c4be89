"""The Reducer (buckets, strategies, state, policies) on simulated ranks: one process, real threads.

Collectives are computed in memory by hvdkit.exchange.simulate; the multi-rank
tests in tests/parallel check that real Horovod ranks produce the same.
"""
import math
import warnings

import pytest
import torch

from hvdkit.exchange.buckets import TensorInfo
from hvdkit.exchange.reducer import Reducer
from hvdkit.compression.torch_ops import TorchOps
from hvdkit.exchange.simulate import SimulatedWorld

SHAPES = [(64, 32), (64,), (32, 16), (32,), (10, 32), (10,)]
INFOS = [TensorInfo(f"t{i}", shape, "float32", 4) for i, shape in enumerate(SHAPES)]


def grads(rank, step, shapes=SHAPES):
    g = torch.Generator().manual_seed(1000 * step + rank)
    return [torch.randn(shape, generator=g) for shape in shapes]


def make(world, rank, spec, hierarchical=False, fusion_bytes=4096, nonfinite="skip", infos=INFOS):
    return Reducer(infos, spec, TorchOps(), world.transport(rank), world.links(rank, hierarchical),
                   fusion_bytes=fusion_bytes, average=True, nonfinite=nonfinite, name="t")


def run_steps(world, spec, steps=3, hierarchical=False, inject=None, **kwargs):
    """Per rank: a list per step of (averaged tensors, finite flag, StepStats)."""

    def body(rank):
        reducer = make(world, rank, spec, hierarchical, **kwargs)
        out = []
        for step in range(steps):
            mine = grads(rank, step)
            if inject is not None:
                inject(rank, step, mine)
            for b in reducer.buckets:
                reducer.launch(b.index, [mine[s.index] for s in b.slots])
            results, finite = reducer.finish()
            averaged = [None] * len(mine)
            for index, flat in results.items():
                for slot in reducer.buckets[index].slots:
                    averaged[slot.index] = flat[slot.offset:slot.offset + slot.numel].view(slot.shape)
            out.append((averaged, finite, reducer.last_stats, reducer))
        return out

    return world.run(body)


def mean_grads(size, step):
    per_rank = [grads(r, step) for r in range(size)]
    return [sum(t[i] for t in per_rank) / size for i in range(len(SHAPES))]


@pytest.mark.parametrize("size,per_node,hierarchical", [(1, None, False), (4, None, False), (4, 2, True), (6, 3, True)])
def test_dense_exchange_averages_like_a_plain_mean(size, per_node, hierarchical):
    runs = run_steps(SimulatedWorld(size, per_node), "none", hierarchical=hierarchical)
    for step in range(3):
        expected = mean_grads(size, step)
        for rank_run in runs:
            averaged, finite, _, _ = rank_run[step]
            assert finite
            for got, want in zip(averaged, expected):
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


SPECS = ["fp16", "bf16", "int8:64", "topk:0.1", "topk:0.1,approx=1", "randomk:0.2", "onebit,block=64", "powersgd:2"]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("hierarchical", [False, True])
def test_every_rank_gets_the_same_result_and_it_approximates_the_mean(spec, hierarchical):
    size = 4
    runs = run_steps(SimulatedWorld(size, 2), spec, steps=4, hierarchical=hierarchical)
    for step in range(4):
        first = runs[0][step][0]
        for rank_run in runs[1:]:
            for a, b in zip(first, rank_run[step][0]):
                assert torch.equal(a, b)
    # Error feedback: summed over steps, what was applied tracks what was computed.
    applied = [sum(runs[0][s][0][i] for s in range(4)) for i in range(len(SHAPES))]
    exact = [sum(mean_grads(size, s)[i] for s in range(4)) for i in range(len(SHAPES))]
    rel = torch.cat([(a - e).flatten() for a, e in zip(applied, exact)]).norm() / torch.cat(
        [e.flatten() for e in exact]).norm()
    # Bounds from this data (4 ranks, 4 steps): what error feedback has not yet sent stays below these
    # fractions of the exact sum; an all-zero result (rel = 1) fails every one of them.
    bound = {"fp16": 0.002, "bf16": 0.005, "int8:64": 0.02, "onebit,block=64": 0.5, "topk:0.1": 0.7,
             "topk:0.1,approx=1": 0.7, "randomk:0.2": 0.85, "powersgd:2": 0.9}[spec]
    assert rel < bound, rel


def test_hierarchical_sharded_state_covers_this_ranks_share_only():
    runs = run_steps(SimulatedWorld(4, 2), "topk:0.1", steps=1, hierarchical=True)
    reducer = runs[1][0][3]
    for (index, route), state in reducer.states.items():
        assert route == "sharded"
        numel = reducer.buckets[index].numel
        assert state.numel == numel // 2 and state.peers == 2  # local rank 1: Horovod gives any extra to rank 0


def test_powersgd_runs_the_same_exchange_on_every_local_rank_in_hierarchical_mode():
    runs = run_steps(SimulatedWorld(4, 2), "powersgd:1", steps=2, hierarchical=True)
    states = [{key: s for key, s in run[0][3].states.items() if key[1] == "replicated"} for run in runs]
    assert states[0] and all(set(s) == set(states[0]) for s in states)
    for key, state in states[0].items():
        for other in states[1:]:
            assert torch.equal(other[key].memory, state.memory)  # Q identical on every rank


@pytest.mark.parametrize("spec", ["none"] + SPECS)
@pytest.mark.parametrize("hierarchical", [False, True])
def test_every_rank_starts_the_same_number_of_collectives(spec, hierarchical):
    """Horovod names unnamed ops by a per-process counter: unequal counts would hang user code."""
    world = SimulatedWorld(4, 2)
    transports = []

    def body(rank):
        transport = world.transport(rank)
        transports.append(transport)
        reducer = Reducer(INFOS, spec, TorchOps(), transport, world.links(rank, hierarchical), fusion_bytes=4096,
                          average=True, name="t")
        mine = grads(rank, 0)
        for b in reducer.buckets:
            reducer.launch(b.index, [mine[s.index] for s in b.slots])
        reducer.finish()

    world.run(body)
    assert len({t.started for t in transports}) == 1 and transports[0].started > 0


def test_warmup_exchanges_dense_then_compresses():
    runs = run_steps(SimulatedWorld(2), "topk:0.05,warmup=2", steps=3)
    stats = [runs[0][s][2] for s in range(3)]
    assert [s.compressed_bytes for s in stats[:2]] == [0, 0]
    assert stats[2].compressed_bytes > 0
    expected = mean_grads(2, 1)
    for got, want in zip(runs[0][1][0], expected):
        torch.testing.assert_close(got, want)


def test_min_numel_keeps_small_tensors_dense():
    runs = run_steps(SimulatedWorld(2), "topk:0.05,min_numel=100", steps=1)
    reducer = runs[0][0][3]
    dense = {s.name for b in reducer.buckets if not b.compressed for s in b.slots}
    assert dense == {"t1", "t3", "t5"}  # the 64-, 32- and 10-element biases


def test_stats_count_exactly_what_was_handed_to_the_collectives():
    size = 4
    runs = run_steps(SimulatedWorld(size), "topk:0.05,min_numel=100", steps=1)
    stats, reducer = runs[0][0][2], runs[0][0][3]
    payload = sum(8 * math.ceil(0.05 * b.numel) if b.compressed else b.nbytes for b in reducer.buckets)
    compressed_dense = sum(b.nbytes for b in reducer.buckets if b.compressed)
    assert stats.buckets == len(reducer.buckets)
    assert stats.dense_bytes == sum(4 * math.prod(s) for s in SHAPES)
    assert stats.bytes_sent == payload
    assert stats.compressed_dense_bytes == compressed_dense
    assert stats.compression_ratio == pytest.approx(compressed_dense / sum(
        8 * math.ceil(0.05 * b.numel) for b in reducer.buckets if b.compressed))
    gathered = sum(8 * math.ceil(0.05 * b.numel) for b in reducer.buckets if b.compressed)
    assert stats.wire_bytes == (size - 1) * gathered + round(2 * (size - 1) / size * (payload - gathered))
    assert stats.kernel_ms > 0 and not stats.skipped


def nan_on_rank(bad_rank, bad_step, index=2):
    def inject(rank, step, tensors):
        if rank == bad_rank and step == bad_step:
            tensors[index][0, 0] = float("nan")
    return inject


@pytest.mark.parametrize("spec", ["none", "fp16,ef=1", "int8:64,ef=1", "topk:0.1", "randomk:0.2", "onebit",
                                  "powersgd:2"])
@pytest.mark.parametrize("hierarchical", [False, True])
def test_one_ranks_nan_makes_every_rank_skip_and_leaves_residuals_clean(spec, hierarchical):
    world = SimulatedWorld(4, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = run_steps(world, spec, steps=3, hierarchical=hierarchical, inject=nan_on_rank(3, 1))
    assert any("not finite" in str(w.message) and "t2" in str(w.message) for w in caught)
    for rank_run in runs:
        assert [finite for _, finite, _, _ in rank_run] == [True, False, True]
        assert rank_run[1][2].skipped
        for state in rank_run[2][3].states.values():
            for tensor in (state.residual, state.memory):
                assert tensor is None or bool(torch.isfinite(tensor).all())
    for rank_run in runs[1:]:  # after the bad step, ranks still agree
        for a, b in zip(runs[0][2][0], rank_run[2][0]):
            assert torch.equal(a, b)


def test_raise_policy_raises_on_every_rank():
    world = SimulatedWorld(2)

    def body(rank):
        reducer = make(world, rank, "topk:0.1", nonfinite="raise")
        mine = grads(rank, 0)
        if rank == 0:
            mine[0][1, 1] = float("inf")
        for b in reducer.buckets:
            reducer.launch(b.index, [mine[s.index] for s in b.slots])
        with pytest.raises(FloatingPointError, match="not finite.*t0"):
            reducer.finish()
        return True

    assert world.run(body) == [True, True]


def test_ranks_with_different_tensors_fail_together_naming_the_tensor():
    world = SimulatedWorld(3)

    def body(rank):
        infos = list(INFOS)
        if rank == 2:
            infos[2] = TensorInfo("t2", (32, 17), "float32", 4)
        reducer = make(world, rank, "none", infos=infos)
        with pytest.raises(ValueError) as info:
            reducer.check_ranks()
        return str(info.value)

    messages = world.run(body)
    assert len(set(messages)) == 1
    assert ("parameter 't2' has shape (32, 16), dtype float32 on ranks 0, 1 but shape (32, 17), dtype float32 "
            "on rank 2") in messages[0]


def test_ranks_with_different_compression_fail_together():
    world = SimulatedWorld(2)

    def body(rank):
        reducer = make(world, rank, "topk:0.1" if rank else "topk:0.2")
        with pytest.raises(ValueError, match="settings differ"):
            reducer.check_ranks()
        return True

    assert world.run(body) == [True, True]


def test_state_dict_round_trip_continues_identically():
    world = SimulatedWorld(2)

    def body(rank):
        a = make(world, rank, "powersgd:2")
        b = make(world, rank, "powersgd:2")
        for step in range(2):
            mine = grads(rank, step)
            for bucket in a.buckets:
                a.launch(bucket.index, [mine[s.index] for s in bucket.slots])
            a.finish()
        b.load_state_dict(a.state_dict())
        outputs = []
        for r in (a, b):
            mine = grads(rank, 5)
            for bucket in r.buckets:
                r.launch(bucket.index, [mine[s.index] for s in bucket.slots])
            outputs.append(r.finish()[0])
        return all(torch.equal(outputs[0][i], outputs[1][i]) for i in outputs[0])

    assert world.run(body) == [True, True]


def test_state_dict_from_another_compression_is_refused():
    world = SimulatedWorld(1)
    a, b = make(world, 0, "topk:0.1"), make(world, 0, "topk:0.2")
    with pytest.raises(ValueError, match="saved with compression 'topk:0.1"):
        b.load_state_dict(a.state_dict())


def test_bad_nonfinite_policy_is_rejected():
    with pytest.raises(ValueError, match="nonfinite must be one of 'skip', 'raise', 'pass', got 'ignore'"):
        make(SimulatedWorld(1), 0, "none", nonfinite="ignore")


@pytest.mark.parametrize("spec,hierarchical", [("topk:0.1", False), ("onebit,block=64,two_phase=1", False),
                                               ("int8:64,ef=1", True)])
def test_buffers_are_allocated_once(spec, hierarchical):
    """Packing, error feedback and decoding write into the same memory every step: the pack buffer and the
    decode buffers keep their address, and the residual alternates between two buffers (the committed
    one and the candidate)."""
    world = SimulatedWorld(4, 2 if hierarchical else None)
    addresses = {}

    def body(rank):
        reducer = make(world, rank, spec, hierarchical)
        seen = []
        for step in range(4):
            mine = grads(rank, step)
            for b in reducer.buckets:
                reducer.launch(b.index, [mine[s.index] for s in b.slots])
            reducer.finish()
            seen.append(({i: t.data_ptr() for i, t in reducer.buffers.items()},
                         {key: (state.residual.data_ptr(), {n: t.data_ptr() for n, t in state.buffers.items()})
                          for key, state in reducer.states.items() if state.residual is not None}))
        addresses[rank] = seen
        return None

    world.run(body)
    for seen in addresses.values():
        packs, states = zip(*seen)
        assert all(p == packs[0] for p in packs) and packs[0]
        assert states[0] and all(s[1] for s in states[0].values()), "no error-feedback or decode buffer to check"
        for key in states[0]:
            assert len({s[key][0] for s in states}) == 2, f"{key}: residual buffers are not reused"
            assert all(s[key][1] == states[0][key][1] for s in states), f"{key}: decode buffers moved"


def test_long_pauses_in_rank_0s_first_backward_become_bucket_boundaries_on_every_rank():
    """adopt_order's pauses: rank 0's long ones split buckets (hvdkit.exchange.buckets), on every rank alike;
    the boundaries survive a checkpoint (a fresh reducer loading it plans the same buckets), and a checkpoint
    without them (older) keeps the plain plan."""
    from hvdkit.exchange.buckets import BREAK_PAUSE_S

    shapes = [(1024, 1024), (1024,), (2048, 1024), (1024,)]  # 4 MiB, 4 KiB, 8 MiB, 4 KiB
    infos = [TensorInfo(f"t{i}", shape, "float32", 4) for i, shape in enumerate(shapes)]
    ready = [3, 2, 1, 0]  # backward order; t1 comes after a long pause (t0/t1's layer computes)
    world = SimulatedWorld(2)

    def fresh(rank):
        return Reducer(infos, "none", TorchOps(), world.transport(rank), world.links(rank), fusion_bytes=16 * 2**20,
                       average=True, name="t", plan_from_first_step=True)

    def body(rank):
        reducer = fresh(rank)
        plain = [b.indices for b in reducer.buckets]
        pauses = [0.0, 0.0, 10 * BREAK_PAUSE_S, 0.0] if rank == 0 else [0.0] * 4  # rank 0's timing decides
        reducer.adopt_order(ready, (), pauses)
        split = [b.indices for b in reducer.buckets]
        saved = reducer.state_dict()
        restored = fresh(rank)
        restored.load_state_dict(saved)
        older = fresh(rank)
        older.load_state_dict({k: v for k, v in saved.items() if k != "breaks"})
        mine = [torch.full(shape, float(rank + 1)) for shape in shapes]
        for b in restored.buckets:
            restored.launch(b.index, [mine[s.index] for s in b.slots])
        results, finite = restored.finish()
        return plain, split, [b.indices for b in restored.buckets], [b.indices for b in older.buckets], finite, \
            all(torch.all(flat == 1.5) for flat in results.values())

    for plain, split, restored, older, finite, averaged in world.run(body):
        assert plain == [(3, 2, 1, 0)]
        assert split == [(3, 2), (1, 0)] == restored
        assert older == [(3, 2, 1, 0)]
        assert finite and averaged


def test_a_pause_that_splits_no_bucket_leaves_the_plan_and_the_checkpoint_as_without_it():
    """A small model's long pause is the scheduler's (its buckets are below the split size): it must not make
    one run's plan, or checkpoint, differ from another's (a straight run against a resumed one)."""
    from hvdkit.exchange.buckets import BREAK_PAUSE_S

    infos = [TensorInfo(f"t{i}", shape, "float32", 4) for i, shape in enumerate([(64, 32), (64,), (10, 64), (10,)])]
    world = SimulatedWorld(2)

    def body(rank):
        reducer = Reducer(infos, "powersgd:2", TorchOps(), world.transport(rank), world.links(rank),
                          fusion_bytes=16 * 2**20, average=True, name="t", plan_from_first_step=True)
        changed = reducer.adopt_order([3, 2, 1, 0], (), [0.0, 0.0, 10 * BREAK_PAUSE_S, 0.0])
        saved = reducer.state_dict()
        return changed, saved["order"], saved["breaks"], [b.indices for b in reducer.buckets]

    for changed, order, breaks, buckets in world.run(body):
        assert (changed, order, breaks) == (False, None, [])
        assert sorted(index for bucket in buckets for index in bucket) == [0, 1, 2, 3]
