"""``hvdkit.torch.elastic.ElasticState`` and ``DistributedOptimizer.world_changed`` on real ranks.

A real world change needs ``horovodrun`` in elastic mode (tests/integration/test_elastic.py);
here the world stays, and what a reset does to the exchange state is checked step by step:
keeping the residuals continues the very same run (equal to the single-process simulation of an
uninterrupted one), dropping them changes it, and commit/restore/sync put back exactly what was
committed and what rank 0 holds.
"""
import pytest
import torch

import hvdkit.torch as hvdkit_torch
from hvdkit.torch import elastic
from optimizer_support import FUSION_MB, LR, assert_same_on_every_rank, make_model, simulate, train

pytestmark = pytest.mark.timeout(180)

SPEC = "topk:0.1,min_numel=0"  # error feedback on: residuals to keep or drop
STEPS = 5
CHANGE_AT = 3


def make_optimizer(model, spec=SPEC):
    return hvdkit_torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9),
                                             model.named_parameters(), compression=spec, fusion_mb=FUSION_MB)


def exchange_state(optimizer):
    return optimizer.state_dict()["hvdkit"]


def residuals(optimizer):
    """Copies of this rank's residuals by bucket key (None where there is none)."""
    return {key: None if s["residual"] is None else s["residual"].clone()
            for key, s in exchange_state(optimizer)["buckets"].items()}


def test_world_changed_keeping_residuals_continues_the_same_run(hvd, topo):
    model = make_model()
    optimizer = make_optimizer(model)
    history = train(model, optimizer, hvd.rank(), CHANGE_AT)
    before = exchange_state(optimizer)
    optimizer.world_changed(keep_residuals=True)
    after = exchange_state(optimizer)
    assert after["steps"] == before["steps"] == CHANGE_AT
    assert all(torch.equal(after["buckets"][k]["residual"], s["residual"]) for k, s in before["buckets"].items())
    history += train(model, optimizer, hvd.rank(), STEPS - CHANGE_AT, start=CHANGE_AT)
    simulated = simulate(topo.size, None, SPEC, False, STEPS)
    for step, (got, want) in enumerate(zip(history, simulated)):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"step {step}: {m}")
    assert_same_on_every_rank(hvd, list(model.parameters()))


def test_world_changed_dropping_residuals_restarts_error_feedback(hvd, topo):
    kept_model, dropped_model = make_model(), make_model()
    kept, dropped = make_optimizer(kept_model), make_optimizer(dropped_model)
    train(kept_model, kept, hvd.rank(), CHANGE_AT)
    train(dropped_model, dropped, hvd.rank(), CHANGE_AT)
    assert all(r is not None for r in residuals(dropped).values())
    dropped.world_changed(keep_residuals=False)
    assert residuals(dropped) and all(r is None for r in residuals(dropped).values())
    assert exchange_state(dropped)["steps"] == CHANGE_AT
    train(kept_model, kept, hvd.rank(), STEPS - CHANGE_AT, start=CHANGE_AT)
    train(dropped_model, dropped, hvd.rank(), STEPS - CHANGE_AT, start=CHANGE_AT)
    assert_same_on_every_rank(hvd, list(dropped_model.parameters()))
    difference = max((a - b).abs().max().item() for a, b in zip(kept_model.parameters(), dropped_model.parameters()))
    assert difference > 1e-6, "dropping the residuals changed nothing: they were not dropped"


def test_restore_puts_back_the_commit_and_sync_takes_rank_0s_state(hvd, topo):
    model = make_model()
    optimizer = make_optimizer(model)
    train(model, optimizer, hvd.rank(), 2)
    state = elastic.ElasticState(model, optimizer, epoch=1, step=2)
    state.commit()
    committed = [p.detach().clone() for p in model.parameters()]
    committed_residuals = residuals(optimizer)
    train(model, optimizer, hvd.rank(), 2, start=2)
    state.step, state.epoch = 4, 2
    state.restore()
    assert (state.epoch, state.step) == (1, 2)
    assert all(torch.equal(p, c) for p, c in zip(model.parameters(), committed))
    assert all(torch.equal(residuals(optimizer)[k], r) for k, r in committed_residuals.items())

    with torch.no_grad():  # ranks now disagree on the model and the step count
        for p in model.parameters():
            p.add_(hvd.rank())
    state._saved_state["step"] = 2 + hvd.rank()
    state.sync()
    assert state.step == 2
    assert all(torch.equal(p, c) for p, c in zip(model.parameters(), committed))
    assert_same_on_every_rank(hvd, list(model.parameters()))
    mine = residuals(optimizer)  # error feedback stays each rank's own
    assert all(torch.equal(mine[k], r) for k, r in committed_residuals.items())


@pytest.mark.parametrize("size_changes", [False, True])
def test_reset_keeps_residuals_only_when_the_size_stays(hvd, topo, size_changes):
    model = make_model()
    optimizer = make_optimizer(model)
    train(model, optimizer, hvd.rank(), 2)
    state = elastic.ElasticState(model, optimizer)
    state.commit()
    if size_changes:
        state.world_size = hvd.size() + 1  # as if Horovod had restarted with one rank fewer
    state.reset()
    assert state.world_size == hvd.size()
    live = residuals(optimizer)
    assert all((r is None) == size_changes for r in live.values())
    state.restore()  # the snapshot must not bring old-world residuals back
    assert all((r is None) == size_changes for r in residuals(optimizer).values())
    train(model, optimizer, hvd.rank(), 2, start=2)
    assert_same_on_every_rank(hvd, list(model.parameters()))
