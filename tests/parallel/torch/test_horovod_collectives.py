"""Horovod's collectives from PyTorch under the current launcher."""
import horovod.torch
import torch

from horovod_cases import HorovodCollectiveCases

from hvdkit import topology


class TestTorchHorovodCollectives(HorovodCollectiveCases):
    hvd = horovod.torch

    @classmethod
    def setup_class(cls):
        topology.init(cls.hvd)  # Horovod's init, plus the process sets other test files need

    def to_tensor(self, array):
        return torch.from_numpy(array)

    def to_numpy(self, tensor):
        return tensor.numpy()
