"""Per-bucket compression state: error feedback and algorithm memory.

One ``BucketState`` per bucket (per shard of a bucket in hierarchical mode),
owned by the optimizer, never a module global: Horovod's static compressors
have nowhere to keep this, which is why they cannot do error feedback.
"""

__all__ = ["BucketState"]


class BucketState:
    """What one bucket's compressor carries from step to step."""

    __slots__ = ("numel", "layout", "peers", "peer", "seed", "residual", "memory", "steps")

    def __init__(self, numel, layout=(), peers=1, peer=0, seed=0):
        # Length of the flat tensor this state compresses; a different length is a bug upstream.
        self.numel = numel
        # ((offset, shape), ...) of the tensors inside the flat bucket: PowerSGD works per matrix.
        self.layout = tuple(layout)
        # How many ranks' payloads are combined: PowerSGD keeps this rank's share of the global error.
        self.peers = peers
        # This rank's index among the peers: rank-distinct randomness (stochastic rounding).
        self.peer = peer
        # Seed equal on all peers (bucket index mixed in): random-k picks the same indices everywhere.
        self.seed = seed
        # Error feedback: what earlier compressions left unsent (None until first use / when EF is off).
        self.residual = None
        # Tensors the algorithm keeps identical on every peer between steps (PowerSGD's Q); None otherwise.
        self.memory = None
        # Compressed exchanges done with this state: varies random seeds per step; saved in state_dict.
        self.steps = 0

    def scratch(self):
        """A throwaway copy for an input that is not finite: the compressor may run on it (so every
        rank still joins the collective) while this state's residual and memory stay untouched."""
        other = BucketState(self.numel, self.layout, self.peers, self.peer, self.seed)
        other.memory = self.memory
        other.steps = self.steps
        return other

    def to_dict(self):
        """The values a checkpoint needs (tensors stay framework tensors)."""
        return {"numel": self.numel, "residual": self.residual, "memory": self.memory, "steps": self.steps}

    def load_dict(self, saved):
        if saved["numel"] != self.numel:
            raise ValueError(f"compression state for a bucket of {saved['numel']} elements cannot be loaded into "
                             f"a bucket of {self.numel}: the model, fusion_mb or world layout changed")
        self.residual, self.memory, self.steps = saved["residual"], saved["memory"], int(saved["steps"])
