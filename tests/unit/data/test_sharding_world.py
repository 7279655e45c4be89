"""Sharding maths over a whole world, every rank's shard computed side by side in one process.

Moved from tests/parallel/torch/test_sharding_parallel.py, where each launch checked them at its own
world size only: the shards need no communication (each rank computes its own from ``(n, rank, size,
epoch, seed)``; that real ranks compute the same shards is checked there), so the same maths is checked
here at several world sizes at once.
"""
import numpy as np
import pytest

from hvdkit.data import sharding

SIZES = [1, 2, 3, 4]


def every_shard(n, size, **kwargs):
    return [sharding.shard_indices(n, rank, size, **kwargs) for rank in range(size)]


@pytest.mark.parametrize("size", [1, 2, 4, 8])  # sizes dividing 64: padding repeats no sample
def test_epochs_reorder_the_data(size):
    first = np.concatenate(every_shard(64, size, epoch=0))
    second = np.concatenate(every_shard(64, size, epoch=1))
    assert sorted(first) == sorted(second) and not np.array_equal(first, second)


@pytest.mark.parametrize("size", SIZES)
def test_resume_from_start_finishes_the_same_epoch(size):
    n, consumed = 45, 4
    resumed = []
    for rank in range(size):
        before = sharding.shard_indices(n, rank, size, epoch=2, seed=1, remainder="uneven")[:consumed]
        after = sharding.shard_indices(n, rank, size, epoch=2, seed=1, remainder="uneven", start=consumed)
        resumed.append(np.concatenate([before, after]))
    assert np.array_equal(np.sort(np.concatenate(resumed)), np.arange(n))


@pytest.mark.parametrize("size", SIZES)
def test_start_past_the_shard_fails_on_every_rank(size):
    capacity = sharding.shard_capacity(5, size, "pad")
    for rank in range(size):
        with pytest.raises(ValueError, match=f"start={capacity + 1} is past the end"):
            sharding.shard_indices(5, rank, size, start=capacity + 1)
