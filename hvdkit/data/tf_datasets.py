"""tf.data helpers over :mod:`hvdkit.data.sharding`.

``tf.data``'s own ``Dataset.shard`` reads every element on every rank and
keeps one in ``size``; these helpers instead start from this rank's indices,
so each rank only touches its own samples, in the epoch's shared permutation.
Build the dataset again for each epoch (the order depends on ``epoch``).
"""
import tensorflow as tf

from hvdkit.data import sharding


def index_dataset(n, rank=None, size=None, epoch=0, seed=0, shuffle=True, remainder="pad", start=0):
    """A ``tf.data.Dataset`` of this rank's int64 sample indices for one epoch.

    Map it to a loader (``ds.map(load_sample)``); ``rank``/``size`` default to
    the initialised :func:`hvdkit.topology.current`.
    """
    rank, size = sharding.this_rank(rank, size)
    indices = sharding.shard_indices(n, rank, size, epoch=epoch, seed=seed, shuffle=shuffle,
                                     remainder=remainder, start=start)
    return tf.data.Dataset.from_tensor_slices(tf.constant(indices, dtype=tf.int64))


def slices_dataset(arrays, rank=None, size=None, epoch=0, seed=0, shuffle=True, remainder="pad", start=0):
    """A ``tf.data.Dataset`` of tuples of this rank's rows of in-memory arrays."""
    rank, size = sharding.this_rank(rank, size)
    rows = sharding.shard_arrays(arrays, rank, size, epoch=epoch, seed=seed, shuffle=shuffle,
                                 remainder=remainder, start=start)
    return tf.data.Dataset.from_tensor_slices(rows)
