"""``DistributedOptimizer`` for Keras 3: gradients averaged over all ranks once per real update.

Like ``horovod.tensorflow.keras.DistributedOptimizer`` it returns an instance of
a dynamic subclass of the wrapped optimizer's class, rebuilt from its config
(and its variables, when it was already built). The subclass carries the base
class's name and module, so ``isinstance``, ``get_config`` and saved models see
the plain optimizer; ``load_model`` wraps it again.

Where the exchange happens depends on the class:

* classes that use Keras's own update path (every built-in optimizer):
  ``_clip_gradients``, which ``BaseOptimizer._backend_apply_gradients`` calls
  once per real update, after unscaling and gradient accumulation and before
  clipping, weight decay and the update. So clipping sees averaged gradients
  and accumulation micro-steps send nothing;
* classes with their own ``apply`` or ``_backend_apply_gradients``
  (``LossScaleOptimizer``, ``MultiOptimizer``, user subclasses): the start of
  ``apply``, on every call. ``LossScaleOptimizer`` then checks the *averaged*
  gradients for overflow, so every rank takes the same decision.

The ``hvdkit.tensorflow.exchange.GradientExchange`` is created on the first
apply, for the variables the optimizer was built on, and runs as one
``tf.py_function`` inside the compiled train step. XLA cannot compile that, so
``model.compile`` turns ``jit_compile`` off for models using this optimizer
(``hvdkit.tensorflow.keras.compile_hook``), and an apply traced under XLA
anyway fails at once with a ``RuntimeError`` that says what to change.

Non-finite policy ``"skip"``: when the averaged gradients are not finite (the
same verdict on every rank), weight decay and the update are skipped; the
step counter still advances and accumulators are reset, on every rank alike.
"""
import horovod.tensorflow as hvd
import keras
import tensorflow as tf
from keras.src.optimizers.base_optimizer import BaseOptimizer

from hvdkit.compression.dgc import OptimizerMomentum
from hvdkit.exchange.options import DEFAULT_FUSION_MB, refuse_horovod_only_arguments
from hvdkit.tensorflow.exchange import GradientExchange, check_settings, refuse_xla
from hvdkit.tensorflow.variables import label

__all__ = ["DistributedOptimizer", "DEFAULT_FUSION_MB", "is_distributed"]


class _ExchangeState:
    """The per-optimizer bookkeeping, kept out of Keras's variable tracking."""

    __slots__ = ("settings", "exchange", "variables", "positions", "applying", "finite")

    def __init__(self, settings):
        self.settings = settings  # dict of GradientExchange arguments plus "passes" (see DistributedOptimizer)
        self.exchange = None  # the GradientExchange, created on the first apply
        self.variables = None  # the exchange's variables (the optimizer's, minus overwrite-with-gradient ones)
        self.positions = None  # variable key -> index in ``variables``
        self.applying = None  # update path only: the variables of the apply being traced or run
        self.finite = None  # policy "skip": scalar bool of the current step, else None


class _DistributedOptimizerBase:
    """Shared by both mixins: the lazily created exchange and the gated update."""

    def _hvdkit_setup(self, settings):
        self._hvdkit = _ExchangeState(settings)

    @property
    def exchange(self):
        """The ``GradientExchange`` (None before the first apply): ``.last_step_stats``, ``.buckets``, ..."""
        return self._hvdkit.exchange

    def build_exchange(self):
        """The ``GradientExchange``, made now if the first apply has not made it.

        Collective (its cross-rank check runs here), on a built optimizer. For
        restoring exchange state (error-feedback residuals) before the first
        step: ``optimizer.build_exchange().load_state_dict(state)``."""
        state = self._hvdkit
        if state.exchange is None:
            state.variables = [v for v in self._trainable_variables if not self._overwrite_variable_with_gradient(v)]
            state.positions = {self._var_key(v): i for i, v in enumerate(state.variables)}
            kwargs = {k: v for k, v in state.settings.items() if k != "passes"}
            kwargs["nonfinite"] = exchange_policy(self)
            exchange = GradientExchange(state.variables, **kwargs)
            _move_momentum(self, exchange)
            state.exchange = exchange
        return state.exchange

    def _hvdkit_reduce(self, grads, variables):
        """``grads`` (aligned with ``variables``) averaged over all ranks; sets ``finite`` under "skip".
        Gradients of variables outside the exchange (overwrite-with-gradient ones) stay local."""
        _refuse_xla()
        exchange = self.build_exchange()
        state = self._hvdkit
        full = [None] * len(state.variables)
        slots = []
        for g, v in zip(grads, variables):
            slot = state.positions.get(self._var_key(v))
            if slot is None and not self._overwrite_variable_with_gradient(v):
                raise ValueError(f"hvdkit DistributedOptimizer: variable {label(v)!r} is not among the "
                                 f"{len(state.variables)} variables the optimizer was built on")
            if slot is not None and g is not None:
                full[slot] = g
            slots.append(slot)
        scale = self.dynamic_scale if isinstance(self, keras.optimizers.LossScaleOptimizer) else None
        reduced, finite = exchange.reduce(full, scale)
        passes = state.settings["passes"]
        out = []
        for g, slot in zip(grads, slots):
            if g is None or slot is None:
                out.append(g)
            else:
                out.append(reduced[slot] * passes if passes != 1 else reduced[slot])
        state.finite = finite if exchange_policy(self) == "skip" else None
        return out

    def _hvdkit_if_finite(self, fn, *args):
        """Run ``fn(*args)`` unless this step's averaged gradients were found non-finite (policy "skip")."""
        finite = self._hvdkit.finite
        if finite is None:
            return fn(*args)
        if tf.executing_eagerly():
            if bool(finite):
                fn(*args)
            return None

        def run():
            fn(*args)

        tf.cond(finite, run, lambda: None)
        return None


