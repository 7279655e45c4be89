"""The PyTorch side of ``hvdkit train --mode ps`` (:mod:`hvdkit.training.ps_loop` drives it).

The allreduce job's model, data, sharding, steps, scoring and records
(:mod:`hvdkit.training.torch_loop`), with plain ``torch.optim.SGD`` stepped
through ``hvdkit.ps.torch_worker.TorchWorker`` where that job has hvdkit's
``DistributedOptimizer``.
"""
import torch

from hvdkit.ps.torch_worker import TorchWorker
from hvdkit.training import data as datasets
from hvdkit.training import ps_loop, torch_loop, torch_models, torch_state

__all__ = ["Part", "PSOptimizer"]


class PSOptimizer:
    """What ``torch_loop.train_epoch`` steps: the optimizer, through the servers; ``last_step_stats`` is the
    step's traffic (``ps_loop.StepMeter``)."""

    local_sgd = None

    def __init__(self, optimizer, worker, meter):
        self.optimizer, self.worker, self.meter = optimizer, worker, meter
        self.last_step_stats = None

    def zero_grad(self):
        self.optimizer.zero_grad()

    def step(self):
        self.worker.step()
        self.last_step_stats = self.meter.step()


class Part(ps_loop.FrameworkPart):
    loop = torch_loop
    framework = "torch"

    def __init__(self, config):
        import hvdkit.torch as hvd
        from hvdkit import topology as topology_module

        hvd.init()
        self.hvd, self.config, self.place = hvd, config, ps_loop.place(topology_module.current())
        self.rank, self.size = self.place.rank, self.place.size
        torch_state.seed_everything(config.seed)
        self.dataset = datasets.load(config.dataset, config.seed)
        self.x_train, self.y_train = torch.from_numpy(self.dataset.x_train), torch.from_numpy(self.dataset.y_train)
        self.x_test, self.y_test = torch.from_numpy(self.dataset.x_test), torch.from_numpy(self.dataset.y_test)
        self.model = torch_models.build(config.model, self.dataset.input_shape, self.dataset.num_classes)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum)
        hvd.broadcast_state(self.model, self.optimizer, root_rank=0)  # as the allreduce job starts
        trained = [p for p in self.model.parameters() if p.requires_grad]
        self.numel = sum(p.numel() for p in trained)
        self.dense_bytes = 4 * self.numel  # one fp32 push
        self.worker = None

    def shim(self, ps):
        self.worker = TorchWorker(self.model.parameters(), self.optimizer, ps)
        return self.worker

    def train_epoch(self, epoch, totals, meter):
        optimizer = PSOptimizer(self.optimizer, self.worker, meter)
        torch_loop.train_epoch(epoch, 0, totals, self.config, self.model, optimizer, self.x_train, self.y_train,
                               self.hvd, self.place, lambda step: None)
