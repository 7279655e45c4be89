"""``DistributedGradientTape``: Horovod's call pattern, through hvdkit's GradientExchange.

Like ``horovod.tensorflow.DistributedGradientTape`` it returns an instance of
a subclass of the wrapped tape's class, sharing its recording, so both
``tape = hvd.DistributedGradientTape(tape)`` after the ``with`` block and
``with hvd.DistributedGradientTape(tf.GradientTape()) as tape:`` work, and
``tape.gradient(target, sources)`` returns averaged gradients — for Keras 3
variables too, where Horovod's fails (``'Variable' object has no attribute
'ref'``).

Scripts wrap a fresh tape every step, while error feedback must outlive it:
the GradientExchange for a list of sources and settings is made on first use
and kept with the variables for later tapes with the same sources and
settings.

Local sources (``register_local_source``, ``PartialDistributedGradientTape``)
are Horovod's model-parallel pattern: their gradients stay this rank's own
(divided by the world size unless ``scale_local_gradients=False``, as
Horovod does), and only the other sources go through the exchange, so ranks
may hold different local variables. They are keyed by the identity of the
tf.Variable behind them, which Keras 3 and TensorFlow variables both have.
"""
import os

import horovod.tensorflow as hvd
import keras
import tensorflow as tf
from tensorflow.python.util import object_identity

from hvdkit.exchange.options import DEFAULT_FUSION_MB, refuse_horovod_only_arguments
from hvdkit.tensorflow.exchange import GradientExchange, check_settings
from hvdkit.tensorflow.variables import unwrap

__all__ = ["DistributedGradientTape", "PartialDistributedGradientTape", "exchanges_on"]

_tensor_exchanges = {}  # (sources key, settings) -> GradientExchange, for sources that are all tensors
_classes = {}  # wrapped tape class -> its distributed subclass (one per class, not one per step)


class _DistributedGradientTape:
    """Mixed in front of the wrapped tape's class (see ``DistributedGradientTape``)."""

    def register_local_source(self, source):
        """Keep ``source``'s gradient on this rank (Horovod's model-parallel pattern): it is not exchanged,
        only scaled by 1/size when ``scale_local_gradients`` (Horovod's default)."""
        self._hvdkit_local[_identity(source)] = source  # the value keeps the object, so its id stays unique

    @tf.autograph.experimental.do_not_convert  # plain Python at trace time; AutoGraph would take seconds
    def gradient(self, target, sources, output_gradients=None,
                 unconnected_gradients=tf.UnconnectedGradients.NONE):
        """The wrapped tape's gradients, averaged (or summed) over the ranks through hvdkit's exchange;
        local sources' gradients are this rank's own. ``tape.finite`` then holds the scalar tf.bool of the
        exchange (False on every rank when any rank's gradients were not finite: with ``nonfinite="skip"``
        skip the update then; True when every source is local)."""
        grads = super().gradient(target, sources, output_gradients, unconnected_gradients)
        flat_sources, flat_grads = tf.nest.flatten(sources), tf.nest.flatten(grads)
        shared = [i for i, s in enumerate(flat_sources) if _identity(s) not in self._hvdkit_local]
        out = list(flat_grads)
        if shared:
            exchange = _exchange_for([flat_sources[i] for i in shared], self._hvdkit_settings)
            reduced, self.finite = exchange.reduce([flat_grads[i] for i in shared])
            self.exchange = exchange
            for i, grad in zip(shared, reduced):
                out[i] = grad
        else:
            self.finite = tf.constant(True)
        if self._hvdkit_scale_local and len(shared) < len(out):
            size = _world_size()
            for i in sorted(set(range(len(out))) - set(shared)):
                out[i] = _divide(out[i], size)
        return tf.nest.pack_sequence_as(grads, out)

    def get_local_and_global_gradients(self, target, sources, output_gradients=None, use_generic_names=False):
        """Horovod's split of ``gradient()``: ([(local source, gradient)], [(other source, gradient)]).
        ``use_generic_names`` is accepted for Horovod's signature (hvdkit names its ops itself)."""
        grads = self.gradient(target, sources, output_gradients)
        pairs = list(zip(tf.nest.flatten(sources), tf.nest.flatten(grads)))
        local = [(s, g) for s, g in pairs if _identity(s) in self._hvdkit_local]
        return local, [(s, g) for s, g in pairs if _identity(s) not in self._hvdkit_local]

    @property
    def last_step_stats(self):
        """``hvdkit.exchange.stats.StepStats`` of the last exchange (None before the first)."""
        return None if self.exchange is None else self.exchange.last_step_stats


