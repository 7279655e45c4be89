"""Which samples each rank reads: the same permutation everywhere, no messages.

Every rank computes the epoch's permutation from ``(seed, epoch)`` alone, so
ranks agree on it without communicating, a restarted job gets the same order,
and a checkpoint only needs ``(epoch, start)`` to resume mid-epoch.

Assignment is strided, as in ``torch.utils.data.DistributedSampler``: after
the remainder rule is applied to the permuted list, rank ``r`` takes
positions ``r, r + size, r + 2*size, ...``. Remainder modes when ``size`` does
not divide ``n``:

* ``"pad"``: the list is extended by wrapping around to its start (repeating
  it as often as needed) to ``ceil(n / size) * size`` entries, so every rank
  gets ``ceil(n / size)`` indices; a few samples are seen twice per epoch.
  With ``n < size`` every rank still gets exactly one index.
* ``"drop"``: the tail is dropped to ``floor(n / size) * size`` entries, so
  every rank gets ``floor(n / size)``; a few samples are skipped this epoch
  (a different few each epoch when shuffling). With ``n < size`` every rank
  gets none.
* ``"uneven"``: nothing added or removed; every sample is read exactly once
  per epoch across ranks; ranks ``r < n % size`` get one more than the others
  (and with ``n < size`` ranks ``r >= n`` get none). Training loops must then
  cope with ranks running different numbers of steps (e.g. ``hvd.join``).

``n == 0`` is valid and gives every rank an empty shard in every mode.

``start`` is how many of its indices each rank has already consumed this
epoch (the same number on every rank: steps taken times the per-rank batch
size); the result is the rest of the shard. It may range from 0 to the longest
shard of the mode, ``shard_capacity(n, size, remainder)``; in ``"uneven"``
mode a rank whose shard is one shorter then gets an empty result. A larger
``start`` is a ``ValueError`` on every rank.
"""
import operator

import numpy as np

REMAINDER_MODES = ("pad", "drop", "uneven")

__all__ = [
    "REMAINDER_MODES",
    "epoch_permutation",
    "node_file_range",
    "shard_arrays",
    "shard_capacity",
    "shard_files",
    "shard_indices",
    "shard_size",
    "this_rank",
]


def this_rank(rank=None, size=None):
    """``(rank, size)`` with the omitted ones taken from the initialised :func:`hvdkit.topology.current`."""
    if rank is None or size is None:
        from hvdkit import topology

        current = topology.current()
        rank = current.rank if rank is None else rank
        size = current.size if size is None else size
    return rank, size


