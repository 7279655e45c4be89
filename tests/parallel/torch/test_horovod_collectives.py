"""Horovod's collectives from PyTorch under the current launcher."""
import horovod.torch
import torch

from horovod_cases import HorovodCollectiveCases


class TestTorchHorovodCollectives(HorovodCollectiveCases):
    hvd = horovod.torch

    @classmethod
    def setup_class(cls):
        cls.hvd.init()

    def to_tensor(self, array):
        return torch.from_numpy(array)

    def to_numpy(self, tensor):
        return tensor.numpy()
