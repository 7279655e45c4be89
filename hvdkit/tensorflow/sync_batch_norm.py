"""``SyncBatchNormalization``: Keras 3 batch normalization whose batch statistics span every rank.

Horovod's layer subclasses Keras 2's ``BatchNormalization`` (its ``fused``
argument and ``_moments(inputs, reduction_axes, keep_dims)`` hook), which
Keras 3 no longer has. This one overrides Keras 3's ``_moments(inputs, mask)``:
each rank sums its inputs, their squares and its count over the reduction
axes, one Horovod allreduce (Sum) adds them up, and the mean and (biased)
variance of the whole global batch follow. Horovod's allreduce has a gradient
(the allreduce of the incoming gradients), so the gradients are those of the
global batch too: with small per-rank batches the layer normalizes, trains and
updates its moving statistics as one process would on the concatenated batch.
Inference (``training=False``) uses the moving statistics, with no collective.
"""
import horovod.tensorflow as hvd
import keras
import tensorflow as tf

__all__ = ["SyncBatchNormalization"]


@keras.saving.register_keras_serializable(package="hvdkit")
class SyncBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` with training-mode statistics over all Horovod ranks.

    Every rank must call the layer in training mode at the same step (the statistics are a collective).
    ``fused`` is Horovod's argument: only ``False`` is valid (there is no fused kernel to synchronize), and
    ``synchronized=True`` (Keras' tf.distribute synchronization) is refused: Horovod does the synchronizing.
    """

    def __init__(self, fused=False, **kwargs):
        if fused is not False:
            raise ValueError(f"SyncBatchNormalization: fused={fused!r} is not supported (a fused kernel computes "
                             f"per-rank statistics); use fused=False")
        if kwargs.get("synchronized"):
            raise ValueError("SyncBatchNormalization: synchronized=True is Keras' tf.distribute synchronization; "
                             "this layer synchronizes over Horovod ranks itself: leave synchronized=False")
        super().__init__(**kwargs)

    def _moments(self, inputs, mask):
        """(mean, variance) of the global batch, each shaped like the layer's weights."""
        axes = list(self._reduction_axes)
        if mask is None:
            weights = None
            count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(inputs), axes)), inputs.dtype)[None]
            total = tf.reduce_sum(inputs, axes)
            squares = tf.reduce_sum(tf.square(inputs), axes)
        else:
            weights = tf.cast(tf.broadcast_to(tf.expand_dims(mask, -1), tf.shape(inputs)), inputs.dtype)
            count = tf.reduce_sum(weights, axes)
            total = tf.reduce_sum(inputs * weights, axes)
            squares = tf.reduce_sum(tf.square(inputs) * weights, axes)
        channels = tf.shape(total)[0]
        summed = hvd.allreduce(tf.concat([total, squares, count], 0), op=hvd.Sum)  # one collective per call
        total, squares, count = summed[:channels], summed[channels:2 * channels], summed[2 * channels:]
        if weights is not None:
            count = count + keras.backend.epsilon()  # Keras' guard for an all-masked batch
        mean = total / count
        variance = tf.nn.relu(squares / count - tf.square(mean))  # rounding may leave E[x²] - E[x]² below 0
        return mean, variance
