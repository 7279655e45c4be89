"""Model averaging of TensorFlow and Keras variables (and torch tensors, through the same code):
every simulated rank ends with the numpy mean of the ranks in the scope, over the world (through
the nodes) or inside its node. The ranks run on hvdkit's in-process simulator."""
import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

from hvdkit import averaging
from hvdkit.exchange.engine import Flight
from hvdkit.exchange.simulate import SimulatedWorld
from hvdkit.exchange.strategies import Links

SHAPES = [(3, 4), (4,), (2, 2, 5), ()]
SIZE, RANKS_PER_NODE = 4, 2


def rank_values(rank):
    rng = np.random.default_rng([7, rank])
    return [rng.standard_normal(shape).astype(np.float32) for shape in SHAPES]


MAKERS = {
    "tf.Variable": tf.Variable,
    "keras.Variable": keras.Variable,
    "torch": lambda value: torch.from_numpy(np.array(value, copy=True)),
}


def average_on(world, parameters, links_of):
    world.run(lambda rank: Flight(world.transport(rank),
                                  averaging.average_exchange(parameters[rank], links_of(rank), "average")).wait())


def values_of(parameter):
    return parameter.numpy() if hasattr(parameter, "numpy") else np.asarray(parameter)


@pytest.mark.parametrize("kind", list(MAKERS))
def test_world_average_is_the_numpy_mean_over_every_rank(kind):
    world = SimulatedWorld(SIZE, ranks_per_node=RANKS_PER_NODE)
    assert world.links(0, True).intra is not None  # two nodes of two: the hierarchical path runs
    values = [rank_values(rank) for rank in range(SIZE)]
    parameters = [[MAKERS[kind](v) for v in values[rank]] for rank in range(SIZE)]
    average_on(world, parameters, lambda rank: world.links(rank, True))
    for i, shape in enumerate(SHAPES):
        expected = np.mean([values[rank][i].astype(np.float64) for rank in range(SIZE)], axis=0)
        assert np.abs(expected).max() > 0  # an all-zero result cannot pass
        for rank in range(SIZE):
            got = values_of(parameters[rank][i])
            assert got.shape == shape and got.dtype == np.float32
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["tf.Variable", "keras.Variable"])
def test_node_average_is_the_numpy_mean_over_the_node(kind):
    world = SimulatedWorld(SIZE, ranks_per_node=RANKS_PER_NODE)
    values = [rank_values(rank) for rank in range(SIZE)]
    parameters = [[MAKERS[kind](v) for v in values[rank]] for rank in range(SIZE)]
    average_on(world, parameters, lambda rank: Links(world.links(rank, True).intra))
    for rank in range(SIZE):
        node = world.topology(rank).nodes[world.topology(rank).node]
        for i in range(len(SHAPES)):
            expected = np.mean([values[member][i].astype(np.float64) for member in node], axis=0)
            np.testing.assert_allclose(values_of(parameters[rank][i]), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(values_of(parameters[0][0]), values_of(parameters[2][0]))  # nodes differ


def test_a_bad_scope_is_named():
    with pytest.raises(ValueError, match=r"scope must be one of \('node', 'world'\), got 'rack'"):
        averaging.average_parameters([tf.Variable(1.0)], "rack")
