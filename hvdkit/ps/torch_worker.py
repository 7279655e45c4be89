"""PyTorch shim: a model's parameters and its own optimizer, trained through the servers.

::

    worker = TorchWorker(model.parameters(), optimizer)   # from HVDKIT_PS_* variables
    worker.join()                                          # everyone starts from the servers' values
    for x, y in data:
        optimizer.zero_grad(); loss_fn(model(x), y).backward()
        worker.step()                                      # instead of optimizer.step()
"""
import numpy as np
import torch

from hvdkit.ps import worker as core

__all__ = ["TorchWorker"]


class TorchWorker:
    def __init__(self, parameters, optimizer, ps=None):
        self.parameters = [p for p in parameters if p.requires_grad]
        self.optimizer = optimizer
        self.ps = ps or core.from_env(sum(p.numel() for p in self.parameters))

    def _flat(self, tensors):
        return torch.cat([t.detach().reshape(-1).to("cpu", torch.float32) for t in tensors]).numpy()

    def _write(self, flat, targets):
        offset = 0
        with torch.no_grad():
            for t in targets:
                n = t.numel()
                t.copy_(torch.from_numpy(np.asarray(flat[offset:offset + n])).view_as(t))
                offset += n

    def join(self):
        self._write(self.ps.join(self._flat(self.parameters)), self.parameters)

    def step(self):
        """sync: average the gradients through the servers, then the optimizer steps. Other modes: the optimizer
        steps locally, its change goes to the servers, and the parameters come back."""
        if self.ps.mode.pushes_gradients:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.parameters]
            params = self._flat(self.parameters) if self.ps.sends_params else None
            mean = self.ps.exchange_gradient(self._flat(grads), params)
            for p, g in zip(self.parameters, grads):
                if p.grad is None:
                    p.grad = g
            self._write(mean, [p.grad for p in self.parameters])
            self.optimizer.step()
            return
        before = self._flat(self.parameters).copy()
        self.optimizer.step()
        self._write(self.ps.exchange_delta(self._flat(self.parameters) - before), self.parameters)

    def save(self, epoch):
        """The servers checkpoint their shards as of ``epoch`` epochs done (``PSWorker.save``)."""
        return self.ps.save(epoch, self._flat(self.parameters))

    def leave(self):
        self.ps.leave(self._flat(self.parameters))
