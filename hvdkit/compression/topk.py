"""``topk:RATIO``: the k = ceil(RATIO * n) largest-magnitude values, gathered.

Each rank sends int32 indices and float32 values of its own top-k of
``gradient + residual``; indices differ between ranks, so payloads are
gathered and scatter-added into one dense sum. ``ef=1`` (default) keeps what
was not sent in the residual (Deep Gradient Compression's local accumulation);
``approx=1`` estimates the threshold from a sample (faster, count bounded by k).
"""
import math

from hvdkit.compression import spec
from hvdkit.compression.base import Compressor


def count(ratio, n):
    """Values kept out of ``n``: at least one, at most n."""
    return min(n, max(1, math.ceil(ratio * n)))


class TopK(Compressor):
    name = "topk"
    summable = False
    argument = spec.Argument("RATIO", spec.ratio)
    options = {"ef": (spec.flag, True), "approx": (spec.flag, False)}

    def compress(self, tensor, state):
        k = count(self.spec.arg, state.numel)
        indices, values, residual = self.ops.topk_ef(tensor, state.residual if self.ef else None, k,
                                                     self.spec.options["approx"])
        if self.ef:
            state.residual = residual
        return (indices, values), state.numel

    def decompress(self, payload, ctx):
        indices, values = payload
        return self.ops.scatter_add(indices, values, self.ops.zeros(ctx, values))
