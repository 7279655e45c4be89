"""``powersgd:RANK``: rank-RANK approximation of every gradient matrix (Vogels et al., 2019).

As PyTorch's ``powerSGD_hook``: each tensor is viewed as a matrix M
(shape[0] x rest); P = M Q is summed across ranks, orthogonalised, then
Q = M^T P is summed, and P Q^T replaces M. Q is kept from step to step (warm
start, ``warm_start=1``) and starts from a seed shared by every rank; error
feedback (``ef=1``) keeps c - (this rank's share of P Q^T). Tensors with
fewer than two dimensions, or that would not shrink by ``min_rate``, are left
to dense buckets (``accepts``). When the result is not finite, neither Q nor
the residual is updated, so one bad step does not poison later ones.
"""
from hvdkit.compression import spec
from hvdkit.compression.base import Compressor
from hvdkit.compression.seeds import mix


def matrix_shape(shape):
    rows = shape[0]
    cols = 1
    for d in shape[1:]:
        cols *= d
    return rows, cols


class _Factors:
    """Where each matrix of a bucket and its P and Q factors sit in their flat buffers."""

    __slots__ = ("mats",)

    def __init__(self, layout, rank):
        self.mats = []  # (bucket offset, rows, cols, r, P offset, Q offset) per matrix
        p_off = q_off = expected = 0
        for offset, shape in layout:
            rows, cols = matrix_shape(shape)
            if offset != expected:
                raise ValueError(f"powersgd: bucket layout must be contiguous, got a tensor at offset {offset} "
                                 f"where {expected} was expected")
            expected += rows * cols
            r = min(rank, rows, cols)
            self.mats.append((offset, rows, cols, r, p_off, q_off))
            p_off, q_off = p_off + rows * r, q_off + cols * r
        self.mats = tuple(self.mats)

    @property
    def q_numel(self):
        return sum(cols * r for _, _, cols, r, _, _ in self.mats)


class PowerSGD(Compressor):
    name = "powersgd"
    summable = True
    elementwise = False
    rounds = 2
    argument = spec.Argument("RANK", spec.positive_int)
    options = {"ef": (spec.flag, True), "warm_start": (spec.flag, True), "min_rate": (spec.positive_float, 2.0),
               "seed": (spec.non_negative_int, 0)}

    def accepts(self, shape):
        if len(shape) < 2:
            return False
        rows, cols = matrix_shape(shape)
        r = min(self.spec.arg, rows, cols)
        return rows * cols > self.spec.options["min_rate"] * (rows + cols) * r

    def prepare(self, state, like):
        super().prepare(state, like)
        if state.memory is None:
            state.memory = self._fresh_q(state, like)

    def _fresh_q(self, state, like):
        ops, factors = self.ops, _Factors(state.layout, self.spec.arg)
        q = ops.randn(factors.q_numel, mix(self.spec.options["seed"], state.seed, state.steps), like)
        return ops.concat([ops.flatten(ops.orthogonalize(ops.matrix(q, q_off, cols, r)))
                           for _, _, cols, r, _, q_off in factors.mats])

    def compress(self, tensor, state):
        ops, factors = self.ops, _Factors(state.layout, self.spec.arg)
        c = ops.add(tensor, state.residual) if self.ef else tensor
        if self.spec.options["warm_start"]:
            q = ops.concat([ops.flatten(ops.orthogonalize(ops.matrix(state.memory, q_off, cols, r)))
                            for _, _, cols, r, _, q_off in factors.mats])
        else:
            q = self._fresh_q(state, tensor)
        p = ops.concat([ops.flatten(ops.matmul(ops.matrix(c, off, rows, cols), ops.matrix(q, q_off, cols, r)))
                        for off, rows, cols, r, _, q_off in factors.mats])
        return (p,), (state, factors, c)

    def next_round(self, reduced, ctx):
        ops = self.ops
        state, factors, c = ctx
        p = ops.concat([ops.flatten(ops.orthogonalize(ops.matrix(reduced[0], p_off, rows, r)))
                        for _, rows, _, r, p_off, _ in factors.mats])
        q = ops.concat([ops.flatten(ops.matmul(ops.matrix(c, off, rows, cols), ops.matrix(p, p_off, rows, r),
                                               transpose_a=True))
                        for off, rows, cols, r, p_off, _ in factors.mats])
        return (q,), (state, factors, c, p)

    def decompress(self, payload, ctx):
        ops = self.ops
        state, factors, c, p = ctx
        q = payload[0]
        approx = ops.concat([ops.flatten(ops.matmul(ops.matrix(p, p_off, rows, r), ops.matrix(q, q_off, cols, r),
                                                    transpose_b=True))
                             for _, rows, cols, r, p_off, q_off in factors.mats])
        if ops.all_finite(q):
            state.memory = q
            if self.ef:
                state.residual = ops.sub_(c, ops.scale(approx, 1.0 / state.peers))
        return approx
