"""The Keras 3 shim through real servers: two workers (threads of this process, each its own model and
optimizer) in sync mode == one Keras model trained on the whole batch."""
import threading

import numpy as np
import pytest

from hvdkit.ps import transport
from hvdkit.ps.launch import start_servers
from hvdkit.ps.worker import PSWorker

STEPS, BATCH = 8, 4


def _model_and_data():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(2)])
    rng = np.random.default_rng(1)
    x = rng.standard_normal((STEPS, 2 * BATCH, 5)).astype(np.float32)
    y = rng.standard_normal((STEPS, 2 * BATCH, 2)).astype(np.float32)
    return model, x, y


def _train(model, optimizer, x, y, apply):
    import tensorflow as tf

    for step in range(STEPS):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x[step]) - y[step]))
        apply(tape.gradient(loss, model.trainable_variables))


@pytest.mark.timeout(120)
def test_keras_sync_equals_single_process(tmp_path):
    import keras

    from hvdkit.ps.keras_worker import KerasWorker

    model, x, y = _model_and_data()
    initial = [v.numpy().copy() for v in model.trainable_variables]
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    _train(model, optimizer, x, y, lambda g: optimizer.apply_gradients(zip(g, model.trainable_variables)))
    expected = np.concatenate([v.numpy().reshape(-1) for v in model.trainable_variables])

    group = start_servers(2, "sync", 2, stderr=open(tmp_path / "servers.log", "w"))
    results, errors = {}, []

    def worker(w):
        try:
            m, xs, ys = _model_and_data()
            for v, value in zip(m.trainable_variables, initial):
                v.assign(value)
            opt = keras.optimizers.SGD(0.1, momentum=0.9)
            numel = sum(int(np.prod(v.shape)) for v in m.trainable_variables)
            shim = KerasWorker(m.trainable_variables, opt,
                               PSWorker(numel, "sync", group.addresses, w, key=transport.job_key(group.env)))
            shim.join()
            half = slice(w * BATCH, (w + 1) * BATCH)
            _train(m, opt, xs[:, half], ys[:, half], shim.step)
            results[w] = np.concatenate([v.numpy().reshape(-1) for v in m.trainable_variables])
            shim.leave()
        except Exception as err:  # reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
    finally:
        group.stop()
    assert not errors, errors
    assert not np.allclose(expected, np.concatenate([v.reshape(-1) for v in initial]), atol=1e-3)
    for w in range(2):
        np.testing.assert_allclose(results[w], expected, rtol=1e-5, atol=1e-6)
