"""hvdkit.tensorflow.SyncBatchNormalization on real ranks against one process on the whole batch.

Rank r holds rows [r*B, (r+1)*B) of a global batch every rank can rebuild from a seed. Its training-mode
output, the gradients of the global loss with respect to its inputs, gamma and beta (summed over the ranks,
as the loss is), and the updated moving statistics must equal plain ``keras.layers.BatchNormalization`` on
the concatenated batch, computed in this process. The global loss is the sum over ranks of
``sum(output * probe)`` with a fixed random probe, so a wrong statistic or gradient path moves every number.
"""
import numpy as np
import pytest
import tensorflow as tf

import keras
import hvdkit.tensorflow as hvdkit_tf
import hvdkit.tensorflow.keras as hvdkit_keras

pytestmark = pytest.mark.timeout(120)

RTOL, ATOL = 2e-5, 2e-5  # float32: batch statistics of a few dozen values, E[x²] - E[x]² of O(1) data
ROWS = 3  # per rank
MOMENTUM = 0.8  # far from Keras' 0.99 so the moving statistics move visibly in one step


@pytest.fixture(autouse=True)
def started(hvd):
    hvdkit_tf.init()


def global_batch(size, shape, seed):
    rng = np.random.default_rng(seed)
    x = (1.5 * rng.standard_normal((size * ROWS, *shape)) + 0.5).astype(np.float32)
    probe = rng.standard_normal(x.shape).astype(np.float32)
    return x, probe


def initialise(layer, channels, seed=3):
    """Non-trivial gamma, beta and moving statistics, equal for the synced and the reference layer."""
    rng = np.random.default_rng(seed)
    layer.gamma.assign(rng.uniform(0.5, 1.5, channels).astype(np.float32))
    layer.beta.assign(rng.standard_normal(channels).astype(np.float32))
    layer.moving_mean.assign(rng.standard_normal(channels).astype(np.float32))
    layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels).astype(np.float32))


def forward_backward(layer, x, probe, mask=None):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True, mask=mask)
        loss = tf.reduce_sum(y * probe)
    dx, dgamma, dbeta = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return y, dx, dgamma, dbeta


@pytest.mark.parametrize("shape, axis, masked", [((5,), -1, False), ((4, 3, 3), 1, False), ((6, 4), -1, True)],
                         ids=["dense", "channels_first", "masked_sequence"])
@pytest.mark.parametrize("traced", [False, True])
def test_training_step_equals_one_process_on_the_concatenated_batch(hvd, shape, axis, masked, traced):
    size, rank = hvd.size(), hvd.rank()
    x, probe = global_batch(size, shape, seed=[11, len(shape)])
    mine = slice(rank * ROWS, (rank + 1) * ROWS)
    mask = None
    if masked:  # sequences of varied lengths: padded steps must count on no rank
        lengths = np.random.default_rng(5).integers(1, shape[0] + 1, size * ROWS)
        mask = np.arange(shape[0])[None, :] < lengths[:, None]
    channels = x.shape[axis]

    reference = keras.layers.BatchNormalization(axis=axis, momentum=MOMENTUM)
    reference.build(x.shape)
    initialise(reference, channels)
    ref_y, ref_dx, ref_dgamma, ref_dbeta = (t.numpy() for t in forward_backward(reference, x, probe, mask))

    synced = hvdkit_keras.SyncBatchNormalization(axis=axis, momentum=MOMENTUM)
    synced.build(x[mine].shape)
    initialise(synced, channels)
    step = tf.function(forward_backward) if traced else forward_backward
    y, dx, dgamma, dbeta = (t.numpy() for t in step(synced, x[mine], probe[mine],
                                                       None if mask is None else mask[mine]))

    np.testing.assert_allclose(y, ref_y[mine], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(dx, ref_dx[mine], rtol=RTOL, atol=ATOL)
    for got, want in ((dgamma, ref_dgamma), (dbeta, ref_dbeta)):
        total = hvd.allreduce(tf.constant(got), op=hvd.Sum).numpy()  # the global loss: the ranks' losses summed
        np.testing.assert_allclose(total, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(synced.moving_mean.numpy(), reference.moving_mean.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(synced.moving_variance.numpy(), reference.moving_variance.numpy(),
                               rtol=RTOL, atol=ATOL)
    assert np.abs(ref_dx[mine]).max() > 1e-3 and np.abs(ref_dgamma).max() > 1e-3  # not all zeros
    if size > 1:  # this rank's own statistics would give another result: the check can tell them apart
        alone = keras.layers.BatchNormalization(axis=axis, momentum=MOMENTUM)
        alone.build(x[mine].shape)
        initialise(alone, channels)
        solo_y = alone(x[mine], training=True, mask=None if mask is None else mask[mine]).numpy()
        assert np.abs(solo_y - ref_y[mine]).max() > 100 * ATOL


def test_inference_uses_the_moving_statistics_without_a_collective(hvd):
    x, _ = global_batch(hvd.size(), (5,), seed=1)
    x = x[hvd.rank() * ROWS:(hvd.rank() + 1) * ROWS]  # rank-dependent: a collective would mix the ranks
    synced, plain = hvdkit_tf.SyncBatchNormalization(), keras.layers.BatchNormalization()
    for layer in (synced, plain):
        layer.build(x.shape)
        initialise(layer, 5)
    np.testing.assert_allclose(synced(x, training=False).numpy(), plain(x, training=False).numpy(), rtol=RTOL,
                               atol=ATOL)


def test_the_layer_is_the_same_under_both_modules_and_saves_its_config(hvd):
    assert hvdkit_tf.SyncBatchNormalization is hvdkit_keras.SyncBatchNormalization
    layer = hvdkit_keras.SyncBatchNormalization(axis=1, momentum=MOMENTUM)
    assert layer.name.startswith("sync_batch_normalization")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(clone) is type(layer) and clone.axis == 1 and clone.momentum == MOMENTUM


@pytest.mark.parametrize("kwargs, named", [({"fused": True}, "fused=True"), ({"fused": None}, "fused=None"),
                                           ({"synchronized": True}, "synchronized=True")])
def test_unsupported_arguments_are_refused(hvd, kwargs, named):
    with pytest.raises(ValueError, match=named):
        hvdkit_tf.SyncBatchNormalization(**kwargs)
