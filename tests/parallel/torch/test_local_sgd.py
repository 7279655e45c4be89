"""Model averaging and post-local SGD: every rank ends with the parameters a
single process computes by running all ranks' local SGD itself."""
import pytest
import torch

from hvdkit import averaging
from optimizer_support import LR, assert_same_on_every_rank, loss_of, make_model

import hvdkit.torch as hvd


@pytest.fixture(scope="module")
def topology():
    return hvd.init()


def rank_values(rank):
    return torch.arange(6, dtype=torch.float32).reshape(2, 3) * (rank + 1) + rank


def test_world_average_is_the_mean_over_ranks(topology):
    tensors = [rank_values(topology.rank), torch.full((5,), float(topology.rank))]
    averaging.average_parameters(tensors, "world", hvd, topology)
    ranks = range(topology.size)
    torch.testing.assert_close(tensors[0], torch.stack([rank_values(r) for r in ranks]).mean(0))
    torch.testing.assert_close(tensors[1], torch.full((5,), sum(ranks) / topology.size))


def test_node_average_is_the_mean_over_the_node(topology):
    tensor = rank_values(topology.rank)
    averaging.average_parameters([tensor], "node", hvd, topology)
    node_ranks = topology.nodes[topology.node]
    torch.testing.assert_close(tensor, torch.stack([rank_values(r) for r in node_ranks]).mean(0))


def simulate_post_local_sgd(size, steps, warmup, period):
    """All ranks of the same run in one process: synchronous SGD (mean gradient)
    for ``warmup`` steps, then local steps with the model averaged every ``period``."""
    models = [make_model() for _ in range(size)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=LR, momentum=0.9) for m in models]
    for step in range(steps):
        for rank, (model, optimizer) in enumerate(zip(models, optimizers)):
            optimizer.zero_grad()
            loss_of(model, rank, step).backward()
        if step < warmup:
            for params in zip(*(m.parameters() for m in models)):
                mean = torch.stack([p.grad for p in params]).mean(0)
                for p in params:
                    p.grad = mean.clone()
        for optimizer in optimizers:
            optimizer.step()
        if step >= warmup and (step + 1 - warmup) % period == 0:
            with torch.no_grad():
                for params in zip(*(m.parameters() for m in models)):
                    mean = torch.stack(params).mean(0)
                    for p in params:
                        p.copy_(mean)
    return [list(m.parameters()) for m in models]


@pytest.mark.parametrize("warmup, period", [(0, 3), (4, 2)])
def test_post_local_sgd_matches_a_single_process_simulation(topology, warmup, period):
    steps = 10
    model = make_model()
    local_sgd = averaging.PeriodicAverager(period=period, warmup_steps=warmup)
    optimizer = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9),
                                         named_parameters=model.named_parameters(), local_sgd=local_sgd)
    for step in range(steps):
        optimizer.zero_grad()
        loss_of(model, topology.rank, step).backward()
        optimizer.step()
    expected = simulate_post_local_sgd(topology.size, steps, warmup, period)[topology.rank]
    for got, want in zip(model.parameters(), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    if (steps - warmup) % period == 0:
        assert_same_on_every_rank(hvd, [p.detach() for p in model.parameters()])
    assert local_sgd.steps == steps
