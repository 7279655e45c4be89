"""Sparse gradients (``nn.Embedding(sparse=True)``) exchanged sparsely, as Horovod does.

Each rank's rows travel as an allgather of their indices and values
(``horovod.torch.sparse_allreduce_async``), so a step costs what the rows
touched cost, not the whole table; the result is a sparse gradient again
(rows hit by several ranks appear once per rank, and the optimizer adds
them up, as it does for a local sparse gradient). Which parameters are sparse
is seen in the first step and agreed by every rank with the bucket order
(``Reducer.adopt_order``).
"""
import horovod.torch as hvd
import torch

__all__ = ["SparseExchange"]


class SparseExchange:
    """The sparse gradients of one optimizer in flight: launched from the gradient hooks, finished in
    ``synchronize()``."""

    def __init__(self, name, average, process_set):
        self.name = name  # prefix of the Horovod op names
        self.op = hvd.Average if average else hvd.Sum
        self.process_set = process_set
        self.flights = {}  # parameter index -> Horovod's handle (a callable that waits)

    def launch(self, index, parameter):
        """Start the exchange of ``parameter``'s gradient (an empty one if this rank did not use it)."""
        grad = parameter.grad
        if grad is None:
            grad = torch.sparse_coo_tensor(torch.zeros(1, 0, dtype=torch.int64),
                                           parameter.new_zeros((0, *parameter.shape[1:])), parameter.shape)
        elif not grad.is_sparse:
            raise ValueError(f"parameter {index}'s gradient was sparse in the first step but is dense now; "
                             f"a parameter's gradient must stay sparse or dense (or pass sparse_as_dense=True)")
        self.flights[index] = hvd.sparse_allreduce_async(grad.coalesce(), name=f"{self.name}.sparse{index}",
                                                         op=self.op, process_set=self.process_set)

    def finish(self, parameters):
        """Wait for every exchange and set each parameter's ``.grad`` to the reduced sparse gradient."""
        flights, self.flights = self.flights, {}
        for index, handle in flights.items():
            parameters[index].grad = handle()