def _exchange_for(sources, settings):
    """The GradientExchange for these sources and settings: made once, reused by every later tape. It is
    kept on the first source variable, so it lives exactly as long as the model does."""
    key = (tuple(_source_key(s) for s in sources), settings)
    anchor = next((v for v in map(unwrap, sources) if v is not None), None)
    # tf.Variable's own __setattr__ is bypassed: this is bookkeeping, not part of what it saves.
    cache = _tensor_exchanges if anchor is None else anchor.__dict__.setdefault("_hvdkit_exchanges", {})
    exchange = cache.get(key)
    if exchange is None:
        exchange = cache[key] = GradientExchange(sources, **dict(settings))
    return exchange


def exchanges_on(variables):
    """The GradientExchanges that tapes keep on ``variables`` (distinct, in the order found): what an elastic
    reset must re-cut for the new world."""
    found = []
    for v in map(unwrap, variables):
        for exchange in (v.__dict__.get("_hvdkit_exchanges", {}).values() if v is not None else ()):
            if all(exchange is not e for e in found):
                found.append(exchange)
    return found


def _tape_class(base):
    cls = _classes.get(base)
    if cls is None:
        cls = _classes[base] = type(base.__name__, (_DistributedGradientTape, base), {"__module__": __name__})
    return cls


def _identity(source):
    """A local source's key: the id of the tf.Variable behind a variable (so a Keras 3 variable and its
    ``.value`` are one source), of the tensor itself otherwise. Neither kind is hashable."""
    variable = unwrap(source)
    return id(source if variable is None else variable)


def _world_size():
    """Horovod's divisor for local gradients. Under elastic Horovod it is an op, read when the step runs
    (the world may change after the step was traced), as in Horovod's own tape."""
    if int(os.environ.get("HOROVOD_ELASTIC", 0)):
        return hvd.size_op()
    return hvd.size()


def _divide(grad, size):
    if grad is None:
        return None
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(grad.values / tf.cast(size, grad.values.dtype), grad.indices, grad.dense_shape)
    return grad / tf.cast(size, grad.dtype)


def _source_key(source):
    """Variables by identity (the tf.Variable behind a Keras one); watched tensors by shape and dtype."""
    variable = unwrap(source)
    if variable is not None:
        return "variable", id(variable)
    return "tensor", tuple(source.shape), tf.as_dtype(source.dtype).name


