"""hvdkit.tensorflow.keras.DistributedOptimizer in one process, before any gradient is exchanged:
what it returns, how it saves, what ``model.compile`` changes for it, and its errors."""
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import hvdkit.tensorflow.keras as hvdk
from hvdkit.tensorflow.keras.optimizer import is_distributed


def small_model():
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])


@pytest.mark.parametrize("make", [
    lambda: keras.optimizers.SGD(0.01, momentum=0.5, clipnorm=1.0),
    lambda: keras.optimizers.Adam(0.002, weight_decay=0.01, gradient_accumulation_steps=3),
    lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1), initial_scale=64.0),
], ids=["sgd", "adam", "loss_scale"])
def test_wrapper_is_the_same_class_with_the_same_config(make):
    original = make()
    wrapped = hvdk.DistributedOptimizer(original, compression="fp16")
    assert isinstance(wrapped, type(original)) and type(wrapped).__name__ == type(original).__name__
    assert is_distributed(wrapped) and not is_distributed(original)
    assert wrapped.get_config() == original.get_config()
    assert wrapped.exchange is None  # made on the first apply


def test_built_optimizer_keeps_its_state():
    model = small_model()
    original = keras.optimizers.Adam(0.01)
    original.build(model.trainable_variables)
    for i, v in enumerate(original.variables):
        v.assign(np.full(v.shape, i + 1, v.dtype))
    wrapped = hvdk.DistributedOptimizer(original)
    assert wrapped.built
    for a, b in zip(wrapped.variables, original.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_saves_as_the_plain_optimizer_and_load_model_wraps_it_again(tmp_path):
    model = small_model()
    optimizer = hvdk.DistributedOptimizer(keras.optimizers.SGD(0.03, momentum=0.9))
    model.compile(optimizer=optimizer, loss="mse")
    optimizer.build(model.trainable_variables)
    optimizer.momentums[0].assign(np.ones(optimizer.momentums[0].shape, np.float32))
    config = keras.saving.serialize_keras_object(optimizer)
    plain = keras.saving.deserialize_keras_object(config)
    assert type(plain) is keras.optimizers.SGD and plain.get_config() == optimizer.get_config()

    model.save(tmp_path / "m.keras")
    assert type(keras.models.load_model(tmp_path / "m.keras").optimizer) is keras.optimizers.SGD
    loaded = hvdk.load_model(tmp_path / "m.keras", compression="int8")
    assert is_distributed(loaded.optimizer) and isinstance(loaded.optimizer, keras.optimizers.SGD)
    np.testing.assert_array_equal(loaded.optimizer.momentums[0].numpy(), 1.0)


def test_backward_passes_per_step_is_keras_gradient_accumulation():
    wrapped = hvdk.DistributedOptimizer(keras.optimizers.SGD(0.1), backward_passes_per_step=4,
                                        average_aggregated_gradients=True)
    assert wrapped.gradient_accumulation_steps == 4


@pytest.mark.parametrize("optimizer, kwargs, error, match", [
    ("torch-like", {}, TypeError, "wraps a Keras 3 optimizer"),
    (None, {"compression": "gzip"}, ValueError, "gzip"),
    (None, {"compression": 3}, ValueError, "compression must be"),
    (None, {"nonfinite": "maybe"}, ValueError, "nonfinite must be one of"),
    (None, {"op": "max"}, ValueError, "op must be"),
    (None, {"hierarchical": "yes"}, ValueError, "hierarchical must be"),
    (None, {"fusion_mb": -1}, ValueError, "fusion_mb must be"),
    (None, {"gradient_predivide_factor": 2.0}, ValueError, "gradient_predivide_factor"),
    (None, {"num_groups": 2}, ValueError, "fusion_mb"),
    (None, {"backward_passes_per_step": 0}, ValueError, "backward_passes_per_step must be"),
    (None, {"name": 5}, ValueError, "name must be"),
    ("accumulating", {"backward_passes_per_step": 2}, ValueError, "conflicts with"),
    ("loss_scale", {"backward_passes_per_step": 2}, ValueError, "inner|wraps"),
    ("wrapped", {}, ValueError, "already a hvdkit DistributedOptimizer"),
    ("scaled_wrapped", {}, ValueError, "already a hvdkit DistributedOptimizer"),
])
def test_bad_arguments_fail_naming_the_argument(optimizer, kwargs, error, match):
    optimizer = {
        None: keras.optimizers.SGD(0.1),
        "torch-like": object(),
        "accumulating": keras.optimizers.SGD(0.1, gradient_accumulation_steps=3),
        "loss_scale": keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)),
        "wrapped": hvdk.DistributedOptimizer(keras.optimizers.SGD(0.1)),
        "scaled_wrapped": keras.optimizers.LossScaleOptimizer(hvdk.DistributedOptimizer(keras.optimizers.SGD(0.1))),
    }[optimizer]
    with pytest.raises(error, match=match):
        hvdk.DistributedOptimizer(optimizer, **kwargs)


def test_compile_turns_xla_off_and_accepts_horovods_keras2_argument():
    model = small_model()
    with pytest.warns(UserWarning, match="jit_compile turned off"):
        model.compile(optimizer=hvdk.DistributedOptimizer(keras.optimizers.SGD(0.1)), loss="mse",
                      jit_compile=True, experimental_run_tf_function=False)
    assert model.jit_compile is False
    plain = small_model()  # models with other optimizers are left alone
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
    assert plain.jit_compile is True
    with pytest.raises(TypeError, match="experimental_run_tf_function"):
        plain.compile(optimizer="sgd", loss="mse", experimental_run_tf_function=False)


def test_compile_refuses_loss_scaling_around_the_distributed_optimizer():
    outside = keras.optimizers.LossScaleOptimizer(hvdk.DistributedOptimizer(keras.optimizers.SGD(0.1)))
    with pytest.raises(ValueError, match="LossScaleOptimizer around hvdkit's DistributedOptimizer"):
        small_model().compile(optimizer=outside, loss="mse")
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = small_model()
        with pytest.raises(ValueError, match=r"DistributedOptimizer\(keras.optimizers.LossScaleOptimizer"):
            model.compile(optimizer=hvdk.DistributedOptimizer(keras.optimizers.SGD(0.1)), loss="mse")
        model.compile(optimizer=hvdk.DistributedOptimizer(
            keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))), loss="mse")
        assert is_distributed(model.optimizer)
    finally:
        keras.config.set_dtype_policy("float32")


def test_apply_inside_xla_fails_at_once_saying_what_to_change():
    model = small_model()
    optimizer = hvdk.DistributedOptimizer(keras.optimizers.SGD(0.1))
    grads = [tf.ones(v.shape) for v in model.trainable_variables]
    step = tf.function(lambda: optimizer.apply(grads, model.trainable_variables), jit_compile=True)
    with pytest.raises(RuntimeError, match="jit_compile=False"):
        step()
