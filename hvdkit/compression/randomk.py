"""``randomk:RATIO``: k = ceil(RATIO * n) values at positions drawn from a seed shared by all ranks.

Every rank picks the same positions (seed from the spec, the bucket and the
step), so only the values travel and Horovod's allreduce sums them. ``ef=1``
(default) keeps the values not sent in the residual. Deep Gradient Compression's
recipe (``mc``, ``mask``, ``clip``, ``ramp``) is in ``hvdkit.compression.dgc``.
"""
from hvdkit.compression import dgc, spec
from hvdkit.compression.base import Compressor
from hvdkit.compression.seeds import mix
from hvdkit.compression.topk import count


class RandomK(Compressor):
    name = "randomk"
    summable = True
    argument = spec.Argument("RATIO", spec.ratio)
    options = {"ef": (spec.flag, True), "seed": (spec.non_negative_int, 0), **dgc.SPARSIFIER_OPTIONS}
    aliases = dgc.ALIASES
    # Every value is sent once in 1/RATIO steps on average: small tensors (biases, a classifier's last
    # layer) updated that rarely make training diverge.
    common_defaults = spec.SMALL_TENSORS_DENSE
    decodes_into = True

    def advice(self):
        steps = round(1 / self.spec.arg)
        if steps < 10 or not self.ef:
            return None
        return (f"{self.spec.head}: each value is sent about once in {steps} steps and carried in error feedback "
                f"until then, so a learning rate tuned for dense training may be too large for the tensors it "
                f"compresses (those of {self.spec.options['min_numel']} elements or more); if the loss grows, lower "
                f"the learning rate, or use topk:{self.spec.arg}")

    def compress(self, tensor, state):
        ops = self.ops
        c = ops.add_into(self.candidate(state, tensor), tensor, state.residual) if self.ef else tensor
        seed = mix(self.spec.options["seed"], state.seed, state.steps)
        ratio = dgc.density(self.spec.arg, self.spec.options["ramp"], state.steps)
        indices, values = ops.randomk(c, count(ratio, state.numel), seed)
        if self.ef:
            state.residual = ops.scatter_add(indices, ops.neg(values), c)
        return (values,), (indices, state.numel)

    def decompress(self, payload, ctx, out=None):
        indices, n = ctx
        out = self.ops.zeros(n, payload[0]) if out is None else self.ops.zero_(out)
        return self.ops.scatter_add(indices, payload[0], out)
