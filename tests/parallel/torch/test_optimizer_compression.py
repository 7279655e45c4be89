"""Every compressor on real ranks equals a single-process simulation of the same algorithm.

Each rank trains the same model on its own data with hvdkit's
DistributedOptimizer, and also simulates all ranks in memory
(hvdkit.exchange.simulate) with the same bucket plan, states and strategy;
parameters must agree after every step, and be identical on every rank.
"""
import pytest
import torch

import hvdkit.torch as hvdkit_torch
from optimizer_support import FUSION_MB, LR, assert_same_on_every_rank, make_model, simulate, train

pytestmark = pytest.mark.timeout(180)

STEPS = 5
SPECS = ["none", "fp16,ef=1", "bf16", "int8:64,ef=1", "topk:0.1,min_numel=0", "topk:0.1,approx=1,min_numel=0", "randomk:0.25,min_numel=0",
         "onebit,block=64,min_numel=0", "powersgd:2", "topk:0.05,warmup=2,min_numel=100"]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("hierarchical", [False, True])
def test_multi_rank_run_equals_single_process_simulation(hvd, spec, hierarchical):
    topo = hvdkit_torch.init()
    if hierarchical and not topo.hierarchical:
        pytest.skip("one node (or one rank per node): hierarchical mode is the flat exchange, tested above")
    model = make_model()
    opt = hvdkit_torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9),
                                            model.named_parameters(), compression=spec, fusion_mb=FUSION_MB,
                                            hierarchical=hierarchical)
    real = train(model, opt, hvd.rank(), STEPS)
    simulated = simulate(topo.size, topo.local_size if topo.hierarchical else None, spec, hierarchical, STEPS)
    # MPI may add float16 payloads in another order than the simulation: one fp16 rounding per sum.
    atol = 1e-4 if spec.startswith("fp16") else 1e-6
    for step, (got, want) in enumerate(zip(real, simulated)):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=atol, msg=lambda m: f"step {step}: {m}")
    assert_same_on_every_rank(hvd, list(model.parameters()))
    stats = opt.last_step_stats
    assert stats.step == STEPS - 1 and not stats.skipped
    if not spec.startswith("none"):
        compressed = hvd.allreduce(torch.tensor([stats.compressed_bytes, stats.compressed_dense_bytes]),
                                   op=hvd.Sum, name="compressed.bytes")
        if hvd.size() == 1:  # a lone rank applies its gradients uncompressed
            assert compressed[0] == compressed[1] == 0
        else:
            assert 0 < compressed[0] < compressed[1]


def test_step_reports_bytes_ratio_and_kernel_time(hvd):
    if hvd.size() == 1:
        pytest.skip("a lone rank compresses nothing (test_a_lone_rank_trains_exactly_as_plain_torch)")
    hvdkit_torch.init()
    model = make_model()
    opt = hvdkit_torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=LR), model.named_parameters(),
                                            compression="onebit,min_numel=100", fusion_mb=FUSION_MB)
    train(model, opt, hvd.rank(), 1)
    stats = opt.last_step_stats.as_dict()
    compressed = [b for b in opt.buckets if b.compressed]
    assert compressed and any(not b.compressed for b in opt.buckets)
    assert stats["compressed_dense_bytes"] == sum(b.nbytes for b in compressed)
    if not opt._reducer.links.intra:
        expected = sum(-(-b.numel // 8) + 4 * -(-b.numel // 1024) for b in compressed)
        assert stats["compressed_bytes"] == expected
        dense_sent = sum(b.nbytes for b in opt.buckets if not b.compressed)
        assert stats["bytes_sent"] == expected + dense_sent
    assert stats["compression_ratio"] > 10
    assert stats["kernel_ms"] > 0 and stats["pack_ms"] > 0 and stats["wait_ms"] >= 0


@pytest.mark.parametrize("spec", ["topk:0.01", "onebit", "powersgd:1", "int8"])
def test_a_lone_rank_trains_exactly_as_plain_torch(hvd, spec):
    if hvd.size() != 1:
        pytest.skip("a world of one rank only (the -np 1 launch)")
    model, plain = make_model(), make_model()
    opt = hvdkit_torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9),
                                            model.named_parameters(), compression=spec, fusion_mb=FUSION_MB)
    got = train(model, opt, 0, 3)
    want = train(plain, torch.optim.SGD(plain.parameters(), lr=LR, momentum=0.9), 0, 3)
    for step, (a, b) in enumerate(zip(got, want)):
        assert all(torch.equal(x, y) for x, y in zip(a, b)), f"step {step} differs from plain training"
    assert opt.last_step_stats.bytes_sent == 0 and opt.last_step_stats.compressed_bytes == 0
