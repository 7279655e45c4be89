"""``GradientExchange``: one set of variables' gradients averaged through hvdkit's Reducer.

The bucket plan, compression, error feedback, hierarchy, non-finite policy
and cross-rank model check are the torch front end's (``hvdkit.exchange.reducer``);
this file only turns TensorFlow gradients into the Reducer's inputs and back.
Horovod's TensorFlow collectives have no asynchronous form, so buckets are
exchanged one after another once every gradient is known (no overlap with
backward, which TensorFlow computes in one call anyway).

Eagerly the Reducer runs directly. Inside a ``tf.function`` it runs eagerly
within one ``tf.py_function`` whose outputs get the variables' static shapes,
so the traced step keeps its shapes and Horovod sees plain eager tensors.
That op cannot be XLA-compiled: callers keep it out of ``jit_compile``.
"""
import itertools

import horovod.tensorflow as hvd
import tensorflow as tf
from tensorflow.python.ops import control_flow_util  # the one place TF says whether a graph is XLA-compiled

from hvdkit.compression.horovod_names import resolve
from hvdkit.compression.tf_ops import TFOps
from hvdkit.exchange.engine import HorovodTransport
from hvdkit.exchange.options import DEFAULT_FUSION_MB, check_exchange_arguments, links
from hvdkit.exchange.reducer import Reducer, ReducerView
from hvdkit.tensorflow.variables import label, tensor_infos

__all__ = ["GradientExchange", "check_settings", "refuse_xla"]

_ids = itertools.count()  # numbers exchanges in creation order (the same on every rank) for op names


