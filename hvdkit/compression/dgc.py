"""Deep Gradient Compression's recipe for the sparsifiers (Lin et al., 2018), as spec options.

Sparsifying with plain error feedback under an SGD optimizer with momentum
accumulates raw gradients and applies momentum to the sparse sum: what a
coordinate carries for many steps arrives late and then takes the whole
momentum. DGC's remedy, here (on hvdkit's tasks what made ``randomk:0.01``
diverge was small tensors, which the sparsifiers now leave dense, and
momentum correction helps only at 500x: ``benchmarks/README.md``, "Fidelity"):

* **momentum correction** (``mc=auto|0|1``): the optimizer's momentum moves
  into the compressor. Each rank keeps its own velocity ``u = m*u + g`` (per
  bucket, in ``BucketState.velocity``), accumulates ``u`` (or ``g + m*u``
  for Nesterov) in the error-feedback residual and sparsifies that; the
  wrapped optimizer then runs with momentum 0. ``0`` (default) leaves the
  momentum in the optimizer: on the small tasks of ``benchmarks/fidelity.py``
  top-k ends closer to dense without it (``benchmarks/README.md``). ``auto``
  turns it on when the wrapped optimizer is SGD with momentum > 0 (and off,
  silently, for any other optimizer); ``1`` refuses any other optimizer. Buckets that
  are not compressed (small tensors, ``warmup=``) get the same momentum,
  dense, so every parameter keeps its momentum;
* **momentum factor masking** (``mask=1``, default): where a coordinate was
  sent, its velocity restarts from zero, so the stale momentum does not push
  it again;
* **local gradient clipping** (``clip=C``, default 0: off): each rank scales
  its bucket's contribution to a norm of at most ``C / sqrt(ranks)`` before
  it enters the velocity, the rank's share of a global threshold ``C`` on the
  averaged gradient's norm;
* **exponential sparsity warm-up** (``ramp=STEPS``): over the first STEPS
  exchanges the kept fraction falls 25 %, 6.25 %, 1.56 %, 0.39 % (a quarter
  of STEPS each, never below the spec's ratio), then the ratio itself.

The velocity lives in the bucket's state, so it is transactional like the
residual (a skipped step leaves it as it was) and saved in checkpoints.
"""
import math

from hvdkit.compression import spec

__all__ = ["SPARSIFIER_OPTIONS", "density", "momentum_plan", "MomentumCorrection", "OptimizerMomentum"]

_RAMP_STAGES = 4  # DGC's warm-up: four stages, each keeping a quarter of the last one's fraction


# The options DGC's recipe adds to top-k and random-k: name -> (parser, default).
SPARSIFIER_OPTIONS = {
    "mc": (spec.auto_flag, "0"),
    "mask": (spec.flag, True),
    "clip": (spec.non_negative_float, 0.0),
    "ramp": (spec.non_negative_int, 0),
}
ALIASES = {"momentum_correction": "mc", "momentum_masking": "mask", "clip_norm": "clip", "sparsity_warmup": "ramp"}


def density(ratio, ramp, step):
    """The fraction of values kept at exchange ``step``: DGC's exponential warm-up over ``ramp`` steps
    (0.25, 0.0625, ... per quarter of it, never below ``ratio``), then ``ratio``."""
    if step >= ramp:
        return ratio
    stage = step * _RAMP_STAGES // ramp
    return max(ratio, 0.25 ** (stage + 1))


class OptimizerMomentum:
    """What a front end tells the compression about the optimizer it wraps."""

    __slots__ = ("kind", "momentum", "nesterov", "why_not")

    def __init__(self, kind, momentum=0.0, nesterov=False, why_not=None):
        self.kind = kind  # the optimizer's class name, for messages
        self.momentum = momentum  # SGD's momentum (0 when none)
        self.nesterov = nesterov
        self.why_not = why_not  # None for SGD with one momentum; else why the momentum cannot move


def momentum_plan(parsed, optimizer, ranks, local_sgd=False):
    """(momentum, nesterov) for the compressor to take over from ``optimizer`` (an OptimizerMomentum),
    or None to leave the optimizer as it is. ``mc=1`` raises ValueError where it cannot apply."""
    choice = parsed.options.get("mc")
    if choice is None or choice == "0" or ranks == 1:
        return None
    forced = choice == "1"
    problem = None
    if not parsed.options.get("ef", True):
        problem = "it accumulates the velocity in the error-feedback residual; drop ef=0"
    elif local_sgd:
        problem = "local SGD steps without an exchange would lose the momentum; use mc=0 with local_sgd"
    elif optimizer.why_not is not None:
        problem = optimizer.why_not
    elif optimizer.momentum <= 0:
        problem = f"the wrapped {optimizer.kind} has momentum {optimizer.momentum!r}; give it momentum > 0"
    if problem is None:
        return optimizer.momentum, optimizer.nesterov
    if forced:
        raise ValueError(f"compression {str(parsed)!r}: momentum correction (mc=1) needs plain SGD with momentum; "
                         f"{problem} (or use mc=auto, which leaves other optimizers alone)")
    return None


class MomentumCorrection:
    """A compressor with the optimizer's momentum applied in front of it (see the module docstring):
    behaves as ``inner`` in every other respect. Wraps the sparsifier and the dense compressor alike."""

    def __init__(self, inner, momentum, nesterov, recipe):
        self.inner = inner
        self.momentum = momentum
        self.nesterov = nesterov
        # ``recipe``: the sparsifier's options; the dense buckets beside it follow the same clip.
        self.mask = bool(recipe.get("mask", False)) and inner.ef
        self.clip = float(recipe.get("clip", 0.0))

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __repr__(self):
        return f"<momentum {self.momentum}{' nesterov' if self.nesterov else ''} {self.inner!r}>"

    def prepare(self, state, like):
        self.inner.prepare(state, like)
        if state.velocity is None:
            state.velocity = self.ops.zeros(state.numel, like)

    def compress(self, tensor, state):
        payload, ctx = self.inner.compress(self._corrected(tensor, state), state)
        self._masked(state)
        return payload, ctx

    def compress_chunks(self, tensor, state, bounds):
        payload, lengths = self.inner.compress_chunks(self._corrected(tensor, state), state, bounds)
        self._masked(state)
        return payload, lengths

    def compress_sum(self, tensor, state):
        """The two-phase server's re-compression of a chunk sum: momentum was applied on the workers."""
        return self.inner.compress_sum(tensor, state)

    def _corrected(self, tensor, state):
        """The new velocity (into the attempt) and what the residual accumulates: written into ``tensor``,
        the exchange's own buffer, since the dense compressor sends it as it is and may reduce it in place."""
        ops = self.ops
        if self.clip:
            tensor = ops.clip_norm(tensor, self.clip / math.sqrt(state.peers))
        state.velocity = ops.momentum(state.velocity, tensor, self.momentum)
        if self.nesterov:
            return ops.add(tensor, ops.scale(state.velocity, self.momentum))
        return ops.copy_into(tensor, state.velocity)

    def _masked(self, state):
        """Momentum factor masking: the velocity restarts where the residual is zero (the values just sent)."""
        if self.mask and state.residual is not None:
            state.velocity = self.ops.zero_where_zero(state.velocity, state.residual)
