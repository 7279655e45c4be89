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
"""
import horovod.tensorflow as hvd
import tensorflow as tf

from hvdkit.exchange.options import DEFAULT_FUSION_MB, refuse_horovod_only_arguments
from hvdkit.tensorflow.exchange import GradientExchange, check_settings
from hvdkit.tensorflow.variables import unwrap

__all__ = ["DistributedGradientTape"]

_tensor_exchanges = {}  # (sources key, settings) -> GradientExchange, for sources that are all tensors
_classes = {}  # wrapped tape class -> its distributed subclass (one per class, not one per step)


class _DistributedGradientTape:
    """Mixed in front of the wrapped tape's class (see ``DistributedGradientTape``)."""

    @tf.autograph.experimental.do_not_convert  # plain Python at trace time; AutoGraph would take seconds
    def gradient(self, target, sources, output_gradients=None,
                 unconnected_gradients=tf.UnconnectedGradients.NONE):
        """The wrapped tape's gradients, averaged (or summed) over the ranks through hvdkit's exchange.
        ``tape.finite`` then holds the scalar tf.bool of the exchange (False on every rank when any
        rank's gradients were not finite: with ``nonfinite="skip"`` skip the update then)."""
        grads = super().gradient(target, sources, output_gradients, unconnected_gradients)
        flat_sources = tf.nest.flatten(sources)
        exchange = _exchange_for(flat_sources, self._hvdkit_settings)
        reduced, self.finite = exchange.reduce(tf.nest.flatten(grads))
        self.exchange = exchange
        return tf.nest.pack_sequence_as(grads, reduced)

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


def _tape_class(base):
    cls = _classes.get(base)
    if cls is None:
        cls = _classes[base] = type(base.__name__, (_DistributedGradientTape, base), {"__module__": __name__})
    return cls


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

    Gradients are always exchanged dense (IndexedSlices are densified, so ``sparse_as_dense`` is implied);
    ``device_dense``/``device_sparse`` are accepted and unused (the exchange runs on the CPU kernels).
    """
    refuse_horovod_only_arguments(hvd, "DistributedGradientTape", gradient_predivide_factor, groups, num_groups, process_set)
    if not scale_local_gradients:
        raise ValueError("scale_local_gradients=False is not supported (it concerns Horovod's "
                         "PartialDistributedGradientTape)")
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
    return tape

