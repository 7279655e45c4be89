"""Per-bucket compression state: error feedback and algorithm memory, changed transactionally.

One ``BucketState`` per bucket (per shard of a bucket in hierarchical mode),
owned by the optimizer, never a module global: Horovod's static compressors
have nowhere to keep this, which is why they cannot do error feedback.

Error feedback must never lose a gradient (GRACE's "memory"): an exchange
compresses into ``state.attempt()``, a working copy whose residual, memory
and server state the compressor may replace or write in place (into
``spare``, a buffer kept from step to step), and the optimizer ``settle``s
the attempt once it knows whether the step's global result is finite. A
skipped step (some rank's gradient was NaN) leaves every residual exactly as
it was. The verdict may be a device flag, so settling never waits for the GPU.
"""

__all__ = ["BucketState"]


class BucketState:
    """What one bucket's compressor carries from step to step."""

    __slots__ = ("numel", "layout", "peers", "peer", "seed", "residual", "memory", "steps", "server", "spare",
                 "pending", "buffers", "velocity")

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
        # A buffer of ``numel`` elements that compressors write the candidate residual into (None until used):
        # the committed residual and this one swap roles when an attempt is kept.
        self.spare = None
        # The attempt of the exchange in flight, until ``settle``.
        self.pending = None
        # name -> a buffer the exchange decodes into, allocated once (shared with every attempt).
        self.buffers = {}
        # DGC's momentum correction: this rank's velocity of what it compresses (None when off).
        self.velocity = None

    def server_state(self, numel):
        """The state of this rank's chunk sum in a two-phase exchange (``numel`` elements), made on first use."""
        if self.server is None or self.server.numel != numel:
            self.server = BucketState(numel, peers=1, peer=self.peer, seed=self.seed ^ 0x5EED)
        return self.server

    def attempt(self):
        """The working copy one exchange compresses with (kept as ``pending`` until ``settle``).
        Compressors must not write into the committed ``residual``: they write into ``spare`` or make a
        new tensor, and assign the result to the attempt's ``residual``."""
        self.pending = self._copy()
        return self.pending

    def _copy(self):
        work = BucketState(self.numel, self.layout, self.peers, self.peer, self.seed)
        work.residual, work.memory, work.steps, work.spare = self.residual, self.memory, self.steps, self.spare
        work.velocity = self.velocity
        work.buffers = self.buffers
        work.server = self.server._copy() if self.server is not None else None
        return work

    def buffer(self, name, n, ops, like):
        """The buffer ``name`` of ``n`` float32 elements on ``like``'s device, allocated on first use."""
        buffer = self.buffers.get(name)
        if buffer is None or ops.numel(buffer) != n:
            buffer = self.buffers[name] = ops.zeros(n, like)
        return buffer

    def rescale(self, factor, ops):
        """Residuals times ``factor``: they follow a loss scale that changed (the step's gradients arrive
        multiplied by the new scale)."""
        if self.residual is not None:
            self.residual = ops.rescale_(self.residual, factor)
        if self.velocity is not None:
            self.velocity = ops.rescale_(self.velocity, factor)
        if self.server is not None:
            self.server.rescale(factor, ops)

    def settle(self, bad, select):
        """Keep the pending attempt's residual, memory and server state unless ``bad``: a Python bool, or a
        device flag (then ``select(bad, old, new)`` picks on the device, with no host read). The step
        count advances either way (it varies seeds)."""
        work, self.pending = self.pending, None
        if work is not None:
            self._commit(work, bad, select)

    def _commit(self, work, bad, select):
        self.steps = work.steps
        old = self.residual
        if bad is True or work.residual is None:
            pass
        elif bad is False or old is None:
            self.residual = work.residual
        else:
            self.residual = select(bad, old, work.residual)
        if work.residual is work.spare and self.residual is work.residual:
            self.spare = old  # the buffers swap roles
        elif work.spare is not None and work.spare is not self.residual:
            self.spare = work.spare
        self.memory = _kept(self.memory, work.memory, bad, select)
        self.velocity = _kept(self.velocity, work.velocity, bad, select)
        if work.server is not None:
            if self.server is None or self.server.numel != work.server.numel:
                self.server = BucketState(work.server.numel, peers=1, peer=self.peer, seed=self.seed ^ 0x5EED)
            self.server._commit(work.server, bad, select)

    def to_dict(self):
        """The values a checkpoint needs (tensors stay framework tensors)."""
        return {"numel": self.numel, "residual": self.residual, "memory": self.memory, "steps": self.steps,
                "velocity": self.velocity, "server": None if self.server is None else self.server.to_dict()}

    def load_dict(self, saved):
        if saved["numel"] != self.numel:
            raise ValueError(f"compression state for a bucket of {saved['numel']} elements cannot be loaded into "
                             f"a bucket of {self.numel}: the model, fusion_mb or world layout changed")
        self.residual, self.memory, self.steps = saved["residual"], saved["memory"], int(saved["steps"])
        self.velocity = saved.get("velocity")  # absent in checkpoints written before momentum correction
        server = saved.get("server")  # absent in checkpoints written before two-phase exchanges
        self.server = None
        if server is not None:
            self.server_state(server["numel"]).load_dict(server)


def _kept(old, new, bad, select):
    """What a settled attempt leaves of a tensor it replaced: ``new`` unless ``bad`` (a bool or device flag)."""
    if bad is True or new is old:
        return old
    return new if bad is False or old is None else select(bad, old, new)
