"""A drop-in for ``torch.utils.data.DistributedSampler`` built on :mod:`hvdkit.data.sharding`.

Differences that matter: the order comes from :func:`hvdkit.data.sharding.shard_indices`
(numpy PCG64, not ``torch.randperm``), ``remainder="uneven"`` is available, and
the sampler can resume mid-epoch through ``state_dict()/load_state_dict()``.
"""
import torch.utils.data

from hvdkit.data import sharding


class ShardedSampler(torch.utils.data.Sampler):
    """Yields this rank's dataset indices for the current epoch.

    ``drop_last`` maps to ``remainder="drop"`` (``False``: ``"pad"``), as in
    ``DistributedSampler``; pass ``remainder="uneven"`` to read every sample
    exactly once. Call ``set_epoch(e)`` before each epoch. To resume, save
    ``state_dict(consumed)`` with the number of indices the training loop has
    actually used this epoch (a ``DataLoader`` with workers prefetches ahead
    of the loop, so the sampler's own count of yielded indices runs ahead of
    what was trained on); ``load_state_dict`` makes the next iteration skip
    them. The skip applies to one iteration only: the following epoch starts
    at 0.
    """

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0,
                 drop_last=False, remainder=None):
        rank, num_replicas = sharding.this_rank(rank, num_replicas)
        if remainder is None:
            remainder = "drop" if drop_last else "pad"
        # Validates every argument once, with messages naming it.
        sharding.shard_indices(0, rank, num_replicas, seed=seed, remainder=remainder)
        self.dataset = dataset
        self.num_replicas = num_replicas  # world size the shard is cut for
        self.rank = rank  # which stride of the permutation this sampler yields
        self.shuffle = shuffle
        self.seed = seed  # with epoch, the only input to the permutation
        self.remainder = remainder
        self.drop_last = remainder == "drop"  # mirrors DistributedSampler's attribute
        self.epoch = 0
        self._start = 0  # indices to skip in the next iteration (resume)
        self._yielded = 0  # indices handed out by the current iteration

    def set_epoch(self, epoch):
        """Choose the epoch whose permutation the next iteration uses."""
        sharding.epoch_permutation(0, epoch=epoch)
        self.epoch = int(epoch)

    @property
    def num_samples(self):
        """Indices per epoch for this rank, as ``DistributedSampler.num_samples``."""
        return sharding.shard_size(len(self.dataset), self.rank, self.num_replicas, self.remainder)

    def __len__(self):
        return max(self.num_samples - self._start, 0)

    def __iter__(self):
        indices = sharding.shard_indices(
            len(self.dataset), self.rank, self.num_replicas, epoch=self.epoch, seed=self.seed,
            shuffle=self.shuffle, remainder=self.remainder, start=self._start)
        self._yielded = self._start
        self._start = 0
        for index in indices.tolist():
            self._yielded += 1
            yield index

    def state_dict(self, consumed=None):
        """``{"epoch", "start", "seed", "num_replicas", "shuffle", "remainder"}`` to resume from;
        ``consumed`` defaults to the number of indices this epoch's iterator has yielded so far."""
        start = self._yielded if consumed is None else consumed
        return {"epoch": self.epoch, "start": int(start), "seed": self.seed, "num_replicas": self.num_replicas,
                "shuffle": self.shuffle, "remainder": self.remainder}

    def load_state_dict(self, state):
        """Resume: the next iteration uses ``state["epoch"]`` and skips ``state["start"]`` indices.

        ``start`` counts this rank's indices of one particular order: a state saved with another
        seed, world size, shuffle or remainder mode would resume at the wrong samples, so it is refused.
        """
        for key in ("seed", "num_replicas", "shuffle", "remainder"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"state_dict {key}={state[key]!r} differs from this sampler's "
                                 f"{key}={getattr(self, key)!r}: the saved position cannot be resumed here")
        epoch, start = state["epoch"], state["start"]
        sharding.shard_indices(len(self.dataset), self.rank, self.num_replicas, epoch=epoch,
                               shuffle=False, remainder=self.remainder, start=start)
        self.epoch = int(epoch)
        self._start = int(start)
