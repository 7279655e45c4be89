"""``horovod.tensorflow.elastic`` for Keras 3: the Keras state and ``run`` are hvdkit's
(``hvdkit.tensorflow.keras.elastic``: Horovod's ``TensorFlowKerasState`` fails on Keras 3 variables);
every other name is Horovod's own."""
import horovod.tensorflow.elastic as _horovod

from hvdkit import dropin as _dropin
from hvdkit.tensorflow.keras.elastic import KerasState, TensorFlowKerasState, init, run  # noqa: F401

_dropin.export_horovod_names(_horovod, globals())


def __getattr__(name):
    return _dropin.horovod_attribute(_horovod, __name__, name)
