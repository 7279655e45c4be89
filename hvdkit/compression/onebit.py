"""``onebit``: the sign of ``gradient + residual`` with one scale (mean |value|) per block, gathered.

n/8 bytes of sign bits plus one float32 per block of BLOCK values (option
``block=``, a multiple of 8, default 1024); scales differ between ranks, so payloads are
gathered and decoded into one dense sum, or exchanged in two phases (1-bit
Adam's compressed allreduce, with a second error feedback on the chunk sums). Error feedback (``ef=1``, default)
is what makes 1-bit SGD converge: the residual keeps c - scale*sign(c).
"""
from hvdkit.compression import spec
from hvdkit.compression.base import TWO_PHASE_OPTION, Compressor


class OneBit(Compressor):
    name = "onebit"
    summable = False
    options = {"ef": (spec.flag, True), "block": (spec.block_size, 1024), "two_phase": TWO_PHASE_OPTION}
    # A block's one scale spans neighbouring tensors in a bucket: a bias sharing a block with a weight
    # matrix would move by the weights' mean magnitude every step.
    common_defaults = spec.SMALL_TENSORS_DENSE
    decodes_into = True

    def __init__(self, spec_, ops):
        super().__init__(spec_, ops)
        self.chunk_grain = self.spec.options["block"]  # whole blocks: a chunk's bits and scales are a slice

    def compress(self, tensor, state):
        ops = self.ops
        buffer = self.candidate(state, tensor)
        residual = ops.copy_into(buffer, state.residual) if self.ef else ops.zero_(buffer)
        bits, scales, residual = ops.sign_ef(tensor, residual, self.spec.options["block"])
        if self.ef:
            state.residual = residual
        return (bits, scales), state.numel

    def decompress(self, payload, ctx, out=None):
        bits, scales = payload
        return self.ops.sign_decode(bits, scales, ctx, self.spec.options["block"], out)

    part_itemsizes = (1, 4)  # sign bits, float32 scales

    def part_lengths(self, numel):
        return -(-numel // 8), -(-numel // self.spec.options["block"])