class _UpdatePathExchange(_DistributedOptimizerBase):
    """For classes on Keras's own update path: exchange in ``_clip_gradients``, once per real update."""

    def _backend_apply_gradients(self, grads, trainable_variables):
        state = self._hvdkit
        state.applying = list(trainable_variables)
        try:
            return super()._backend_apply_gradients(grads, trainable_variables)
        finally:
            state.applying, state.finite = None, None

    def _clip_gradients(self, grads):
        if self._hvdkit.applying is not None:
            grads = self._hvdkit_reduce(grads, self._hvdkit.applying)
        return super()._clip_gradients(grads)

    def _apply_weight_decay(self, variables):
        return self._hvdkit_if_finite(super()._apply_weight_decay, variables)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        return self._hvdkit_if_finite(super()._backend_update_step, grads, trainable_variables, learning_rate)


class _ApplyExchange(_DistributedOptimizerBase):
    """For classes with their own ``apply``: exchange first, on every call, then hand on."""

    def apply(self, grads, trainable_variables=None):
        if not self.built:
            if trainable_variables is None:
                raise ValueError("hvdkit DistributedOptimizer: the first apply() needs trainable_variables "
                                 "(or build the optimizer first)")
            with keras.name_scope(self.name, caller=self):
                self.build(list(trainable_variables))
            self.built = True
        variables = self._trainable_variables if trainable_variables is None else list(trainable_variables)
        grads = self._hvdkit_reduce(list(grads), variables)
        try:
            return self._hvdkit_if_finite(super().apply, grads, trainable_variables)
        finally:
            self._hvdkit.finite = None


def _move_momentum(optimizer, exchange):
    """DGC's momentum correction (``hvdkit.compression.dgc``): when the exchange takes the SGD's momentum
    (a LossScaleOptimizer's inner SGD's), that SGD runs with momentum 0 from now on. Keras's weight decay
    is decoupled (applied to the variables, outside the momentum) and stays where it is."""
    sgd = optimizer.inner_optimizer if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else optimizer
    kind = f"{type(sgd).__module__.split('.')[0]}.{type(sgd).__name__}"
    if isinstance(sgd, keras.optimizers.SGD):
        described = OptimizerMomentum("keras.optimizers.SGD", float(sgd.momentum), bool(sgd.nesterov))
    else:
        described = OptimizerMomentum(kind, why_not=f"the wrapped optimizer is {kind}, not keras.optimizers.SGD")
    if exchange.take_momentum(described):
        sgd.momentum, sgd.nesterov = 0.0, False


def _refuse_xla():
    refuse_xla("hvdkit DistributedOptimizer", "Compile the model with jit_compile=False (model.compile does this "
               "by itself for this optimizer unless jit_compile was set on the model afterwards), or apply the "
               "gradients outside tf.function(jit_compile=True).")


def is_distributed(optimizer):
    """Whether ``optimizer`` is a hvdkit DistributedOptimizer."""
    return isinstance(optimizer, _DistributedOptimizerBase)


def wraps_distributed(optimizer):
    """Whether ``optimizer`` is a LossScaleOptimizer around a DistributedOptimizer: the order that checks
    each rank's own gradients for overflow before averaging, so ranks can disagree and hang."""
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer) and is_distributed(optimizer.inner_optimizer)


def exchange_policy(optimizer):
    """The non-finite policy the exchange applies: a LossScaleOptimizer skips overflowing steps itself
    (it checks the averaged gradients), so its exchange hands non-finite values on instead."""
    policy = optimizer._hvdkit.settings["nonfinite"]
    if policy == "skip" and isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return "pass"
    return policy


def _own_apply(cls):
    """Whether ``cls`` replaces Keras's apply path (so ``_clip_gradients`` may not be reached)."""
    return (cls.apply is not BaseOptimizer.apply
            or cls._backend_apply_gradients is not BaseOptimizer._backend_apply_gradients)


