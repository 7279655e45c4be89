"""Deep Gradient Compression's recipe in the torch optimizer against a numpy restatement of the paper's
algorithm (``tests/support/dgc_reference.py``). Exchanges are flat at every world size."""
import math

import numpy as np
import pytest
import torch

import hvdkit.torch as hvdkit_torch

import oracle
from dgc_reference import LR, MOMENTUM, N_B, N_W, STEPS, coefficients, reference

pytestmark = pytest.mark.timeout(120)


def run(hvd, spec, nesterov=False, decay=0.0):
    """Train w and b with hvdkit's optimizer under ``spec``; returns (w, b, optimizer)."""
    w, b = torch.nn.Parameter(torch.ones(N_W)), torch.nn.Parameter(torch.ones(N_B))
    sgd = torch.optim.SGD([w, b], lr=LR, momentum=MOMENTUM, nesterov=nesterov, weight_decay=decay)
    opt = hvdkit_torch.DistributedOptimizer(sgd, named_parameters=[("w", w), ("b", b)], compression=spec)
    for step in range(STEPS):
        c, d = coefficients(hvd.rank(), step)
        opt.zero_grad()
        ((w * torch.from_numpy(c)).sum() + (b * torch.from_numpy(d)).sum()).backward()
        opt.step()
    return w.detach().numpy(), b.detach().numpy(), opt


CASES = {  # spec options after the sparsifier -> reference keywords
    "topk:0.05": {},
    "topk:0.05,ramp=8": {"ramp": 8},
    "topk:0.05,mask=0": {"mask": False},
    "randomk:0.1": {},
}


@pytest.mark.parametrize("spec", sorted(CASES))
def test_sparsifier_with_momentum_correction_matches_the_papers_algorithm(hvd, spec):
    if hvd.size() == 1:
        pytest.skip("a lone rank compresses nothing and keeps SGD's own momentum")
    hvdkit_torch.init()
    w, b, opt = run(hvd, f"{spec},mc=1,min_numel={N_B + 1}")
    assert opt.param_groups[0]["momentum"] == 0.0, "the momentum must have moved into the compression"
    kind, ratio = spec.split(",")[0].split(":")
    seed = None
    if kind == "randomk":
        (bucket,) = [bk for bk in opt.buckets if bk.compressed]
        seed = oracle.splitmix(bucket.index, 0)
    want_w, want_b = reference(hvd.size(), kind, float(ratio), seed_of=seed, **CASES[spec])
    np.testing.assert_allclose(w, want_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, want_b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(w, 1.0), "nothing was applied"


@pytest.mark.parametrize("nesterov,decay", [(True, 0.0), (False, 0.01)])
def test_nesterov_and_weight_decay_go_through_the_moved_momentum(hvd, nesterov, decay):
    if hvd.size() == 1:
        pytest.skip("a lone rank compresses nothing and keeps SGD's own momentum")
    hvdkit_torch.init()
    w, b, _ = run(hvd, f"topk:0.05,mc=1,min_numel={N_B + 1}", nesterov=nesterov, decay=decay)
    want_w, want_b = reference(hvd.size(), "topk", 0.05, nesterov=nesterov, decay=decay)
    np.testing.assert_allclose(w, want_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, want_b, rtol=1e-5, atol=1e-6)


def test_by_default_the_momentum_stays_in_sgd(hvd):
    """Without momentum correction (the default), SGD's momentum runs on the sparse sum of the raw
    accumulations."""
    if hvd.size() == 1:
        pytest.skip("a lone rank compresses nothing")
    hvdkit_torch.init()
    w, _, opt = run(hvd, f"topk:0.05,min_numel={N_B + 1}")
    assert opt.param_groups[0]["momentum"] == MOMENTUM
    f32 = np.float32
    want, buf = np.ones(N_W, f32), np.zeros(N_W, f32)
    v = [np.zeros(N_W, f32) for _ in range(hvd.size())]
    k = oracle.keep_count(0.05, N_W)
    for step in range(STEPS):
        update = np.zeros(N_W, f32)
        for r in range(hvd.size()):
            v[r] = (v[r] + coefficients(r, step)[0] / f32(hvd.size())).astype(f32)
            sent = np.argpartition(-np.abs(v[r]), k - 1)[:k]
            update[sent] += v[r][sent]
            v[r][sent] = 0
        buf = (f32(MOMENTUM) * buf + update).astype(f32) if step else update
        want = (want - f32(LR) * buf).astype(f32)
    np.testing.assert_allclose(w, want, rtol=1e-5, atol=1e-6)


def test_mc_1_refuses_an_optimizer_that_is_not_sgd_with_momentum(hvd):
    if hvd.size() == 1:
        pytest.skip("a lone rank compresses nothing, so no momentum moves")
    hvdkit_torch.init()
    w = torch.nn.Parameter(torch.ones(N_W))
    with pytest.raises(ValueError, match=r"mc=1.*torch\.optim\.adam\.Adam, not torch.optim.SGD"):
        hvdkit_torch.DistributedOptimizer(torch.optim.Adam([w]), named_parameters=[("w", w)],
                                          compression="topk:0.01,mc=1")
    with pytest.raises(ValueError, match="has momentum 0"):
        hvdkit_torch.DistributedOptimizer(torch.optim.SGD([w], lr=0.1), named_parameters=[("w", w)],
                                          compression="randomk:0.01,mc=1")
    adam = hvdkit_torch.DistributedOptimizer(torch.optim.Adam([w]), named_parameters=[("w", w)],
                                             compression="topk:0.01,mc=auto")
    assert adam._reducer.momentum is None and not math.isnan(adam.param_groups[0]["lr"])
