"""``import hvdkit.tensorflow.keras as hvd`` must keep every name a Horovod Keras script uses:
Horovod's own functions stay Horovod's, and the names hvdkit replaces exist."""
import inspect

import horovod.tensorflow.keras as horovod_keras
import horovod.tensorflow.keras.callbacks as horovod_callbacks

import hvdkit.tensorflow.keras as hvdkit_keras

REPLACED = {"init", "Compression", "DistributedOptimizer", "callbacks", "load_model"}
NOT_PROVIDED = {"elastic"}  # Horovod's elastic Keras state relies on Keras 2
CALLBACKS = ["BroadcastGlobalVariablesCallback", "MetricAverageCallback", "LearningRateScheduleCallback",
             "LearningRateWarmupCallback"]


def foreign(value):
    """An import of another library (tf, keras, inspect, ...), not a Horovod name."""
    if inspect.ismodule(value):
        return not value.__name__.startswith("horovod")
    if inspect.isfunction(value) or inspect.isclass(value) or inspect.isbuiltin(value):
        return not (value.__module__ or "").startswith("horovod")
    return False


def horovod_public_names(module):
    """The public names of ``module`` a script may use (not its imports of other libraries or helpers)."""
    return {name for name, value in vars(module).items()
            if not name.startswith("_") and not foreign(value) and name != "is_version_greater_equal_than"}


def test_every_horovod_name_is_horovods_own_or_replaced():
    names = horovod_public_names(horovod_keras)
    assert {"rank", "size", "local_rank", "allreduce", "broadcast", "Average"} <= names
    for name in sorted(names - NOT_PROVIDED):
        assert hasattr(hvdkit_keras, name), name
        if name not in REPLACED:
            assert getattr(hvdkit_keras, name) is getattr(horovod_keras, name), name


def test_replaced_names_are_hvdkits():
    assert callable(hvdkit_keras.init) and callable(hvdkit_keras.load_model)
    assert hasattr(hvdkit_keras.Compression, "fp16") and hasattr(hvdkit_keras.Compression, "none")
    for name in CALLBACKS:
        assert hasattr(horovod_callbacks, name)
        ours = getattr(hvdkit_keras.callbacks, name)
        assert ours is not getattr(horovod_callbacks, name) and ours.__module__.startswith("hvdkit")
    horovod_args = inspect.signature(horovod_keras.DistributedOptimizer).parameters
    ours = list(inspect.signature(hvdkit_keras.DistributedOptimizer).parameters)
    assert ours[:len(horovod_args)] == list(horovod_args)  # Horovod's positional order kept
