"""Horovod's collectives from TensorFlow under the current launcher."""
import horovod.tensorflow
import tensorflow as tf

from horovod_cases import HorovodCollectiveCases

from hvdkit import topology


class TestTensorFlowHorovodCollectives(HorovodCollectiveCases):
    hvd = horovod.tensorflow

    @classmethod
    def setup_class(cls):
        topology.init(cls.hvd)  # Horovod's init, plus the process sets other test files need

    def to_tensor(self, array):
        return tf.constant(array)

    def to_numpy(self, tensor):
        return tensor.numpy()
