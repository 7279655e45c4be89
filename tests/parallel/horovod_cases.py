"""Horovod's own collectives, checked the same way from every framework.

Each framework's test file subclasses ``HorovodCollectiveCases`` with its
Horovod module and tensor conversions; every rank checks the result against
what it computes alone from every rank's inputs.
"""
from abc import ABC, abstractmethod

import numpy as np
import pytest

from conftest import rank_tensor_values


class HorovodCollectiveCases(ABC):
    """Subclasses set ``hvd`` (an initialised horovod.<framework> module)."""

    hvd = None

    @abstractmethod
    def to_tensor(self, array):
        """numpy array -> framework tensor."""

    @abstractmethod
    def to_numpy(self, tensor):
        """framework tensor -> numpy array."""

    def all_inputs(self, shape, dtype):
        return [rank_tensor_values(r, shape, dtype) for r in range(self.hvd.size())]

    def test_controller_matches_launcher(self, expected_controller):
        assert self.hvd.is_initialized()
        if expected_controller == "gloo":
            assert self.hvd.gloo_enabled() and not self.hvd.mpi_enabled()
        else:
            assert self.hvd.mpi_enabled()

    @pytest.mark.parametrize("dtype", ["float32", "float64", "int32"])
    def test_allreduce_sum_matches_local_sum(self, dtype):
        inputs = self.all_inputs((37, 5), dtype)
        result = self.hvd.allreduce(self.to_tensor(inputs[self.hvd.rank()]), op=self.hvd.Sum, name=f"sum.{dtype}")
        expected = np.sum(np.stack(inputs).astype(np.float64), axis=0)
        np.testing.assert_allclose(self.to_numpy(result).astype(np.float64), expected, rtol=1e-5, atol=1e-5)

    def test_allreduce_average_matches_local_mean(self):
        inputs = self.all_inputs((1001,), "float32")
        result = self.hvd.allreduce(self.to_tensor(inputs[self.hvd.rank()]), op=self.hvd.Average, name="avg")
        np.testing.assert_allclose(self.to_numpy(result), np.mean(np.stack(inputs), axis=0), rtol=1e-5, atol=1e-6)

    def test_broadcast_from_last_rank(self):
        root = self.hvd.size() - 1
        mine = self.to_tensor(rank_tensor_values(self.hvd.rank(), (3, 4), "float32"))
        result = self.hvd.broadcast(mine, root_rank=root, name="bcast")
        np.testing.assert_array_equal(self.to_numpy(result), rank_tensor_values(root, (3, 4), "float32"))

    def test_allgather_uneven_first_dimension(self):
        rank = self.hvd.rank()
        result = self.hvd.allgather(self.to_tensor(rank_tensor_values(rank, (rank + 1, 3), "float32")), name="gather")
        expected = np.concatenate([rank_tensor_values(r, (r + 1, 3), "float32") for r in range(self.hvd.size())])
        np.testing.assert_array_equal(self.to_numpy(result), expected)
