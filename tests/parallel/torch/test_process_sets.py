"""A DistributedOptimizer on a process set averages among that set's ranks only.

With 4 ranks as 2 emulated nodes, each node's ranks form a registered process
set; an optimizer per node must train exactly as one process that averages
the gradients of that node's ranks (recomputed here from their data), and
the two nodes' models must differ.
"""
import pytest
import torch

import hvdkit.torch as hvdkit_torch
from optimizer_support import FUSION_MB, LR, loss_of, make_model

pytestmark = [pytest.mark.timeout(120), pytest.mark.uneven_ops]
STEPS = 3


def test_an_optimizer_averages_over_its_process_set_only(hvd):
    topo = hvdkit_torch.init()
    if not topo.hierarchical:
        pytest.skip("needs several nodes of several ranks (the -np 4, 2 emulated nodes launch)")
    members = sorted(topo.nodes[topo.node])
    model = make_model()
    opt = hvdkit_torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9),
                                            model.named_parameters(), fusion_mb=FUSION_MB,
                                            process_set=topo.intra_node_set)
    reference = make_model()
    plain = torch.optim.SGD(reference.parameters(), lr=LR, momentum=0.9)
    for step in range(STEPS):
        opt.zero_grad()
        loss_of(model, hvd.rank(), step).backward()
        opt.step()
        plain.zero_grad()
        for rank in members:
            (loss_of(reference, rank, step) / len(members)).backward()
        plain.step()
    assert opt.last_step_stats.bytes_sent > 0
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    other = hvd.allgather(model[0].weight.detach().reshape(1, -1), name="ps.weights")
    firsts = [other[sorted(node)[0]] for node in topo.nodes]
    assert not torch.equal(firsts[0], firsts[1]), "the nodes' models should differ"


def test_outside_its_process_set_an_optimizer_keeps_its_own_gradients(hvd):
    """As Horovod's: a rank not in the optimizer's set skips the exchange and steps on its own gradients;
    a set that is not registered is refused."""
    import horovod.torch as horovod

    topo = hvdkit_torch.init()
    if not topo.hierarchical:
        pytest.skip("needs several nodes of several ranks (the -np 4, 2 emulated nodes launch)")
    other = next(node for node in topo.nodes if hvd.rank() not in node)
    model, alone = make_model(), make_model()
    opt = hvdkit_torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=LR), model.named_parameters(),
                                            process_set=horovod.ProcessSet(list(other)))
    plain = torch.optim.SGD(alone.parameters(), lr=LR)
    for step in range(2):
        for m, o in ((model, opt), (alone, plain)):
            o.zero_grad()
            loss_of(m, hvd.rank(), step).backward()
            o.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), alone.parameters()))
    with pytest.raises(ValueError, match="is not registered"):
        hvdkit_torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=LR), model.named_parameters(),
                                          process_set=horovod.ProcessSet(list(topo.nodes[topo.node])))
