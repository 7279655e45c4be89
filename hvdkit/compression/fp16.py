"""``fp16``: half-precision values, summed by Horovod's allreduce.

The input is already divided by the world size (the optimizer scales while
packing), so the sum of fp16 values stays in range at any world size; Horovod's
own fp16 compression sums first and divides after, which overflows for large
worlds. With ``ef=1`` the rounding error is fed back into the next step.
"""
from hvdkit.compression import spec
from hvdkit.compression.base import Compressor


def cast_with_feedback(compressor, tensor, state, dtype):
    """Low-precision copy of tensor + residual; the rounding error becomes the attempt's residual (finite
    values beyond the range saturate; a NaN or Inf input makes the step's result non-finite, and the
    exchange then keeps the old residual)."""
    ops = compressor.ops
    c = ops.add_into(compressor.candidate(state, tensor), tensor, state.residual) if compressor.ef else tensor
    low, _ = ops.cast(c, dtype)
    if compressor.ef:
        state.residual = ops.sub_(c, ops.cast(low, "float32")[0])
    return low


class FP16(Compressor):
    name = "fp16"
    summable = True
    options = {"ef": (spec.flag, False)}

    def compress(self, tensor, state):
        return (cast_with_feedback(self, tensor, state, "float16"),), None

    def decompress(self, payload, ctx, out=None):
        return self.ops.cast(payload[0], "float32")[0]
