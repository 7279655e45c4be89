"""Per-bucket compression state: error feedback and algorithm memory.

One ``BucketState`` per bucket (per shard of a bucket in hierarchical mode),
owned by the optimizer, never a module global: Horovod's static compressors
have nowhere to keep this, which is why they cannot do error feedback.
"""

__all__ = ["BucketState"]


class BucketState:
    """What one bucket's compressor carries from step to step."""

    __slots__ = ("numel", "layout", "peers", "peer", "seed", "residual", "memory", "steps", "server")

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
        # Two-phase exchange: the state of the chunk sum this rank re-compresses (its own residual,
        # "server" error feedback); None until first use.
        self.server = None

    def server_state(self, numel):
        """The state of this rank's chunk sum in a two-phase exchange (``numel`` elements), made on first use."""
        if self.server is None or self.server.numel != numel:
            self.server = BucketState(numel, peers=1, peer=self.peer, seed=self.seed ^ 0x5EED)
        return self.server

    def scratch(self):
        """A throwaway copy for an input that is not finite: the compressor may run on it (so every
        rank still joins the collective) while this state's residual and memory stay untouched."""
        other = BucketState(self.numel, self.layout, self.peers, self.peer, self.seed)
        other.memory = self.memory
        other.steps = self.steps
        other.server = self.server.scratch() if self.server is not None else None
        return other

    def to_dict(self):
        """The values a checkpoint needs (tensors stay framework tensors)."""
        return {"numel": self.numel, "residual": self.residual, "memory": self.memory, "steps": self.steps,
                "server": None if self.server is None else self.server.to_dict()}

    def load_dict(self, saved):
        if saved["numel"] != self.numel:
            raise ValueError(f"compression state for a bucket of {saved['numel']} elements cannot be loaded into "
                             f"a bucket of {self.numel}: the model, fusion_mb or world layout changed")
        self.residual, self.memory, self.steps = saved["residual"], saved["memory"], int(saved["steps"])
        server = saved.get("server")  # absent in checkpoints written before two-phase exchanges
        self.server = None
        if server is not None:
            self.server_state(server["numel"]).load_dict(server)
