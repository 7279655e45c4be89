"""op=hvd.Adasum with hvdkit's defaults is Horovod's Adasum: the same model trained in the same job by
hvdkit's DistributedOptimizer and by stock ``horovod.torch.DistributedOptimizer(op=Adasum)`` ends with the same
parameters on every rank (the option-by-option refusals are tests/unit/torch/test_adasum_options.py)."""
import horovod.torch
import pytest
import torch

import hvdkit.torch as hvdkit_torch
from optimizer_support import batch

pytestmark = pytest.mark.timeout(90)


def train(make_optimizer, prefix, rank, steps=3):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    named = [(f"{prefix}.{name}", p) for name, p in model.named_parameters()]  # distinct Horovod op names
    optimizer = make_optimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), named)
    for step in range(steps):
        optimizer.zero_grad()
        x, y = batch(rank, step)
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("compression", ["none", "fp16"])
def test_adasum_defaults_give_horovods_adasum(hvd, compression):
    hvdkit_torch.init()
    rank = hvd.rank()
    ours = train(lambda opt, named: hvdkit_torch.DistributedOptimizer(opt, named, compression=compression,
                                                                      op=hvdkit_torch.Adasum),
                 f"ours_{compression}", rank)
    stock = {"none": horovod.torch.Compression.none, "fp16": horovod.torch.Compression.fp16}[compression]
    theirs = train(lambda opt, named: horovod.torch.DistributedOptimizer(opt, named, compression=stock,
                                                                         op=horovod.torch.Adasum),
                   f"stock_{compression}", rank)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    everyone = hvd.allgather_object([p.numpy().tobytes() for p in ours], name=f"test_adasum.{compression}")
    assert all(other == everyone[0] for other in everyone)