def _int_arg(name, value, minimum):
    """``value`` as a Python int >= minimum, or a ValueError naming ``name``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_world(rank, size):
    size = _int_arg("size", size, 1)
    rank = _int_arg("rank", rank, 0)
    if rank >= size:
        raise ValueError(f"rank must be in [0, size={size}), got {rank}")
    return rank, size


def _check_remainder(remainder):
    if remainder not in REMAINDER_MODES:
        raise ValueError(f"remainder must be one of {', '.join(map(repr, REMAINDER_MODES))}, got {remainder!r}")
    return remainder


def epoch_permutation(n, epoch=0, seed=0, shuffle=True):
    """The epoch's order of ``range(n)``: a function of ``(seed, epoch)`` only.

    Uses numpy's PCG64 seeded with ``SeedSequence([seed, epoch])``, so nearby
    seeds and epochs give unrelated orders.
    """
    n = _int_arg("n", n, 0)
    epoch = _int_arg("epoch", epoch, 0)
    seed = _int_arg("seed", seed, 0)
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
    return rng.permutation(n).astype(np.int64, copy=False)


def shard_capacity(n, size, remainder="pad"):
    """The longest shard any rank gets: the upper bound for ``start``."""
    n = _int_arg("n", n, 0)
    size = _int_arg("size", size, 1)
    if _check_remainder(remainder) == "drop":
        return n // size
    return -(-n // size)


def shard_size(n, rank, size, remainder="pad"):
    """How many indices ``rank`` gets per epoch (before ``start``), without building them."""
    n = _int_arg("n", n, 0)
    rank, size = _check_world(rank, size)
    remainder = _check_remainder(remainder)
    if remainder == "uneven":
        return n // size + (1 if rank < n % size else 0)
    return shard_capacity(n, size, remainder)


def shard_indices(n, rank, size, epoch=0, seed=0, shuffle=True, remainder="pad", start=0):
    """This rank's sample indices for one epoch, as an int64 numpy array.

    See the module docstring for the remainder modes and ``start``.
    """
    n = _int_arg("n", n, 0)
    rank, size = _check_world(rank, size)
    remainder = _check_remainder(remainder)
    start = _int_arg("start", start, 0)
    capacity = shard_capacity(n, size, remainder)
    if start > capacity:
        raise ValueError(
            f"start={start} is past the end of the shard: with n={n}, size={size}, "
            f"remainder={remainder!r} each rank has at most {capacity} indices per epoch")
    order = epoch_permutation(n, epoch, seed, shuffle)
    if remainder == "pad" and n > 0:
        total = capacity * size
        order = np.resize(order, total)  # np.resize repeats the array cyclically
    elif remainder == "drop":
        order = order[: capacity * size]
    return order[rank::size][start:].copy()


def node_file_range(n_files, node, num_nodes):
    """The contiguous ``range`` of file positions that ``node`` owns.

    Files are split as evenly as possible, in order: node ``k`` owns
    ``[k * n_files // num_nodes, (k + 1) * n_files // num_nodes)``. Every node
    must own at least one file, so ``n_files < num_nodes`` is a ValueError.
    """
    n_files = _int_arg("n_files", n_files, 0)
    node, num_nodes = _check_world(node, num_nodes)
    if n_files < num_nodes:
        raise ValueError(
            f"n_files={n_files} is fewer than num_nodes={num_nodes}: every node needs at least one file")
    return range(node * n_files // num_nodes, (node + 1) * n_files // num_nodes)


def shard_files(files, topology, epoch=0, seed=0, shuffle=True, remainder="uneven", start=0):
    """Node-aware file sharding for data on node-local disks.

    Node ``topology.node`` takes the contiguous range of files given by
    :func:`node_file_range` (so node ``k`` must hold those files locally); the
    ``topology.local_size`` ranks of the node split that range with
    :func:`shard_indices` (shuffled within the node only, so files never move
    between nodes). ``files`` is a sequence in the same order on every rank,
    or a count; the result is the list of this rank's files, or their
    positions as an int64 array when ``files`` is a count.

    ``topology`` is anything with ``node, num_nodes, local_rank, local_size``
    (a :class:`hvdkit.topology.Topology`).
    """
    is_count = isinstance(files, (int, np.integer)) and not isinstance(files, bool)
    count = files if is_count else len(files)
    owned = node_file_range(count, topology.node, topology.num_nodes)
    local = shard_indices(len(owned), topology.local_rank, topology.local_size,
                          epoch=epoch, seed=seed, shuffle=shuffle, remainder=remainder, start=start)
    positions = local + owned.start
    if is_count:
        return positions
    return [files[i] for i in positions]


def shard_arrays(arrays, rank, size, epoch=0, seed=0, shuffle=True, remainder="pad", start=0):
    """This rank's rows of in-memory numpy arrays that share their first dimension.

    Returns a tuple of arrays, each indexed by :func:`shard_indices` (a copy).
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    if not arrays:
        raise ValueError("arrays must hold at least one array")
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"arrays must share their first dimension, got lengths {[len(a) for a in arrays]}")
    idx = shard_indices(lengths.pop(), rank, size, epoch=epoch, seed=seed, shuffle=shuffle,
                        remainder=remainder, start=start)
    return tuple(a[idx] for a in arrays)
