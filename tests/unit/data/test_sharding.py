"""Sharding maths in one process: every rank's shard computed side by side."""
import subprocess
import sys

import numpy as np
import pytest

from hvdkit.data import sharding
from hvdkit.data.sharding import shard_indices
import paths  # tests/support

REPO = paths.REPO
SIZES = [1, 2, 3, 4, 7]
LENGTHS = [0, 1, 2, 5, 16, 17, 100]


def all_shards(n, size, **kw):
    return [shard_indices(n, r, size, **kw) for r in range(size)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("n", LENGTHS)
def test_uneven_reads_every_sample_exactly_once(n, size):
    shards = all_shards(n, size, epoch=3, seed=11, remainder="uneven")
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [len(s) for s in shards] == [sharding.shard_size(n, r, size, "uneven") for r in range(size)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("n", LENGTHS)
def test_pad_gives_equal_counts_covering_every_sample(n, size):
    shards = all_shards(n, size, epoch=1, seed=5, remainder="pad")
    expected = -(-n // size)
    assert all(len(s) == expected for s in shards)
    union = np.concatenate(shards)
    assert set(union.tolist()) == set(range(n))
    # Padding repeats only as much as needed: no sample more than ceil(total / n) times.
    if n:
        assert np.bincount(union, minlength=n).max() <= -(-expected * size // n)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("n", LENGTHS)
def test_drop_gives_equal_counts_without_repeats(n, size):
    shards = all_shards(n, size, epoch=2, remainder="drop")
    assert all(len(s) == n // size for s in shards)
    union = np.concatenate(shards)
    assert len(np.unique(union)) == len(union) == (n // size) * size
    assert np.all((union >= 0) & (union < max(n, 1)))


def test_dataset_smaller_than_world():
    assert [len(s) for s in all_shards(3, 4, remainder="pad")] == [1, 1, 1, 1]
    assert [len(s) for s in all_shards(3, 4, remainder="drop")] == [0, 0, 0, 0]
    assert [len(s) for s in all_shards(3, 4, remainder="uneven")] == [1, 1, 1, 0]


@pytest.mark.parametrize("remainder", sharding.REMAINDER_MODES)
def test_empty_dataset_gives_empty_shards(remainder):
    for s in all_shards(0, 3, remainder=remainder):
        assert s.dtype == np.int64 and s.size == 0


def test_strided_assignment_matches_distributed_sampler_rule():
    perm = sharding.epoch_permutation(10, epoch=4, seed=9)
    padded = np.concatenate([perm, perm[:2]])
    for r in range(4):
        assert np.array_equal(shard_indices(10, r, 4, epoch=4, seed=9), padded[r::4])


def test_unshuffled_is_in_order():
    assert shard_indices(7, 1, 3, shuffle=False, remainder="uneven").tolist() == [1, 4]
    assert shard_indices(7, 2, 3, shuffle=False, remainder="pad").tolist() == [2, 5, 1]


def test_order_depends_on_seed_and_epoch_only():
    a = shard_indices(1000, 1, 4, epoch=2, seed=3)
    assert np.array_equal(a, shard_indices(1000, 1, 4, epoch=2, seed=3))
    assert not np.array_equal(a, shard_indices(1000, 1, 4, epoch=3, seed=3))
    assert not np.array_equal(a, shard_indices(1000, 1, 4, epoch=2, seed=4))


def test_permutation_is_the_same_in_a_fresh_process():
    """No hidden state: another interpreter computes the identical shard."""
    code = "from hvdkit.data.sharding import shard_indices; print(shard_indices(50, 2, 3, epoch=7, seed=1).tolist())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO)
    assert out.stdout.strip() == str(shard_indices(50, 2, 3, epoch=7, seed=1).tolist())


@pytest.mark.parametrize("remainder", sharding.REMAINDER_MODES)
def test_start_resumes_the_same_epoch(remainder):
    for r in range(3):
        full = shard_indices(20, r, 3, epoch=5, seed=2, remainder=remainder)
        for start in range(len(full) + 1):
            rest = shard_indices(20, r, 3, epoch=5, seed=2, remainder=remainder, start=start)
            assert np.array_equal(rest, full[start:])


def test_start_at_capacity_is_empty_on_every_rank_and_past_it_is_an_error():
    capacity = sharding.shard_capacity(7, 3, "uneven")  # shards of 3, 2, 2
    assert capacity == 3
    assert [len(shard_indices(7, r, 3, remainder="uneven", start=3)) for r in range(3)] == [0, 0, 0]
    with pytest.raises(ValueError, match=r"start=4 is past the end.*at most 3"):
        shard_indices(7, 0, 3, remainder="uneven", start=4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n=-1), r"n must be >= 0, got -1"),
    (dict(n=2.5), r"n must be an integer, got 2.5"),
    (dict(epoch=-1), r"epoch must be >= 0, got -1"),
    (dict(start=-2), r"start must be >= 0, got -2"),
    (dict(seed=-3), r"seed must be >= 0, got -3"),
    (dict(rank=4), r"rank must be in \[0, size=4\), got 4"),
    (dict(rank=-1), r"rank must be >= 0, got -1"),
    (dict(size=0), r"size must be >= 1, got 0"),
    (dict(remainder="wrap"), r"remainder must be one of 'pad', 'drop', 'uneven', got 'wrap'"),
    (dict(epoch=True), r"epoch must be an integer, got True"),
])
def test_bad_arguments_name_the_value(kwargs, message):
    args = dict(n=10, rank=0, size=4) | kwargs
    with pytest.raises(ValueError, match=message):
        shard_indices(**args)


def test_numpy_integers_are_accepted():
    assert np.array_equal(shard_indices(np.int64(9), np.int32(1), np.int64(2), epoch=np.int64(1)),
                          shard_indices(9, 1, 2, epoch=1))


class Node:
    def __init__(self, node, num_nodes, local_rank, local_size):
        self.node, self.num_nodes, self.local_rank, self.local_size = node, num_nodes, local_rank, local_size


def test_node_file_ranges_are_contiguous_and_cover_all_files():
    ranges = [sharding.node_file_range(10, k, 3) for k in range(3)]
    assert [list(r) for r in ranges] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    with pytest.raises(ValueError, match=r"n_files=1 is fewer than num_nodes=2"):
        sharding.node_file_range(1, 0, 2)


def test_files_stay_on_their_node_and_each_is_read_once():
    files = [f"part-{i:03d}" for i in range(11)]
    for epoch in range(3):
        seen = []
        for node in range(2):
            owned = {files[i] for i in sharding.node_file_range(len(files), node, 2)}
            for local_rank in range(3):
                mine = sharding.shard_files(files, Node(node, 2, local_rank, 3), epoch=epoch, seed=4)
                assert set(mine) <= owned
                seen += mine
        assert sorted(seen) == files


def test_file_count_gives_positions():
    positions = sharding.shard_files(8, Node(1, 2, 0, 2), shuffle=False)
    assert positions.tolist() == [4, 6]


def test_shard_arrays_keeps_rows_aligned():
    x = np.arange(30).reshape(10, 3)
    y = np.arange(10) * 10
    xs, ys = sharding.shard_arrays([x, y], 1, 3, epoch=1, seed=8)
    idx = shard_indices(10, 1, 3, epoch=1, seed=8)
    assert np.array_equal(xs, x[idx]) and np.array_equal(ys, y[idx])
    with pytest.raises(ValueError, match=r"share their first dimension, got lengths \[10, 9\]"):
        sharding.shard_arrays([x, y[:9]], 0, 2)


def test_import_pulls_no_framework():
    code = "import sys, hvdkit.data.sharding; print('torch' in sys.modules, 'tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO)
    assert out.stdout.strip() == "False False"


def test_torch_sampler_is_a_distributed_sampler_drop_in():
    import torch
    from hvdkit.data.torch_sampler import ShardedSampler

    data = list(range(23))
    for rank in range(3):
        sampler = ShardedSampler(data, num_replicas=3, rank=rank, seed=6)
        sampler.set_epoch(2)
        assert list(sampler) == shard_indices(23, rank, 3, epoch=2, seed=6).tolist()
        assert len(sampler) == sampler.num_samples == 8
        dropping = ShardedSampler(data, num_replicas=3, rank=rank, drop_last=True)
        assert len(dropping) == len(list(dropping)) == 7
        loader = torch.utils.data.DataLoader(data, batch_size=4, sampler=sampler)
        assert torch.cat(list(loader)).tolist() == list(sampler)


def test_torch_sampler_resumes_mid_epoch_once():
    import torch  # noqa: F401  (a broken install must fail, not skip)
    from hvdkit.data.torch_sampler import ShardedSampler

    sampler = ShardedSampler(range(40), num_replicas=2, rank=1, seed=3, remainder="uneven")
    sampler.set_epoch(4)
    full = list(sampler)
    iterator = iter(sampler)
    consumed = [next(iterator) for _ in range(5)]
    state = sampler.state_dict()
    assert state == {"epoch": 4, "start": 5, "seed": 3, "num_replicas": 2, "shuffle": True,
                     "remainder": "uneven"} and consumed == full[:5]

    resumed = ShardedSampler(range(40), num_replicas=2, rank=1, seed=3, remainder="uneven")
    resumed.load_state_dict(state)
    assert len(resumed) == 15 and list(resumed) == full[5:]
    assert len(resumed) == 20 and list(resumed) == full  # the skip applied to one iteration only
    assert resumed.state_dict(consumed=12)["start"] == 12


def test_torch_sampler_rejects_bad_arguments():
    import torch  # noqa: F401  (a broken install must fail, not skip)
    from hvdkit.data.torch_sampler import ShardedSampler

    with pytest.raises(ValueError, match=r"rank must be in \[0, size=2\), got 2"):
        ShardedSampler(range(4), num_replicas=2, rank=2)
    with pytest.raises(ValueError, match=r"remainder must be one of"):
        ShardedSampler(range(4), num_replicas=2, rank=0, remainder="cycle")
    sampler = ShardedSampler(range(4), num_replicas=2, rank=0)
    with pytest.raises(ValueError, match=r"epoch must be >= 0, got -1"):
        sampler.set_epoch(-1)
    with pytest.raises(ValueError, match=r"start=3 is past the end"):
        sampler.load_state_dict({"epoch": 0, "start": 3, "seed": 0})
    with pytest.raises(ValueError, match=r"seed=1 differs"):
        sampler.load_state_dict({"epoch": 0, "start": 0, "seed": 1})


def test_torch_sampler_without_init_says_to_call_init():
    import torch  # noqa: F401  (a broken install must fail, not skip)
    from hvdkit.data.torch_sampler import ShardedSampler

    with pytest.raises(RuntimeError, match=r"call hvdkit.topology.init\(hvd\) first"):
        ShardedSampler(range(4))


def test_tf_index_dataset_yields_this_ranks_indices():
    import tensorflow  # noqa: F401  (a broken install must fail, not skip)
    from hvdkit.data import tf_datasets as sharding_tf

    ds = sharding_tf.index_dataset(17, rank=2, size=3, epoch=1, seed=5, remainder="uneven", start=1)
    assert [int(i) for i in ds] == shard_indices(17, 2, 3, epoch=1, seed=5, remainder="uneven", start=1).tolist()
    x = np.arange(34).reshape(17, 2)
    rows = [r.numpy().tolist() for (r,) in sharding_tf.slices_dataset([x], rank=0, size=3, epoch=1)]
    assert rows == x[shard_indices(17, 0, 3, epoch=1)].tolist()
