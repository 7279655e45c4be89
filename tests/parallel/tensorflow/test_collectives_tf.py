"""hvdkit.exchange.collectives driven through horovod.tensorflow: the same functions the
torch tests check, on TF eager tensors (Horovod's TF ops have no async form)."""
import numpy as np
import pytest
import tensorflow as tf

from conftest import rank_tensor_values
from hvdkit.exchange import collectives

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("shape", [(1,), (5,), (7, 3)])
def test_integer_sum_is_bit_exact(hvd, topo, shape):
    inputs = [rank_tensor_values(r, shape, np.int64, seed=21) for r in range(topo.size)]
    mine = tf.constant(inputs[topo.rank])
    flat = collectives.allreduce(mine, hvd, op="sum", name=f"tf.flat.{shape}")
    hier = collectives.hierarchical_allreduce(mine, hvd, topo, op="sum", name=f"tf.hier.{shape}")
    expected = np.sum(inputs, axis=0)
    assert np.array_equal(flat.numpy(), expected) and np.array_equal(hier.numpy(), expected)


def test_float_average_and_handle(hvd, topo):
    inputs = [rank_tensor_values(r, (11, 2), np.float32, seed=22) for r in range(topo.size)]
    handle = collectives.hierarchical_allreduce_async(tf.constant(inputs[topo.rank]), hvd, topo, name="tf.avg")
    assert handle.poll()
    np.testing.assert_allclose(handle.wait().numpy(), np.mean(inputs, axis=0), rtol=1e-5, atol=1e-6)


def test_hierarchical_allgather_with_uneven_rows(hvd, topo):
    inputs = [rank_tensor_values(r, (r % 3, 2), np.float32, seed=23) for r in range(topo.size)]
    hier = collectives.hierarchical_allgather(tf.constant(inputs[topo.rank]), hvd, topo, name="tf.gather")
    assert np.array_equal(hier.numpy(), np.concatenate(inputs))