@tf.autograph.experimental.do_not_convert  # plain Python at trace time; AutoGraph would take seconds
def DistributedGradientTape(gradtape, device_dense="", device_sparse="", compression="none", sparse_as_dense=False,
                            op=None, gradient_predivide_factor=1.0, num_groups=0, groups=None, process_set=None,
                            scale_local_gradients=True, *, hierarchical=False, fusion_mb=DEFAULT_FUSION_MB,
                            nonfinite="skip", name=None):
    """Wrap ``gradtape`` so that ``gradient()`` averages gradients across ranks, Horovod's way.

    Horovod's arguments keep their places; hvdkit adds:

    * ``compression``: a spec string (``"none"``, ``"fp16"``, ``"bf16"``, ``"int8"``, ``"topk:0.01"``,
      ``"randomk:0.01"``, ``"onebit"``, ``"powersgd:4"``, with options such as ``warmup=100``, ``ef=1``),
      a ``hvdkit.compression.Spec``, or ``hvd.Compression.none/fp16`` (Horovod's own too);
    * ``hierarchical``: True averages inside each node, exchanges (compressed) between nodes and shares the
      result inside the node; "auto" does so only across real (not emulated) nodes;
    * ``fusion_mb``: bucket size cap in MiB (0: one bucket per variable);
    * ``nonfinite``: "skip" (default: warn; ``tape.finite`` is False on every rank and the caller should
      skip the update), "raise" (FloatingPointError on every rank) or "pass".

    ``tape.register_local_source(v)`` keeps ``v``'s gradient on this rank (divided by the world size unless
    ``scale_local_gradients=False``, as in Horovod). Gradients are always exchanged dense (IndexedSlices are
    densified, so ``sparse_as_dense`` is implied);
    ``device_dense``/``device_sparse`` are accepted and unused (the exchange runs on the CPU kernels).
    """
    refuse_horovod_only_arguments(hvd, "DistributedGradientTape", gradient_predivide_factor, groups, num_groups, process_set)
    if not isinstance(gradtape, tf.GradientTape):
        raise TypeError(f"gradtape must be a tf.GradientTape, got {type(gradtape).__name__}")
    spec, op = check_settings(compression, hierarchical, fusion_mb, op, nonfinite)
    # Hashable, and equal for equal settings: the key of the exchange kept for later tapes.
    settings = (("compression", str(spec)), ("hierarchical", hierarchical), ("fusion_mb", fusion_mb), ("op", op),
                ("nonfinite", nonfinite), ("name", name))
    if isinstance(gradtape, _DistributedGradientTape):
        raise ValueError("gradtape is already a DistributedGradientTape: its gradients would be exchanged twice")
    cls = _tape_class(type(gradtape))
    tape = cls.__new__(cls)
    tape.__dict__.update(gradtape.__dict__)  # the same recording: tf.GradientTape keeps it in _tape
    tape._hvdkit_settings = settings
    tape.exchange = None  # the GradientExchange of the last gradient() call
    tape.finite = None  # its finite flag (scalar tf.bool)
    tape._hvdkit_local = {}  # _identity(source) -> source, for the sources registered as local
    tape._hvdkit_scale_local = bool(scale_local_gradients)  # local gradients divided by the world size
    return tape


@tf.autograph.experimental.do_not_convert  # plain Python at trace time; AutoGraph would take seconds
def PartialDistributedGradientTape(gradtape, device_dense="", device_sparse="", compression="none",
                                   sparse_as_dense=False, op=None, gradient_predivide_factor=1.0, num_groups=0,
                                   groups=None, process_set=None, local_layers=None, scale_local_gradients=True,
                                   **hvdkit_options):
    """``DistributedGradientTape`` whose ``local_layers``' trainable weights stay local (Horovod's API).

    ``local_layers``: None, a Keras layer, or an iterable of Keras layers; their trainable weights are
    registered with ``register_local_source``. Every other argument is ``DistributedGradientTape``'s
    (``hvdkit_options``: ``hierarchical``, ``fusion_mb``, ``nonfinite``, ``name``).
    """
    if local_layers is None:
        local_layers = []
    elif isinstance(local_layers, keras.layers.Layer):
        local_layers = [local_layers]
    else:
        try:
            local_layers = list(local_layers)
        except TypeError:
            raise ValueError(f"local_layers must be a Keras layer or an iterable of Keras layers, got "
                             f"{type(local_layers).__name__}") from None
        wrong = [type(layer).__name__ for layer in local_layers if not isinstance(layer, keras.layers.Layer)]
        if wrong:
            raise ValueError(f"local_layers must hold Keras layers (keras.layers.Layer) only, got {', '.join(wrong)}")
    tape = DistributedGradientTape(gradtape, device_dense, device_sparse, compression, sparse_as_dense, op,
                                   gradient_predivide_factor, num_groups, groups, process_set,
                                   scale_local_gradients, **hvdkit_options)
    for layer in local_layers:
        for variable in layer.trainable_weights:
            tape.register_local_source(variable)
    return tape


def _keras_variable_ref(self):
    """A hashable reference to this Keras variable, like ``tf.Variable.ref()`` (``.deref()`` gives it back)."""
    return object_identity.Reference(self)


def _give_keras_variables_ref():
    """Horovod's TensorFlow scripts and tests key variables by ``v.ref()`` (the hashable handle of
    ``tf.Variable``; the local-source pattern is written with it), which Keras 3 variables lack: they get the
    same method, an identity reference, and nothing else changes. Left alone if Keras ever adds its own."""
    if not hasattr(keras.Variable, "ref"):
        keras.Variable.ref = _keras_variable_ref


_give_keras_variables_ref()

