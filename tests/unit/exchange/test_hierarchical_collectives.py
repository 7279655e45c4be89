"""The hierarchical collectives on layouts a one-host launch cannot produce (round-robin and scrambled
node membership), run on the in-process simulator with process sets ordered as Horovod orders them
(by rank). Oracles: ``torch.cat`` of every rank's rows in global rank order, and a numpy sum."""
import numpy as np
import pytest
import torch

from hvdkit.exchange import collectives
from hvdkit.exchange.engine import Flight
from hvdkit.exchange.simulate import SimulatedWorld

LAYOUTS = [
    ((0, 1), (2, 3)),
    ((0, 2), (1, 3)),
    ((0, 3), (1, 2)),
    ((0, 4, 5), (1, 2, 3)),
    ((0, 5), (1, 4), (2, 3)),
]


def run(world, exchange_of):
    """Every simulated rank runs ``exchange_of(rank)`` to the end; the results in rank order."""
    return world.run(lambda rank: Flight(world.transport(rank), exchange_of(rank)).wait())


@pytest.mark.parametrize("nodes", LAYOUTS)
@pytest.mark.parametrize("rows_of", [lambda r: 2, lambda r: r % 3, lambda r: 0 if r else 5])
def test_hierarchical_allgather_restores_global_rank_order(nodes, rows_of):
    size = sum(len(n) for n in nodes)
    world = SimulatedWorld(size, nodes=nodes)
    inputs = [torch.arange(rows_of(r) * 2, dtype=torch.int64).reshape(-1, 2) + 1000 * r for r in range(size)]
    expected = torch.cat(inputs)
    results = run(world, lambda r: collectives.gather_exchange(inputs[r], world.links(r, True), world.topology(r),
                                                                "gather"))
    assert world.links(0, True).intra is not None  # the hierarchical path ran
    for result in results:
        assert torch.equal(result, expected)


@pytest.mark.parametrize("nodes", LAYOUTS)
@pytest.mark.parametrize("numel", [1, 7, 1000])
def test_hierarchical_allreduce_equals_the_sum_times_scale(nodes, numel):
    size = sum(len(n) for n in nodes)
    world = SimulatedWorld(size, nodes=nodes)
    rng = np.random.default_rng(numel)
    inputs = [rng.standard_normal((numel,)).astype(np.float32) for _ in range(size)]
    expected = np.sum(np.stack(inputs).astype(np.float64), axis=0) / size
    results = run(world, lambda r: collectives.reduce_exchange(torch.from_numpy(inputs[r].copy()),
                                                               world.links(r, True), "sum", scale=1 / size))
    for result in results:
        assert result.shape == (numel,)
        np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert np.abs(expected).max() > 0  # an all-zero result cannot pass


def test_inplace_reduction_writes_into_the_input():
    world = SimulatedWorld(4, ranks_per_node=2)
    inputs = [torch.full((3, 2), float(r + 1)) for r in range(4)]
    results = run(world, lambda r: collectives.reduce_exchange(inputs[r], world.links(r, True), "inplace",
                                                               inplace=True))
    for r in range(4):
        assert results[r] is inputs[r]
        assert torch.equal(inputs[r], torch.full((3, 2), 10.0))


def test_scrambled_layout_must_hold_every_rank_once():
    with pytest.raises(ValueError, match=r"must hold each of the ranks 0..3 once"):
        SimulatedWorld(4, nodes=((0, 1), (1, 2)))
