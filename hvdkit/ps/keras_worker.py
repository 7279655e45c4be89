"""Keras 3 shim: a model's trainable variables and its own optimizer, trained through the servers.

::

    worker = KerasWorker(model.trainable_variables, optimizer)
    worker.join()
    with tf.GradientTape() as tape: loss = ...
    worker.step(tape.gradient(loss, model.trainable_variables))   # instead of apply_gradients
"""
import numpy as np

from hvdkit.ps import worker as core

__all__ = ["KerasWorker"]


class KerasWorker:
    def __init__(self, variables, optimizer, ps=None):
        self.variables = list(variables)
        self.optimizer = optimizer
        self.ps = ps or core.from_env(sum(int(np.prod(v.shape)) for v in self.variables))

    @staticmethod
    def _flat(values):
        return np.concatenate([np.asarray(v, dtype=np.float32).reshape(-1) for v in values])

    def _split(self, flat):
        out, offset = [], 0
        for v in self.variables:
            n = int(np.prod(v.shape))
            out.append(flat[offset:offset + n].reshape(tuple(v.shape)))
            offset += n
        return out

    def _assign(self, flat):
        for v, value in zip(self.variables, self._split(flat)):
            v.assign(value)

    def join(self):
        self._assign(self.ps.join(self._flat(self.variables)))

    def step(self, gradients):
        """sync: the servers' mean of ``gradients`` goes to the optimizer; other modes: the optimizer's local
        change goes to the servers and their parameters come back."""
        if self.ps.mode.pushes_gradients:
            params = self._flat(self.variables) if self.ps.sends_params else None
            mean = self.ps.exchange_gradient(self._flat(gradients), params)
            self.optimizer.apply_gradients(zip(self._split(mean), self.variables))
            return
        before = self._flat(self.variables)
        self.optimizer.apply_gradients(zip(gradients, self.variables))
        self._assign(self.ps.exchange_delta(self._flat(self.variables) - before))

    def save(self, epoch):
        """The servers checkpoint their shards as of ``epoch`` epochs done (``PSWorker.save``)."""
        return self.ps.save(epoch, self._flat(self.variables))

    def leave(self):
        self.ps.leave(self._flat(self.variables))
