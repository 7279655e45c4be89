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
allgather), which the decoders sum in one pass: ``decompress(payload, numel)``
of a gathered compressor takes the element count as its ctx.

Gathered compressors with a ``chunk_grain`` also run the two-phase exchange
(``hvdkit.exchange.strategies.two_phase``): the bucket is cut into one chunk
per rank at multiples of the grain, ``compress_chunks`` gives the chunks'
payloads back to back with their lengths, rank j sums everyone's chunk j
(``decompress``), compresses that sum again with its own "server" state and
``placed`` puts the result where the chunk sits in the bucket, so the gathered
server payloads decode as one payload of the whole bucket. Error feedback and other
memory live in the ``BucketState`` passed in; algorithms never keep per-bucket
data on ``self``. That state is an attempt: a compressor writes its new residual
into ``candidate(state, like)`` (or a new tensor) and assigns it to
``state.residual``, and the exchange keeps it only if the step's result is finite. All tensor work goes through ``self.ops`` (a
``backend.TensorOps``), so the same files serve torch and TensorFlow.
"""

from hvdkit.compression.spec import auto_flag

__all__ = ["Compressor", "TWO_PHASE_OPTION"]

# The option of the gathered compressors that can exchange in two phases (spec ``two_phase=auto|0|1``:
# ``auto``, the exchange picks by the number of ranks and the payload size; ``1`` always; ``0`` never).
TWO_PHASE_OPTION = (auto_flag, "auto")


class Compressor:
    """Base class: subclasses set the class attributes and implement compress/decompress."""

    name = None  # the spec name and registry key
    summable = True  # payloads of different ranks add up elementwise (allreduce); else they are gathered
    elementwise = True  # a bucket may be cut anywhere (hierarchical shards); False when tensor shapes matter
    rounds = 1  # collectives per exchange (PowerSGD: 2)
    argument = None  # spec.Argument for ``name:ARG``, or None
    options = {}  # algorithm options: name -> (parser, default)
    aliases = {}  # other names accepted for options: alias -> option (e.g. PyTorch's names)
    chunk_grain = None  # gathered compressors that run two-phase: chunk boundaries fall on multiples of this
    part_itemsizes = ()  # bytes per element of each payload tensor (gathered compressors; the cost model)
    decodes_into = False  # decompress writes into the ``out`` buffer it is given (else it ignores it)

    def __init__(self, spec, ops):
        self.spec = spec
        self.ops = ops
        self.ef = bool(spec.options.get("ef", False))

    def __repr__(self):
        return f"<{type(self).__name__} {self.spec}>"

    def advice(self):
        """A warning for the start of a job where this compressor's settings need care (None: none)."""
        return None

    def accepts(self, shape):
        """Whether a tensor of this shape is worth compressing (others go in dense buckets)."""
        return True

    def prepare(self, state, like):
        """Allocate what ``state`` needs before its first compress (error-feedback residual, ...)."""
        if self.ef and state.residual is None:
            state.residual = self.ops.zeros(state.numel, like)

    def candidate(self, state, like):
        """``state``'s spare buffer (allocated once), which the new residual is written into: ``compress``
        gets an attempt (``BucketState.attempt``) and must leave the committed residual as it was."""
        if state.spare is None:
            state.spare = self.ops.zeros(state.numel, like)
        return state.spare

    def compress(self, tensor, state):
        """One rank's flat bucket -> (payload tuple, ctx for decompress)."""
        raise NotImplementedError

    def compress_sum(self, tensor, state):
        """The two-phase exchange's re-compression of a chunk sum with the server ``state``: ``compress``,
        without what a wrapper applies to a rank's own gradients (DGC's momentum)."""
        return self.compress(tensor, state)

    def next_round(self, reduced, ctx):
        """Multi-round algorithms: reduced payload of round i -> (payload, ctx) of round i+1."""
        raise NotImplementedError(f"{self.name} exchanges in one round")

    def decompress(self, payload, ctx, out=None):
        """Reduced (summable) or gathered payload -> the dense flat sum over the ranks. ``out``: a float32
        buffer of the dense length that decoders which build their result from zeros write into (the
        exchange keeps one per bucket, reused every step), or None."""
        raise NotImplementedError

    # --- two-phase exchange (gathered compressors with a chunk_grain) ---------------------------------
    def part_lengths(self, numel):
        """Lengths of the payload tensors of ``numel`` elements (the alltoall's splits)."""
        raise NotImplementedError(f"{self.name} has no two-phase exchange")

    def compress_chunks(self, tensor, state, bounds):
        """(payload tensors with the chunks [bounds[j], bounds[j+1]) back to back, their lengths per chunk).
        Blockwise compressors compress the whole bucket once: with boundaries on whole blocks, the
        whole payload is the chunks' payloads back to back."""
        payload, _ = self.compress(tensor, state)
        per_chunk = [self.part_lengths(hi - lo) for lo, hi in zip(bounds, bounds[1:])]
        return payload, [[lengths[i] for lengths in per_chunk] for i in range(len(payload))]

    def placed(self, payload, start):
        """A chunk's payload as a piece of the whole bucket's payload (top-k moves its indices)."""
        return payload
