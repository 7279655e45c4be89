"""hvdkit.tensorflow.keras.callbacks that need no other rank: the learning-rate schedule's
Horovod semantics on Keras 3, and the errors of the callbacks' arguments."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from hvdkit.tensorflow.keras import callbacks

STEPS = 3  # batches per epoch


class LearningRates(keras.callbacks.Callback):
    """The learning rate each batch ran with: (epoch, batch, lr)."""

    def __init__(self):
        super().__init__()
        self.seen, self.epoch = [], None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.seen.append((self.epoch, batch, float(self.model.optimizer.learning_rate.numpy())))


def fit(callback, epochs, optimizer=None, data=None):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.2), loss="mse", run_eagerly=True)
    rates = LearningRates()
    data = data if data is not None else (np.ones((STEPS * 2, 2), np.float32), np.ones((STEPS * 2, 1), np.float32))
    if isinstance(data, tf.data.Dataset):
        model.fit(data, epochs=epochs, verbose=0, callbacks=[callback, rates])
    else:
        model.fit(*data, batch_size=2, epochs=epochs, verbose=0, callbacks=[callback, rates])
    return rates.seen


def test_staircase_schedule_sets_the_rate_at_each_epoch_inside_its_range():
    seen = fit(callbacks.LearningRateScheduleCallback(1.0, 0.5, start_epoch=1, end_epoch=3), epochs=4)
    by_epoch = {epoch: {round(lr, 6) for e, _, lr in seen if e == epoch} for epoch in range(4)}
    assert by_epoch == {0: {0.2}, 1: {1.0}, 2: {0.5}, 3: {0.5}}  # the optimizer's own rate before start_epoch


def test_smooth_schedule_uses_the_fraction_of_the_epoch():
    seen = fit(callbacks.LearningRateScheduleCallback(0.1, lambda epoch: 1 + epoch, staircase=False), epochs=2)
    for epoch, batch, lr in seen:
        assert lr == pytest.approx(0.1 * (1 + epoch + batch / STEPS), rel=1e-6)


def test_schedule_refuses_an_optimizer_whose_rate_is_a_schedule():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)
    with pytest.raises(ValueError, match="create the optimizer with a float learning_rate"):
        fit(callbacks.LearningRateScheduleCallback(0.1, 0.5), 1, optimizer=keras.optimizers.SGD(schedule))


def test_smooth_schedule_needs_the_number_of_steps():
    unknown = tf.data.Dataset.from_tensor_slices((np.ones((6, 2), np.float32), np.ones((6, 1), np.float32)))
    unknown = unknown.filter(lambda x, y: True).batch(2)  # cardinality unknown to fit()
    with pytest.raises(ValueError, match="pass steps_per_epoch"):
        fit(callbacks.LearningRateWarmupCallback(0.1, warmup_epochs=1), 1, data=unknown)


@pytest.mark.parametrize("make, match", [
    (lambda: callbacks.LearningRateWarmupCallback(0.0), "initial_lr must be a number > 0"),
    (lambda: callbacks.LearningRateWarmupCallback(0.1, warmup_epochs=0), "warmup_epochs must be"),
    (lambda: callbacks.LearningRateScheduleCallback(0.1, "x"), "multiplier must be"),
    (lambda: callbacks.LearningRateScheduleCallback(0.1, 0.5, start_epoch=3, end_epoch=2), "end_epoch must be"),
    (lambda: callbacks.LearningRateScheduleCallback(0.1, 0.5, steps_per_epoch=0), "steps_per_epoch must be"),
    (lambda: callbacks.BroadcastGlobalVariablesCallback("0"), "root_rank must be"),
    (lambda: callbacks.BroadcastGlobalVariablesCallback(0, local_variables=[1.0]), "local_variables must be"),
])
def test_bad_arguments_fail_naming_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()
