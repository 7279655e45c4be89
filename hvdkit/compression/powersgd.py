"""``powersgd:RANK``: rank-RANK approximation of every gradient matrix (Vogels et al., 2019).

As PyTorch's ``powerSGD_hook``: each tensor is viewed as a matrix M
(shape[0] x rest); Q is orthogonalised, P = M Q is summed across ranks and
orthogonalised, then Q = M^T P is summed, and P Q^T replaces M. Q is kept
from step to step (warm start, ``warm_start=1``) and starts from random
values drawn from a seed shared by every rank; error feedback (``ef=1``)
keeps c - (this rank's share of P Q^T). Tensors with fewer than two
dimensions, or that would not shrink by ``min_compression_rate``, are left to
dense buckets (``accepts``); ``start_iter`` (PyTorch's name for hvdkit's
``warmup``) exchanges dense gradients for that many steps first. When the
result is not finite, neither Q nor the residual is updated, so one bad step
does not poison later ones.

One deliberate difference from PyTorch's hook: orthogonalising an all-zero
column (a layer whose gradient is exactly zero, e.g. a zero-initialised
output layer in the first step) gives a unit vector instead of zeros (or
NaN), so Q never collapses to zero and later, non-zero gradients are still
sent (``TensorOps.orthogonalize``).
"""
import functools

from hvdkit.compression import spec
from hvdkit.compression.base import Compressor
from hvdkit.compression.seeds import mix


def matrix_shape(shape):
    rows = shape[0]
    cols = 1
    for d in shape[1:]:
        cols *= d
    return rows, cols


@functools.lru_cache(maxsize=1024)
def factors(layout, rank):
    """The ``_Factors`` of a bucket layout, made once per layout and rank."""
    return _Factors(layout, rank)


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
    options = {"ef": (spec.flag, True), "warm_start": (spec.flag, True),
               "min_compression_rate": (spec.positive_float, 2.0), "seed": (spec.non_negative_int, 0)}
    aliases = {"start_iter": "warmup"}  # PyTorch's PowerSGDState names

    def accepts(self, shape):
        if len(shape) < 2:
            return False
        rows, cols = matrix_shape(shape)
        r = min(self.spec.arg, rows, cols)
        return rows * cols > self.spec.options["min_compression_rate"] * (rows + cols) * r

    def prepare(self, state, like):
        super().prepare(state, like)
        if state.memory is None:
            state.memory = self._random_q(state, like)

    def _random_q(self, state, like):
        """Standard-normal Q factors (orthogonalised when used), the same on every rank."""
        return self.ops.randn(factors(state.layout, self.spec.arg).q_numel,
                              mix(self.spec.options["seed"], state.seed, state.steps), like)

    def compress(self, tensor, state):
        ops, mats = self.ops, factors(state.layout, self.spec.arg)
        c = ops.add_into(self.candidate(state, tensor), tensor, state.residual) if self.ef else tensor
        q = state.memory if self.spec.options["warm_start"] else self._random_q(state, tensor)
        q = ops.concat([ops.flatten(ops.orthogonalize(ops.matrix(q, q_off, cols, r)))
                        for _, _, cols, r, _, q_off in mats.mats])
        p = ops.concat([ops.flatten(ops.matmul(ops.matrix(c, off, rows, cols), ops.matrix(q, q_off, cols, r)))
                        for off, rows, cols, r, _, q_off in mats.mats])
        return (p,), (state, mats, c)

    def next_round(self, reduced, ctx):
        ops = self.ops
        state, factors, c = ctx
        p = ops.concat([ops.flatten(ops.orthogonalize(ops.matrix(reduced[0], p_off, rows, r)))
                        for _, rows, _, r, p_off, _ in factors.mats])
        q = ops.concat([ops.flatten(ops.matmul(ops.matrix(c, off, rows, cols), ops.matrix(p, p_off, rows, r),
                                               transpose_a=True))
                        for off, rows, cols, r, p_off, _ in factors.mats])
        return (q,), (state, factors, c, p)

    def decompress(self, payload, ctx, out=None):
        ops = self.ops
        state, factors, c, p = ctx
        q = payload[0]
        approx = ops.concat([ops.flatten(ops.matmul(ops.matrix(p, p_off, rows, r), ops.matrix(q, q_off, cols, r),
                                                    transpose_b=True))
                             for _, rows, cols, r, p_off, q_off in factors.mats])
        state.memory = q  # kept only if the step's result is finite (the state is an attempt)
        if self.ef:
            state.residual = ops.sub_(c, ops.scale(approx, 1.0 / state.peers))
        return approx
