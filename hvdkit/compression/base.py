"""The interface every compression algorithm implements.

A compressor turns one flat float32 bucket into a payload (a tuple of
tensors) that Horovod can move, and back::

    payload, ctx = compressor.compress(tensor, state)      # on each rank
    reduced = <allreduce (summable) or allgather (not) of each payload tensor>
    for _ in range(compressor.rounds - 1):                 # PowerSGD: P, then Q
        payload, ctx = compressor.next_round(reduced, ctx)
        reduced = <allreduce ...>
    dense = compressor.decompress(reduced, ctx)            # sum over the ranks

Inputs arrive already divided by the world size when averaging, so the
decoded sum is the average and nothing is scaled after the exchange.
Gathered payloads arrive as every rank's tensors joined end to end (Horovod's
allgather), which the decoders sum in one pass. Error feedback and other
memory live in the ``BucketState`` passed in; algorithms never keep per-bucket
data on ``self``. All tensor work goes through ``self.ops`` (a
``backend.TensorOps``), so the same files serve torch and TensorFlow.
"""

__all__ = ["Compressor"]


class Compressor:
    """Base class: subclasses set the class attributes and implement compress/decompress."""

    name = None  # the spec name and registry key
    summable = True  # payloads of different ranks add up elementwise (allreduce); else they are gathered
    elementwise = True  # a bucket may be cut anywhere (hierarchical shards); False when tensor shapes matter
    rounds = 1  # collectives per exchange (PowerSGD: 2)
    argument = None  # spec.Argument for ``name:ARG``, or None
    options = {}  # algorithm options: name -> (parser, default)

    def __init__(self, spec, ops):
        self.spec = spec
        self.ops = ops
        self.ef = bool(spec.options.get("ef", False))

    def __repr__(self):
        return f"<{type(self).__name__} {self.spec}>"

    def accepts(self, shape):
        """Whether a tensor of this shape is worth compressing (others go in dense buckets)."""
        return True

    def prepare(self, state, like):
        """Allocate what ``state`` needs before its first compress (error-feedback residual, ...)."""
        if self.ef and state.residual is None:
            state.residual = self.ops.zeros(state.numel, like)

    def compress(self, tensor, state):
        """One rank's flat bucket -> (payload tuple, ctx for decompress)."""
        raise NotImplementedError

    def next_round(self, reduced, ctx):
        """Multi-round algorithms: reduced payload of round i -> (payload, ctx) of round i+1."""
        raise NotImplementedError(f"{self.name} exchanges in one round")

    def decompress(self, payload, ctx):
        """Reduced (summable) or gathered payload -> the dense flat sum over the ranks."""
        raise NotImplementedError
