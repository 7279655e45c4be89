"""``bf16``: bfloat16 values, gathered and summed in float32.

Horovod 0.28 has no bfloat16 reduction (nor bfloat16 allgather), so the
payload travels as int16 bits through allgather and every rank sums the
ranks' values in float32 after decoding. Gathering moves (p-1)*2n bytes per
rank against a ring allreduce's 2(p-1)/p*4n for float32: it saves bytes up to
4 ranks per exchange group; beyond, the two-phase exchange (each rank sums one
chunk in float32 and rounds it to bfloat16 again) moves about 2*2n at any size.
"""
from hvdkit.compression import spec
from hvdkit.compression.base import TWO_PHASE_OPTION, Compressor
from hvdkit.compression.fp16 import cast_with_feedback


class BF16(Compressor):
    name = "bf16"
    summable = False
    options = {"ef": (spec.flag, False), "two_phase": TWO_PHASE_OPTION}
    chunk_grain = 1

    def compress(self, tensor, state):
        low = cast_with_feedback(self, tensor, state, "bfloat16")
        return (self.ops.bitcast(low, "int16"),), state.numel

    def decompress(self, payload, ctx, out=None):
        return self.ops.sum_chunks(payload[0], ctx, "bfloat16")

    part_itemsizes = (2,)  # bfloat16 bits

    def part_lengths(self, numel):
        return (numel,)
