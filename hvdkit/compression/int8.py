"""``int8[:BLOCK]``: blockwise absmax int8 quantization, gathered.

Each block of BLOCK values is sent as int8 plus one float32 scale (about
n + 4n/BLOCK bytes for 4n dense). Scales differ between ranks, so payloads are
gathered and every rank dequantizes and sums all of them, or exchanged in two
phases (each rank sums one chunk and quantizes the sum again). ``stochastic=1``
rounds stochastically (unbiased; seeded per rank and step); ``ef=1`` feeds the
quantization error back.
"""
from hvdkit.compression import spec
from hvdkit.compression.base import TWO_PHASE_OPTION, Compressor
from hvdkit.compression.seeds import mix


class Int8(Compressor):
    name = "int8"
    summable = False
    argument = spec.Argument("BLOCK", spec.positive_int, default=1024)
    options = {"ef": (spec.flag, False), "stochastic": (spec.flag, False), "seed": (spec.non_negative_int, 0),
               "two_phase": TWO_PHASE_OPTION}
    decodes_into = True

    def __init__(self, spec_, ops):
        super().__init__(spec_, ops)
        self.chunk_grain = self.spec.arg  # whole blocks: a chunk's values and scales are a slice

    def compress(self, tensor, state):
        ops, block = self.ops, self.spec.arg
        c = ops.add_into(self.candidate(state, tensor), tensor, state.residual) if self.ef else tensor
        seed = mix(self.spec.options["seed"], state.seed, state.peer, state.steps)
        q, scales = ops.quantize_int8(c, block, self.spec.options["stochastic"], seed)
        if self.ef:
            state.residual = ops.sub_(c, ops.dequantize_int8(q, scales, block))
        return (q, scales), state.numel

    def decompress(self, payload, ctx, out=None):
        ops, block, n = self.ops, self.spec.arg, ctx
        q, scales = payload
        blocks = -(-n // block)
        out = ops.zeros(n, scales) if out is None else ops.zero_(out)
        for r in range(ops.numel(q) // n if n else 0):
            out = ops.dequantize_int8(ops.slice(q, r * n, (r + 1) * n),
                                      ops.slice(scales, r * blocks, (r + 1) * blocks), block, out, True)
        return out

    part_itemsizes = (1, 4)  # int8 values, float32 scales

    def part_lengths(self, numel):
        return numel, -(-numel // self.spec.arg)
