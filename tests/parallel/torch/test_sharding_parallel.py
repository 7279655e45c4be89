"""Sharding across real ranks: each rank computes only its own shard, and the
gathered shards are checked against a single-process computation.

Maths that needs no other rank (epochs reordering, resuming mid-epoch, a start past the shard) is
checked at several world sizes in one process: tests/unit/data/test_sharding_world.py."""
import numpy as np
import pytest
import torch

from hvdkit.data import sharding
from hvdkit.data.torch_sampler import ShardedSampler

pytestmark = pytest.mark.timeout(60)


def gather(hvd, indices):
    """Every rank's 1-D int64 array, in rank order (lengths may differ)."""
    lengths = hvd.allgather(torch.tensor([len(indices)], dtype=torch.int64), name="test.shards.lengths").tolist()
    flat = hvd.allgather(torch.from_numpy(np.asarray(indices, dtype=np.int64)), name="test.shards.indices").numpy()
    return np.split(flat, np.cumsum(lengths)[:-1])


@pytest.mark.parametrize("n", [0, 1, 3, 10, 37])
@pytest.mark.parametrize("remainder", sharding.REMAINDER_MODES)
def test_shards_agree_without_communication_and_cover_the_data(hvd, topo, n, remainder):
    for epoch in range(3):
        mine = sharding.shard_indices(n, topo.rank, topo.size, epoch=epoch, seed=17, remainder=remainder)
        shards = gather(hvd, mine)
        local = [sharding.shard_indices(n, r, topo.size, epoch=epoch, seed=17, remainder=remainder)
                 for r in range(topo.size)]
        assert all(np.array_equal(a, b) for a, b in zip(shards, local))
        union = np.concatenate(shards)
        if remainder == "uneven":
            assert np.array_equal(np.sort(union), np.arange(n))
        elif remainder == "pad":
            assert set(union.tolist()) == set(range(n)) and len({len(s) for s in shards}) == 1
        else:
            assert len(np.unique(union)) == len(union) == (n // topo.size) * topo.size


def test_node_files_stay_on_the_node_and_are_read_once(hvd, topo):
    n_files = 3 * topo.num_nodes + 1
    mine = sharding.shard_files(n_files, topo, epoch=1, seed=2)
    owned = sharding.node_file_range(n_files, topo.node, topo.num_nodes)
    assert all(f in owned for f in mine)
    union = np.concatenate(gather(hvd, mine))
    assert np.array_equal(np.sort(union), np.arange(n_files))


def test_sampler_defaults_to_the_topology(hvd, topo):
    sampler = ShardedSampler(range(30), seed=5)
    assert (sampler.num_replicas, sampler.rank) == (topo.size, topo.rank)
    sampler.set_epoch(3)
    shards = gather(hvd, list(sampler))
    assert set(np.concatenate(shards).tolist()) == set(range(30))
    assert len({len(s) for s in shards}) == 1 and len(shards[topo.rank]) == len(sampler)
