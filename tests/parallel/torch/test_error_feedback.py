"""Error feedback never loses a gradient: a skipped step leaves every residual exactly as it was, and
residuals follow a changing loss scale.

Residuals are read through the optimizer's public ``state_dict()["hvdkit"]``
and compared with the values before the skipped step; the loss-scaled run is
compared with the same run without loss scaling.
"""
import math

import pytest
import torch

import hvdkit.torch as hvdkit_torch
from optimizer_support import FUSION_MB, LR, loss_of, make_model, train

pytestmark = pytest.mark.timeout(120)

SPECS = ["topk:0.1,min_numel=0", "topk:0.1,approx=1,min_numel=0", "onebit,block=64,min_numel=0", "int8:64,ef=1", "fp16,ef=1", "randomk:0.25,min_numel=0",
         "powersgd:2", "topk:0.1,two_phase=1,min_numel=0", "onebit,block=64,two_phase=1,min_numel=0"]


def error_feedback(opt):
    """{bucket key: (residual, memory, server residual, velocity)} copied out of the optimizer's state dict."""
    def copy(t):
        return None if t is None else t.clone()

    return {key: (copy(s["residual"]), copy(s["memory"]), copy(s["server"] and s["server"]["residual"]),
                  copy(s["velocity"]))
            for key, s in opt.state_dict()["hvdkit"]["buckets"].items()}


def same(a, b):
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


@pytest.mark.parametrize("spec", SPECS)
def test_a_step_skipped_for_another_ranks_nan_leaves_every_residual_as_it_was(hvd, spec):
    if hvd.size() == 1:
        pytest.skip("needs another rank to poison the step (a lone rank sends nothing)")
    topo = hvdkit_torch.init()
    model = make_model()
    opt = hvdkit_torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9),
                                            model.named_parameters(), compression=spec, fusion_mb=FUSION_MB,
                                            hierarchical=topo.hierarchical)
    train(model, opt, hvd.rank(), 2)
    before = error_feedback(opt)
    assert any(r is not None and bool(r.abs().sum() > 0) for r, _, _, _ in before.values()), "no residual to keep"
    parameters = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    loss = loss_of(model, hvd.rank(), 2)
    (loss * math.nan if hvd.rank() == hvd.size() - 1 else loss).backward()
    with pytest.warns(RuntimeWarning, match="not finite"):
        opt.step()
    assert opt.last_step_stats.skipped
    after = error_feedback(opt)
    assert after.keys() == before.keys()
    for key in before:
        assert all(same(a, b) for a, b in zip(before[key], after[key])), f"{key}: error feedback changed"
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), parameters))


@pytest.mark.parametrize("spec", ["topk:0.1,min_numel=0", "onebit,block=64,min_numel=0", "int8:64,ef=1"])
def test_residuals_follow_a_changing_loss_scale(hvd, spec):
    """A GradScaler that doubles its scale every step and halves it on a forced overflow gives the same
    training as no loss scaling at all, the overflowing step left out (scales are powers of two, so the
    scaled arithmetic is exact up to float rounding)."""
    if hvd.size() == 1:
        pytest.skip("a lone rank compresses nothing")
    topo = hvdkit_torch.init()

    def optimizer(model, **kwargs):
        return hvdkit_torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9),
                                                 model.named_parameters(), compression=spec, fusion_mb=FUSION_MB,
                                                 hierarchical=topo.hierarchical, **kwargs)

    steps, overflow = 6, 3
    plain = make_model()
    opt = optimizer(plain)
    for step in range(steps):
        if step != overflow:
            train(plain, opt, hvd.rank(), 1, start=step)

    scaled = make_model()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1)
    opt = optimizer(scaled, nonfinite="pass", loss_scaler=scaler)
    scales = []
    for step in range(steps):
        opt.zero_grad()
        loss = loss_of(scaled, hvd.rank(), step)
        scaler.scale(loss * math.inf if step == overflow else loss).backward()
        opt.synchronize()
        scaler.unscale_(opt)
        with opt.skip_synchronize():
            scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    assert scales == [2.0**9, 2.0**10, 2.0**11, 2.0**10, 2.0**11, 2.0**12]
    for p, q in zip(scaled.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_loss_scaler_must_be_a_grad_scaler():
    model = make_model()
    with pytest.raises(ValueError, match="loss_scaler must be a torch.amp.GradScaler, got 2.0"):
        hvdkit_torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=LR), model.named_parameters(),
                                          loss_scaler=2.0)
