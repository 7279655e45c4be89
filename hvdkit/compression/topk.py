"""``topk:RATIO``: the k = ceil(RATIO * n) largest-magnitude values, gathered.

Each rank sends int32 indices and float32 values of its own top-k of
``gradient + residual``; indices differ between ranks, so payloads are
gathered and scatter-added into one dense sum, or exchanged in two phases
(each rank sums one chunk and keeps that sum's own top-k, with its own residual). ``ef=1`` (default) keeps what
was not sent in the residual (Deep Gradient Compression's local accumulation);
``approx=1`` estimates the threshold from a sample (faster, count bounded by k).
Deep Gradient Compression's recipe (``mc``, ``mask``, ``clip``, ``ramp``) is in
``hvdkit.compression.dgc``.
"""
import math

from hvdkit.compression import dgc, spec
from hvdkit.compression.base import TWO_PHASE_OPTION, Compressor


def count(ratio, n):
    """Values kept out of ``n``: at least one, at most n."""
    return min(n, max(1, math.ceil(ratio * n)))


class TopK(Compressor):
    name = "topk"
    summable = False
    argument = spec.Argument("RATIO", spec.ratio)
    options = {"ef": (spec.flag, True), "approx": (spec.flag, False), "two_phase": TWO_PHASE_OPTION,
               **dgc.SPARSIFIER_OPTIONS}
    aliases = dgc.ALIASES
    common_defaults = spec.SMALL_TENSORS_DENSE  # a small tensor's few kept values starve it
    chunk_grain = 1
    decodes_into = True

    def ratio(self, state):
        """The fraction kept at this state's exchange: the spec's RATIO after DGC's sparsity warm-up."""
        return dgc.density(self.spec.arg, self.spec.options["ramp"], state.steps)

    def compress(self, tensor, state):
        k = count(self.ratio(state), state.numel)
        ops = self.ops
        residual = ops.copy_into(self.candidate(state, tensor), state.residual) if self.ef else None
        indices, values, residual = ops.topk_ef(tensor, residual, k, self.spec.options["approx"])
        if self.ef:
            state.residual = residual
        return (indices, values), state.numel

    def decompress(self, payload, ctx, out=None):
        indices, values = payload
        out = self.ops.zeros(ctx, values) if out is None else self.ops.zero_(out)
        return self.ops.scatter_add(indices, values, out)

    part_itemsizes = (4, 4)  # int32 indices, float32 values

    def part_lengths(self, numel):
        k = count(self.spec.arg, numel)
        return k, k

    def compress_chunks(self, tensor, state, bounds):
        """Each chunk's own top-k at the same density (indices counted from the chunk's start)."""
        ops, ef, approx = self.ops, self.ef, self.spec.options["approx"]
        candidate = ops.copy_into(self.candidate(state, tensor), state.residual) if ef else None
        indices, values, residuals = [], [], []
        for lo, hi in zip(bounds, bounds[1:]):
            k = count(self.ratio(state), hi - lo)
            residual = ops.slice(candidate, lo, hi) if ef else None
            i, v, r = ops.topk_ef(ops.slice(tensor, lo, hi), residual, k, approx)
            indices.append(i)
            values.append(v)
            residuals.append(r)
        if ef:
            state.residual = ops.concat_into(candidate, residuals)
        lengths = [ops.numel(v) for v in values]
        return (ops.concat(indices), ops.concat(values)), [lengths, lengths]

    def placed(self, payload, start):
        indices, values = payload
        return self.ops.add(indices, start), values
