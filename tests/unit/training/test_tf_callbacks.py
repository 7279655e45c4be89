"""The Keras loop's callbacks are adapters only: EpochTotalsCallback fills the shared EpochTotals
with what Keras itself reports, and ModelAveraging runs hvdkit.averaging.PeriodicAverager's schedule
on the model's trainable variables, turning the exchange local once the warm-up ends."""
import types

import keras
import numpy as np
import pytest

from hvdkit import averaging
from hvdkit.averaging import schedule
from hvdkit.training import tf_callbacks

SAMPLES, BATCH = 10, 4  # steps of 4, 4 and 2 samples


def fit(callbacks, epochs=1):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((SAMPLES, 3)).astype(np.float32), rng.standard_normal((SAMPLES, 2)).astype(np.float32)
    history = model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks)
    return model, history


def test_epoch_totals_hold_kerass_own_epoch_loss_and_every_steps_samples_and_traffic():
    feeder = tf_callbacks.EpochTotalsCallback(lambda: (5, 20), BATCH)
    feeder.start_epoch(SAMPLES)
    _, history = fit([feeder])
    totals = feeder.totals
    assert (totals.steps, totals.samples, totals.bytes_sent, totals.dense_bytes) == (3, SAMPLES, 15, 60)
    assert totals.seconds > 0
    assert totals.loss_sum / totals.steps == pytest.approx(history.history["loss"][0], rel=1e-6)
    assert history.history["loss"][0] > 0
    feeder.start_epoch(SAMPLES)
    assert feeder.totals.steps == 0  # a fresh EpochTotals per epoch


def test_model_averaging_follows_the_periodic_averagers_schedule(monkeypatch):
    averager = averaging.PeriodicAverager(period=2, warmup_steps=1)
    calls = []  # (the step that averaged, scope, the variables averaged)
    monkeypatch.setattr(schedule, "average_parameters", lambda parameters, scope, hvd, topology: calls.append(
        (averager.steps, scope, [id(p) for p in parameters])))
    exchange = types.SimpleNamespace(local=False)
    callback = tf_callbacks.ModelAveraging(averager, types.SimpleNamespace(build_exchange=lambda: exchange))
    locality = []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            locality.append(exchange.local)

    model, _ = fit([callback, Watch()], epochs=2)  # 6 steps: 1 synchronous, then 5 local
    variables = [id(v) for v in model.trainable_variables]
    assert calls == [(3, "world", variables), (5, "world", variables)]  # every 2nd local step
    assert locality == [True] * 6  # the 1-step warm-up ended with the first step
    assert averager.state_dict() == {"steps": 6, "schedule": [[2, "world"]], "warmup_steps": 1}


def test_without_a_warm_up_the_optimizer_is_never_asked_for_an_exchange():
    averager = averaging.PeriodicAverager(period=100)
    tf_callbacks.ModelAveraging(averager, optimizer=None).follow_phase()  # plain SGD has no exchange
    assert averager.steps == 0
