"""What ``hvdkit train --framework tensorflow`` puts in a checkpoint and how it comes back through
``tf.train.Checkpoint`` files: weights, batch-norm statistics, optimizer slots and the local-SGD
step count bit for bit (compared with numpy), shared or per rank as the torch loop splits them, and
a checkpoint of another model, flag or framework refused by name."""
import keras
import numpy as np
import pytest

from hvdkit import averaging
from hvdkit.state.checkpoint import CheckpointError
from hvdkit.state.tf_codec import CODEC
from hvdkit.training import config as train_config
from hvdkit.training import tf_state
from hvdkit.training.resume import Position

CONFIG = train_config.TrainConfig(framework="tensorflow", checkpoint="ckpt")


def build(seed, width=3):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(width), keras.layers.BatchNormalization()])
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    model.compile(optimizer=optimizer, loss="mse")
    optimizer.build(model.trainable_variables)
    return model, optimizer


def trained(seed=0):
    model, optimizer = build(seed)
    rng = np.random.default_rng(seed)
    model.fit(rng.standard_normal((16, 4)), rng.standard_normal((16, 3)), batch_size=8, verbose=0)
    return model, optimizer


def through_files(payload):
    return CODEC.loads(CODEC.dumps(payload))


def values(variables):
    return [v.numpy() for v in variables]


def assert_same_bits(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_synchronous_state_round_trips_bit_for_bit_with_weights_and_slots_shared():
    model, optimizer = trained()
    position = Position(epoch=2, global_step=46)
    shared, local = tf_state.capture(CONFIG, model, optimizer, None, position)
    assert set(shared) == {"format", "position", "config", "trainable", "optimizer"}
    assert set(local) == {"non_trainable", "exchange", "averager"}
    other_model, other_optimizer = build(seed=1)
    assert np.any(values(other_model.trainable_variables)[0] != values(model.trainable_variables)[0])
    restored = tf_state.restore(through_files(shared), through_files(local), CONFIG, other_model, other_optimizer,
                                None)
    assert restored == position
    assert_same_bits(values(other_model.weights), values(model.weights))  # batch-norm statistics included
    assert_same_bits(values(other_optimizer.variables), values(optimizer.variables))  # momentum, iterations
    assert any(np.abs(v).sum() > 0 for v in values(optimizer.variables)[2:])  # the momentum was not all zero


def test_local_sgd_keeps_slots_and_the_averagers_step_count_per_rank():
    model, optimizer = trained()
    averager = averaging.PeriodicAverager(period=4, warmup_steps=1)
    for _ in range(3):
        averager.step([])
    shared, local = tf_state.capture(CONFIG, model, optimizer, averager, Position())
    assert "optimizer" not in shared and "optimizer" in local
    resumed = averaging.PeriodicAverager(period=4, warmup_steps=1)
    other_model, other_optimizer = build(seed=1)
    tf_state.restore(through_files(shared), through_files(local), CONFIG, other_model, other_optimizer, resumed)
    assert resumed.steps == 3
    assert_same_bits(values(other_optimizer.variables), values(optimizer.variables))


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 64}, "was saved with --batch-size 32, this run has --batch-size 64"),
    ({"framework": "torch"}, "was written by hvdkit train --framework tensorflow, this run has --framework torch"),
])
def test_a_changed_flag_or_framework_is_refused_by_name(change, message):
    model, optimizer = trained()
    shared, local = tf_state.capture(CONFIG, model, optimizer, None, Position())
    config = train_config.TrainConfig(**{**vars(CONFIG), **change})
    with pytest.raises(CheckpointError, match=f"the checkpoint in 'ckpt' {message}"):
        tf_state.restore(shared, local, config, *build(seed=1), None)


def test_another_model_is_refused_naming_the_variable():
    model, optimizer = trained()
    shared, local = tf_state.capture(CONFIG, model, optimizer, None, Position())
    wider, wider_optimizer = build(seed=1, width=5)
    with pytest.raises(CheckpointError, match=r"the checkpoint in 'ckpt' has shape \(4, 3\) for .*kernel, this "
                                              r"run's is \(4, 5\)"):
        tf_state.restore(through_files(shared), through_files(local), CONFIG, wider, wider_optimizer, None)
