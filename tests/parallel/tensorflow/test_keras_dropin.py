"""Horovod's Keras example (examples/tensorflow2/tensorflow2_keras_mnist.py) runs on Keras 3 with
``import hvdkit.tensorflow.keras as hvd`` in place of ``import horovod.tensorflow.keras as hvd``.

The calls below are the example's, in its order, on the bundled digits data
with a smaller network and fewer steps. The one other change is Keras 3's:
``ModelCheckpoint`` files must end in ``.keras`` (the example writes ``.h5``).
"""
import numpy as np
import pytest
import tensorflow as tf

import hvdkit.tensorflow.keras as hvd
from hvdkit.training.data import digits

pytestmark = pytest.mark.timeout(180)


def test_horovods_keras_example_runs_with_one_import_changed(tmp_path):
    hvd.init()
    gpus = tf.config.experimental.list_physical_devices("GPU")
    if gpus:
        tf.config.experimental.set_visible_devices(gpus[hvd.local_rank()], "GPU")

    data = digits(seed=0)
    images, labels = data.x_train[hvd.rank()::hvd.size(), 0], data.y_train[hvd.rank()::hvd.size()]
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.cast(images[..., tf.newaxis], tf.float32), tf.cast(labels, tf.int64)))
    dataset = dataset.repeat().shuffle(1000).batch(32)

    model = tf.keras.Sequential([
        tf.keras.layers.Conv2D(8, [3, 3], activation="relu"),
        tf.keras.layers.MaxPooling2D(pool_size=(2, 2)),
        tf.keras.layers.Dropout(0.25),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(32, activation="relu"),
        tf.keras.layers.Dropout(0.5),
        tf.keras.layers.Dense(10, activation="softmax"),
    ])
    scaled_lr = 0.003 * hvd.size()
    opt = tf.optimizers.Adam(scaled_lr)
    opt = hvd.DistributedOptimizer(opt, backward_passes_per_step=1, average_aggregated_gradients=True)
    model.compile(loss=tf.losses.SparseCategoricalCrossentropy(), optimizer=opt, metrics=["accuracy"],
                  experimental_run_tf_function=False)
    callbacks = [
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),
        hvd.callbacks.MetricAverageCallback(),
        hvd.callbacks.LearningRateWarmupCallback(initial_lr=scaled_lr, warmup_epochs=2, verbose=1),
    ]
    if hvd.rank() == 0:
        callbacks.append(tf.keras.callbacks.ModelCheckpoint(str(tmp_path / "checkpoint-{epoch}.keras")))
    verbose = 1 if hvd.rank() == 0 else 0
    history = model.fit(dataset, steps_per_epoch=60 // hvd.size(), callbacks=callbacks, epochs=4, verbose=verbose)

    logs = history.history
    assert logs["loss"][-1] < 0.7 * logs["loss"][0] and logs["lr"][-1] == pytest.approx(scaled_lr)
    averaged = np.array([logs["loss"], logs["accuracy"]])  # MetricAverageCallback: the same on every rank
    np.testing.assert_array_equal(averaged, hvd.broadcast(averaged, root_rank=0, name="dropin.logs").numpy())
    for i, w in enumerate(model.get_weights()):
        np.testing.assert_array_equal(w, hvd.broadcast(w, root_rank=0, name=f"dropin.w{i}").numpy())
    if hvd.rank() == 0:
        restored = hvd.load_model(tmp_path / "checkpoint-4.keras")
        for a, b in zip(restored.get_weights(), model.get_weights()):
            np.testing.assert_array_equal(a, b)