def _check_arguments(optimizer, name, compression, gradient_predivide_factor, op, backward_passes_per_step,
                     groups, num_groups, process_set, hierarchical, fusion_mb, nonfinite):
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(f"DistributedOptimizer wraps a Keras 3 optimizer (keras.optimizers.Optimizer), "
                        f"got {type(optimizer).__module__}.{type(optimizer).__qualname__}")
    if is_distributed(optimizer) or wraps_distributed(optimizer):
        raise ValueError("this optimizer is already a hvdkit DistributedOptimizer (or wraps one); wrap the plain "
                         "optimizer once, as DistributedOptimizer(keras.optimizers.LossScaleOptimizer(optimizer)) "
                         "for loss scaling")
    if name is not None and not isinstance(name, str):
        raise ValueError(f"name must be a string or None, got {name!r}")
    refuse_horovod_only_arguments(hvd, "DistributedOptimizer", gradient_predivide_factor, groups, num_groups, process_set)
    if isinstance(backward_passes_per_step, bool) or not isinstance(backward_passes_per_step, int) \
            or backward_passes_per_step < 1:
        raise ValueError(f"backward_passes_per_step must be an integer >= 1, got {backward_passes_per_step!r}")
    if backward_passes_per_step > 1:
        accumulation = optimizer.gradient_accumulation_steps
        if _own_apply(type(optimizer)):
            raise ValueError(f"backward_passes_per_step={backward_passes_per_step} needs Keras's gradient "
                             f"accumulation, which {type(optimizer).__name__} does not run itself; set "
                             f"gradient_accumulation_steps on the optimizer it wraps instead")
        if accumulation and accumulation != backward_passes_per_step:
            raise ValueError(f"backward_passes_per_step={backward_passes_per_step} conflicts with the optimizer's "
                             f"gradient_accumulation_steps={accumulation}; set one of them")
    check_settings(compression, hierarchical, fusion_mb, op, nonfinite)


def _subclass(base):
    mixin = _ApplyExchange if _own_apply(base) else _UpdatePathExchange
    return type(base.__name__, (mixin, base), {"__module__": base.__module__, "__qualname__": base.__qualname__})


def _copy_state(source, target):
    """Build ``target`` on ``source``'s variables and copy its slots (moments, iterations, ...)."""
    with keras.name_scope(target.name, caller=target):
        target.build(list(source._trainable_variables))
    sources, targets = source.variables, target.variables
    if len(sources) != len(targets):
        raise ValueError(f"cannot rebuild the built {type(source).__name__}: it has {len(sources)} variables, "
                         f"a rebuilt copy has {len(targets)}; wrap the optimizer before training with it")
    for src, dst in zip(sources, targets):
        dst.assign(src)


def DistributedOptimizer(optimizer, name=None, device_dense="", device_sparse="", compression="none",
                         sparse_as_dense=False, gradient_predivide_factor=1.0, op=hvd.Average,
                         backward_passes_per_step=1, average_aggregated_gradients=False, num_groups=0, groups=None,
                         process_set=hvd.global_process_set, scale_local_gradients=True, *, hierarchical=False,
                         fusion_mb=DEFAULT_FUSION_MB, nonfinite="skip"):
    """Wrap a Keras 3 ``optimizer`` so that it applies gradients averaged (or summed) over all ranks.

    The arguments are ``horovod.tensorflow.keras.DistributedOptimizer``'s, in its order; hvdkit adds
    (keyword only) ``hierarchical`` (True, False or "auto"), ``fusion_mb`` (bucket cap in MiB) and
    ``nonfinite`` ("skip", "raise" or "pass"). ``compression`` is a spec string (``"none"``, ``"fp16"``,
    ``"topk:0.01,warmup=100"``, ...), a ``hvdkit.compression.Spec`` or ``hvd.Compression.<name>``.
    ``name`` prefixes the exchange's Horovod op names (the Keras optimizer keeps its own name).

    ``backward_passes_per_step=N`` turns on Keras's ``gradient_accumulation_steps=N`` (one exchange per N
    batches); the accumulated gradients are averaged over the N batches when
    ``average_aggregated_gradients`` is True and summed (Horovod's default) when it is False.
    ``device_dense``, ``device_sparse``, ``sparse_as_dense`` and ``scale_local_gradients`` are accepted
    for compatibility: the exchange places its work itself and always sends dense gradients.
    ``gradient_predivide_factor`` must be 1.0 and ``groups`` unset (use ``fusion_mb``).
    """
    _check_arguments(optimizer, name, compression, gradient_predivide_factor, op, backward_passes_per_step,
                     groups, num_groups, process_set, hierarchical, fusion_mb, nonfinite)
    config = optimizer.get_config()
    passes = 1
    if backward_passes_per_step > 1:
        config["gradient_accumulation_steps"] = backward_passes_per_step
        passes = 1 if average_aggregated_gradients else backward_passes_per_step
    wrapped = _subclass(type(optimizer)).from_config(config)
    if optimizer.built:
        _copy_state(optimizer, wrapped)
    wrapped._hvdkit_setup({"compression": compression, "hierarchical": hierarchical, "fusion_mb": fusion_mb,
                           "op": op, "nonfinite": nonfinite, "name": name, "passes": passes})
    from hvdkit.tensorflow.keras import compile_hook  # imports this module: not at the top

    compile_hook.install()
    return wrapped
