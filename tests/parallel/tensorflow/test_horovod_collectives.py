"""Horovod's collectives from TensorFlow under the current launcher."""
import horovod.tensorflow
import tensorflow as tf

from horovod_cases import HorovodCollectiveCases


class TestTensorFlowHorovodCollectives(HorovodCollectiveCases):
    hvd = horovod.tensorflow

    @classmethod
    def setup_class(cls):
        cls.hvd.init()

    def to_tensor(self, array):
        return tf.constant(array)

    def to_numpy(self, tensor):
        return tensor.numpy()
