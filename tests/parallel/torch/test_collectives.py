"""hvdkit.exchange.collectives under a real launcher: hierarchical == flat == a local
computation over every rank's (reproducible) inputs."""
import numpy as np
import pytest
import torch

from conftest import rank_tensor_values
from hvdkit.exchange import collectives

pytestmark = pytest.mark.timeout(120)

# Lengths around the local size (shares of 0 and 1 elements), odd, and larger.
SHAPES = [(0,), (1,), (3,), (5,), (7, 3), (1001,), (2, 3, 4)]


def every_rank(topo, shape, dtype, seed):
    return [rank_tensor_values(r, shape, dtype, seed) for r in range(topo.size)]


@pytest.mark.parametrize("shape", SHAPES)
def test_integer_sum_is_bit_exact(hvd, topo, shape):
    inputs = every_rank(topo, shape, np.int64, seed=1)
    mine = torch.from_numpy(inputs[topo.rank])
    flat = collectives.allreduce(mine, hvd, op="sum", name=f"flat.i64.{shape}")
    hier = collectives.hierarchical_allreduce(mine, hvd, topo, op="sum", name=f"hier.i64.{shape}")
    expected = np.sum(inputs, axis=0).astype(np.int64)
    assert hier.shape == mine.shape and hier.dtype == torch.int64
    assert np.array_equal(flat.numpy(), expected)
    assert np.array_equal(hier.numpy(), expected)
    assert np.array_equal(mine.numpy(), inputs[topo.rank]), "input must not be modified"


@pytest.mark.parametrize("shape", [(5,), (7, 3)])
def test_integer_average_truncates_like_horovod(hvd, topo, shape):
    mine = torch.from_numpy(every_rank(topo, shape, np.int32, seed=2)[topo.rank])
    flat = collectives.allreduce(mine, hvd, op="average", name=f"flat.i32avg.{shape}")
    hier = collectives.hierarchical_allreduce(mine, hvd, topo, op="average", name=f"hier.i32avg.{shape}")
    assert torch.equal(hier, flat)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_float_average_matches_flat_within_tolerance(hvd, topo, shape, dtype):
    inputs = every_rank(topo, shape, dtype, seed=3)
    mine = torch.from_numpy(inputs[topo.rank])
    name = f"{np.dtype(dtype).name}.{shape}"
    flat = collectives.allreduce(mine, hvd, name=f"flat.{name}")
    hier = collectives.hierarchical_allreduce(mine, hvd, topo, name=f"hier.{name}")
    expected = np.mean(np.asarray(inputs, dtype=np.float64), axis=0)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert hier.dtype == mine.dtype and hier.shape == mine.shape
    np.testing.assert_allclose(hier.numpy(), flat.numpy(), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(hier.numpy(), expected, rtol=rtol, atol=rtol)


def test_async_handles_overlap_and_complete(hvd, topo):
    inputs = [every_rank(topo, (257,), np.float32, seed=10 + i) for i in range(4)]
    handles = [collectives.hierarchical_allreduce_async(torch.from_numpy(x[topo.rank]), hvd, topo, op="sum",
                                                        name=f"async.{i}") for i, x in enumerate(inputs)]
    flat = collectives.allreduce_async(torch.from_numpy(inputs[0][topo.rank]), hvd, op="sum", name="async.flat")
    while not all([h.poll() for h in handles]):
        pass
    for h, x in zip(handles, inputs):
        np.testing.assert_allclose(h.wait().numpy(), np.sum(x, axis=0), rtol=1e-5, atol=1e-5)
    assert flat.wait().shape == (257,)


def test_unknown_op_is_rejected_naming_it(hvd, topo):
    with pytest.raises(ValueError, match=r"op must be one of 'average', 'sum', got 'max'"):
        collectives.hierarchical_allreduce(torch.zeros(3), hvd, topo, op="max")


@pytest.mark.parametrize("row_shape", [(), (3,)])
def test_hierarchical_allgather_matches_flat_with_uneven_rows(hvd, topo, row_shape):
    rows = [r % 3 for r in range(topo.size)]  # 0, 1, 2, 0, ... rows per rank
    inputs = [rank_tensor_values(r, (rows[r],) + row_shape, np.float32, seed=4) for r in range(topo.size)]
    mine = torch.from_numpy(inputs[topo.rank])
    flat = collectives.allgather(mine, hvd, name=f"flat.gather.{row_shape}")
    hier = collectives.hierarchical_allgather(mine, hvd, topo, name=f"hier.gather.{row_shape}")
    expected = np.concatenate(inputs)
    assert np.array_equal(flat.numpy(), expected)
    assert np.array_equal(hier.numpy(), expected)


def test_hierarchical_allgather_async_of_integers(hvd, topo):
    mine = torch.arange(4, dtype=torch.int64) + 100 * topo.rank
    handle = collectives.hierarchical_allgather_async(mine, hvd, topo, name="gather.async")
    expected = np.concatenate([np.arange(4) + 100 * r for r in range(topo.size)])
    assert np.array_equal(handle.wait().numpy(), expected)


@pytest.mark.parametrize("hierarchical", [False, True])
def test_inplace_writes_the_result_into_the_tensor(hvd, topo, hierarchical):
    inputs = every_rank(topo, (6, 5), np.int64, seed=5)
    mine = torch.from_numpy(inputs[topo.rank].copy())
    if hierarchical:
        out = collectives.hierarchical_allreduce(mine, hvd, topo, op="sum", name="inplace.hier", inplace=True)
    else:
        out = collectives.allreduce(mine, hvd, op="sum", name="inplace.flat", inplace=True)
    assert out is mine
    assert np.array_equal(mine.numpy(), np.sum(inputs, axis=0))
