"""A training step waits for the device at most once: to read the step's non-finite flag.

Counted independently of hvdkit's own bookkeeping, from PyTorch's dispatcher
(tests/support/host_syncs.py): every value read on the host and every op
whose output size depends on the data, during ``loss.backward()`` and
``optimizer.step()`` of a step after the first (which also settles the bucket
order). ``nonfinite="pass"`` reads nothing; the default policy reads one
flag per step, and ``last_step_stats.host_syncs`` reports the same count.
"""
import pytest
import torch
from host_syncs import HostSyncCounter

import hvdkit.torch as hvdkit_torch
from optimizer_support import FUSION_MB, LR, loss_of, make_model, train

pytestmark = pytest.mark.timeout(120)

SPECS = ["none", "fp16,ef=1", "int8:64,ef=1", "topk:0.1,min_numel=0", "topk:0.1,approx=1,min_numel=0", "randomk:0.25,min_numel=0",
         "onebit,block=64,min_numel=0", "powersgd:2", "topk:0.1,two_phase=1,min_numel=0"]


@pytest.mark.parametrize("nonfinite,expected", [("skip", 1), ("pass", 0)])
@pytest.mark.parametrize("spec", SPECS)
def test_one_host_read_per_step_none_under_pass(hvd, spec, nonfinite, expected):
    topo = hvdkit_torch.init()
    model = make_model()
    opt = hvdkit_torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=LR), model.named_parameters(),
                                            compression=spec, fusion_mb=FUSION_MB, nonfinite=nonfinite,
                                            hierarchical=topo.hierarchical)
    train(model, opt, hvd.rank(), 2)
    opt.zero_grad()
    loss = loss_of(model, hvd.rank(), 2)
    with HostSyncCounter() as counter:
        loss.backward()
        opt.step()
    assert counter.count == expected, f"host syncs in one step: {counter.calls}"
    assert opt.last_step_stats.host_syncs == expected
