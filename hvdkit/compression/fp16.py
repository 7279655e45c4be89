"""``fp16``: half-precision values, summed by Horovod's allreduce.

The input is already divided by the world size (the optimizer scales while
packing), so the sum of fp16 values stays in range at any world size; Horovod's
own fp16 compression sums first and divides after, which overflows for large
worlds. With ``ef=1`` the rounding error is fed back into the next step.
"""
from hvdkit.compression import spec
from hvdkit.compression.base import Compressor


def cast_with_feedback(ops, tensor, state, dtype, ef):
    """(low-precision copy of tensor + residual, updated state). A cast that overflowed leaves the
    residual untouched, so an Inf never enters the error-feedback memory."""
    c = ops.add(tensor, state.residual) if ef else tensor
    low, nonfinite = ops.cast(c, dtype)
    if ef and not nonfinite:
        state.residual = ops.sub_(c, ops.cast(low, "float32")[0])
    return low


class FP16(Compressor):
    name = "fp16"
    summable = True
    options = {"ef": (spec.flag, False)}

    def compress(self, tensor, state):
        return (cast_with_feedback(self.ops, tensor, state, "float16", self.ef),), None

    def decompress(self, payload, ctx):
        return self.ops.cast(payload[0], "float32")[0]
