"""hvdkit's exchange on simulated ranks against the numpy oracle (tests/support/oracle.py), which restates
each compressor's and each route's mathematics without calling hvdkit: the averaged gradient of every
step and every error-feedback residual after it must match."""
import numpy as np
import pytest
import torch

import oracle
from hvdkit.compression.torch_ops import TorchOps
from hvdkit.exchange.buckets import TensorInfo
from hvdkit.exchange.reducer import Reducer
from hvdkit.exchange.simulate import SimulatedWorld

NUMEL = 2_999  # odd: partial blocks, unequal shares and chunks
STEPS = 4


def gradients(rank, step, zero_first=False):
    if zero_first and step == 0:
        return np.zeros(NUMEL, np.float32)
    return np.random.default_rng([rank, step, 7]).standard_normal(NUMEL).astype(np.float32) * np.float32(0.1)


def run_hvdkit(spec, size, per_node, hierarchical, zero_first):
    world = SimulatedWorld(size, per_node)
    info = [TensorInfo("w", (NUMEL,), "float32", 4)]

    def body(rank):
        reducer = Reducer(info, spec, TorchOps(), world.transport(rank), world.links(rank, hierarchical),
                          fusion_bytes=1 << 30, average=True, name="oracle")
        steps = []
        for step in range(STEPS):
            reducer.launch(0, [torch.from_numpy(gradients(rank, step, zero_first))])
            results, finite = reducer.finish()
            assert finite
            steps.append(results[0].numpy().copy())
        return steps, reducer

    return world.run(body)


def route_of(reducer):
    (name, _), = reducer.last_stats.routes
    return name


def worker_residual(reducer):
    state, = reducer.states.values()
    return None if state.residual is None else state.residual.numpy()


CASES = [
    # spec, ranks, ranks per node, hierarchical, oracle route
    ("none", 4, None, False, "ring"),
    ("fp16", 2, None, False, "flat"),
    ("bf16", 4, None, False, "flat"),
    ("bf16,two_phase=1", 4, None, False, "two_phase"),
    ("int8:64", 4, None, False, "flat"),
    ("int8:64,ef=1,two_phase=1", 4, None, False, "two_phase"),
    ("onebit,block=64", 4, None, False, "flat"),
    ("onebit,block=64,two_phase=1", 4, None, False, "two_phase"),
    ("onebit,block=64,two_phase=1", 3, None, False, "two_phase"),
    ("topk:0.05", 4, None, False, "flat"),
    ("topk:0.05,two_phase=1", 4, None, False, "two_phase"),
    ("int8:64,ef=1", 4, 2, True, "sharded"),
    ("onebit,block=64", 4, 2, True, "sharded"),
    ("topk:0.05,two_phase=1", 6, 2, True, "sharded/two_phase"),
    ("onebit,block=64,two_phase=1", 6, 2, True, "sharded/two_phase"),
    ("bf16", 4, 2, True, "sharded"),
    ("randomk:0.1", 4, None, False, "flat"),
    ("randomk:0.1,ef=0", 4, 2, True, "sharded"),
    ("fp16", 4, 2, True, "sharded"),
]


@pytest.mark.parametrize("zero_first", [False, True], ids=["random", "zero-first-step"])
@pytest.mark.parametrize("spec,size,per_node,hierarchical,route", CASES)
def test_exchange_matches_the_oracle(spec, size, per_node, hierarchical, route, zero_first):
    runs = run_hvdkit(spec, size, per_node, hierarchical, zero_first)
    model = oracle.exchange(spec, route, size, NUMEL, per_node)
    scale = np.float32(1.0 / size)
    for step in range(STEPS):
        expected = model.step([gradients(r, step, zero_first) * scale for r in range(size)])
        for rank, (steps, reducer) in enumerate(runs):
            np.testing.assert_allclose(steps[step], expected, rtol=2e-6, atol=1e-8,
                                       err_msg=f"{spec} step {step} rank {rank}")
        if not (zero_first and step == 0):
            assert np.abs(expected).max() > 0  # an all-zero result cannot pass
    hvdkit_route = route_of(runs[0][1])
    assert hvdkit_route.split("/")[0] == route.split("/")[0] or (route == "ring" and hvdkit_route == "flat/allreduce")
    check_residuals(model, runs, route, per_node)


def check_residuals(model, runs, route, per_node):
    for rank, (_, reducer) in enumerate(runs):
        mine = worker_residual(reducer)
        if route in ("flat", "ring"):
            expected = model.workers[rank].residual
        elif route == "two_phase":
            expected = model.worker_residual(rank) if model.workers[rank][0].residual is not None else None
        else:
            node, local = divmod(rank, per_node)
            hop = model.hops[local]
            expected = hop.workers[node].residual if isinstance(hop, oracle.Flat) else (
                hop.worker_residual(node) if hop.workers[node][0].residual is not None else None)
        if expected is None:
            assert mine is None
        else:
            np.testing.assert_allclose(mine, expected, rtol=2e-6, atol=1e-7, err_msg=f"rank {rank} residual")


def test_a_zero_first_step_does_not_stop_later_steps():
    """Parameters must move once gradients become non-zero, through every compressor."""
    for spec, size, per_node, hierarchical, _ in CASES:
        runs = run_hvdkit(spec, size, per_node, hierarchical, zero_first=True)
        steps, _ = runs[0]
        assert not steps[0].any(), spec
        assert all(np.abs(s).max() > 0 for s in steps[1:]), spec