class GradientExchange(ReducerView):
    """One set of variables' gradient exchange through hvdkit's Reducer (shared with torch).

    ``variables``: tf.Variables or Keras 3 variables (or watched tensors), in an order equal on every rank.
    ``compression``: a spec string (``"topk:0.01"``, ...), a Spec, or ``hvd.Compression.none/fp16``.
    ``hierarchical``: True, False or "auto" (see ``hvdkit.exchange.options.hierarchical_links``).
    ``op``: ``horovod.tensorflow.Average`` (default) or ``Sum``.
    ``nonfinite``: "skip" (``finite`` is False on every rank; the caller skips the update), "raise"
    (FloatingPointError on every rank; inside a tf.function a ``tf.errors.OpError`` carrying it), "pass".
    Every rank compares its variables (shapes, dtypes, order) and settings with the others' when the
    exchange is made, and all raise the same ValueError if they differ.
    """

    @tf.autograph.experimental.do_not_convert  # made while a step is traced, maybe: keep it plain Python
    def __init__(self, variables, compression="none", hierarchical=False, fusion_mb=DEFAULT_FUSION_MB, op=None,
                 nonfinite="skip", name=None):
        spec, op = check_settings(compression, hierarchical, fusion_mb, op, nonfinite)
        self.variables = list(variables)  # what the gradients belong to, in exchange order
        if not self.variables:
            raise ValueError("GradientExchange: no variables to exchange gradients for")
        infos = tensor_infos(self.variables)
        self._shapes = [tf.TensorShape(i.shape) for i in infos]  # static output shapes inside tf.function
        self._dtypes = [tf.as_dtype(i.dtype) for i in infos]
        self.op = op
        self._reducer = Reducer(infos, spec, TFOps(), HorovodTransport(hvd),
                                _links(hierarchical), fusion_bytes=int(fusion_mb * 2**20),
                                average=op == hvd.Average, nonfinite=nonfinite,
                                name=name or f"tf{next(_ids)}")
        # True: reduce() leaves the gradients as they are, with no collective (post-local SGD after its
        # warm-up). Every rank must switch at the same step.
        self._local = False
        with tf.init_scope():  # eager even while a tf.function is traced: the check runs once, here
            self._check_ranks()

    @property
    def local(self):
        return self._local

    @local.setter
    def local(self, value):
        if value and self._reducer.momentum:
            raise ValueError(f"compression {str(self._reducer.spec)!r} took over SGD's momentum (DGC's momentum "
                             f"correction), which local steps would lose; add mc=0 to the compression spec to "
                             f"use post-local SGD")
        self._local = bool(value)

    def world_changed(self, keep_residuals):
        """Exchange over the ranks Horovod has now, after an elastic reset (``Reducer.for_world``; flat: the
        restart drops hvdkit's node process sets). A traced train step calls this object, which reads its
        Reducer when it runs, so nothing is retraced."""
        self._reducer = self._reducer.for_world(_links(False), keep_residuals, average=self.op == hvd.Average)

    def take_momentum(self, optimizer):
        """DGC's momentum correction (``Reducer.take_momentum``): True when the caller must now run its SGD
        with momentum 0. ``optimizer``: a ``hvdkit.compression.dgc.OptimizerMomentum``."""
        return self._reducer.take_momentum(optimizer)

    # --- introspection (compression, buckets, last_step_stats: ReducerView) ------------------
    @property
    def steps(self):
        """Exchanges done (what compression warm-up counts)."""
        return self._reducer.steps

    def state_dict(self):
        """This rank's error-feedback residuals, PowerSGD factors and step count (they differ between ranks)."""
        return self._reducer.state_dict()

    def load_state_dict(self, saved):
        self._reducer.load_state_dict(saved)

    # --- the exchange ----------------------------------------------------------------------
    @tf.autograph.experimental.do_not_convert  # plain Python at trace time; AutoGraph would take seconds
    def reduce(self, grads, loss_scale=None):
        """``grads`` aligned with ``variables`` (tensors, IndexedSlices or None) -> (reduced grads shaped and
        typed like the variables, finite: scalar tf.bool). Eager or inside a tf.function. ``loss_scale``:
        the scale the gradients are multiplied by (a LossScaleOptimizer's), which error feedback follows
        (``Reducer.set_loss_scale``)."""
        grads = list(grads)
        if len(grads) != len(self.variables):
            raise ValueError(f"GradientExchange.reduce: got {len(grads)} gradients for {len(self.variables)} "
                             f"variables")
        dense = [self._dense(i, g) for i, g in enumerate(grads)]
        scale = tf.constant(0.0) if loss_scale is None else tf.cast(tf.convert_to_tensor(loss_scale), tf.float32)
        if tf.executing_eagerly():
            outputs = self._exchange(*dense, scale)
        else:
            refuse_xla()
            outputs = tf.py_function(self._exchange, dense + [scale], Tout=self._dtypes + [tf.bool],
                                     name="hvdkit_gradient_exchange")
            for tensor, shape in zip(outputs, self._shapes + [tf.TensorShape([])]):
                tensor.set_shape(shape)
        return list(outputs[:-1]), outputs[-1]

    def _dense(self, index, grad):
        """A dense gradient of the variable's shape and dtype: zeros for None (the variable took no part in
        this rank's loss, but may have in another's), IndexedSlices densified."""
        shape, dtype = self._shapes[index], self._dtypes[index]
        if grad is None:
            return tf.zeros(shape, dtype)
        grad = tf.convert_to_tensor(grad)  # densifies IndexedSlices
        if grad.dtype != dtype or not grad.shape.is_compatible_with(shape):
            raise ValueError(f"gradient {index} has shape {grad.shape} and dtype {grad.dtype.name}, but its variable "
                             f"({label(self.variables[index])}) has shape {shape} and dtype {dtype.name}")
        return grad

    def _exchange(self, *inputs):
        """The Reducer's step on eager tensors (the gradients, then the loss scale, 0 for none): every bucket
        exchanged, unpacked in variable order."""
        grads, scale = inputs[:-1], inputs[-1]
        if self.local:  # read when the step runs, so a traced step follows the switch too
            return list(grads) + [tf.constant(True)]
        reducer = self._reducer
        if float(scale) > 0:
            reducer.set_loss_scale(scale)
        for bucket in reducer.buckets:
            reducer.launch(bucket.index, [grads[slot.index] for slot in bucket.slots])
        results, finite = reducer.finish(lambda index: [grads[s.index] for s in reducer.buckets[index].slots])
        out = [None] * len(grads)
        for index, tensors in results.items():
            for slot, tensor in zip(reducer.buckets[index].slots, tensors):
                out[slot.index] = tensor  # unpack shapes them like the gradients
        return out + [tf.constant(finite)]

    def _check_ranks(self):
        """The Reducer's model check, with this rank's variable names added to a failure (names in the check
        are positional: Keras' layer paths differ between ranks that built different numbers of layers)."""
        try:
            self._reducer.check_ranks(where="hvdkit.tensorflow")
        except ValueError as err:
            legend = ", ".join(f"{info.name} is {label(v)!r}" for info, v in zip(self._reducer.infos, self.variables))
            raise ValueError(f"{err} (variables on this rank: {legend})") from None


def check_settings(compression, hierarchical, fusion_mb, op, nonfinite):
    """(parsed Spec, op) once every argument is checked: a bad value fails where it is given, naming it."""
    spec = resolve(compression)
    op = hvd.Average if op is None else op
    if op not in (hvd.Average, hvd.Sum):
        raise ValueError(f"op must be hvd.Average or hvd.Sum, got {op!r} (hvdkit's TensorFlow front end has "
                         f"no Adasum)")
    check_exchange_arguments(hierarchical, fusion_mb, nonfinite)
    return spec, op


def refuse_xla(who="hvdkit.tensorflow: the gradient exchange",
               remedy="Compute and exchange the gradients in a function without jit_compile."):
    """XLA cannot compile tf.py_function: say so where the step is traced, not deep inside XLA."""
    if not tf.executing_eagerly() and control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        raise RuntimeError(f"{who} cannot run inside an XLA-compiled function (jit_compile=True): it calls "
                           f"Horovod through tf.py_function, which XLA cannot compile. {remedy}")


def _links(hierarchical):
    return links(hvd, hierarchical, "hvdkit.tensorflow.init()")
