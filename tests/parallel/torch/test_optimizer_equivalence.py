"""hvdkit's DistributedOptimizer against horovod.torch.DistributedOptimizer on the same ranks.

(Its refusal of hvdkit compressors with op=Adasum, checked before any collective, is a unit test:
tests/unit/torch/test_optimizer_arguments.py.)"""
import pytest
import torch

import hvdkit.torch as hvdkit_torch
from optimizer_support import FUSION_MB, LR, assert_same_on_every_rank, batch, loss_of, make_model, train

pytestmark = pytest.mark.timeout(120)


def pair(hvd, hvdkit_compression="none", horovod_compression=None, op=None, **kwargs):
    """(model, hvdkit optimizer), (model, Horovod optimizer), starting from the same parameters."""
    hvdkit_torch.init()
    horovod_compression = horovod_compression or hvd.Compression.none
    ours, theirs = make_model(), make_model()
    passes = kwargs.pop("backward_passes_per_step", 1)
    op = hvd.Average if op is None else op
    opt_ours = hvdkit_torch.DistributedOptimizer(
        torch.optim.SGD(ours.parameters(), lr=LR, momentum=0.9), ours.named_parameters(),
        compression=hvdkit_compression, backward_passes_per_step=passes, op=op, fusion_mb=FUSION_MB, **kwargs)
    opt_theirs = hvd.DistributedOptimizer(
        torch.optim.SGD(theirs.parameters(), lr=LR, momentum=0.9), theirs.named_parameters(),
        compression=horovod_compression, backward_passes_per_step=passes, op=op)
    return (ours, opt_ours), (theirs, opt_theirs)


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("hierarchical,op", [(False, "Average"), (True, "Average"), (False, "Sum")])
def test_no_compression_matches_horovod_after_20_steps(hvd, hierarchical, op):
    (ours, opt_ours), (theirs, opt_theirs) = pair(hvd, hierarchical=hierarchical, op=getattr(hvd, op))
    assert len(opt_ours.buckets) > 1
    uses_nodes = opt_ours._reducer.links.intra is not None
    assert uses_nodes == (hierarchical and hvdkit_torch.topology().hierarchical)
    train(ours, opt_ours, hvd.rank(), 20)
    train(theirs, opt_theirs, hvd.rank(), 20)
    assert max_diff(ours, theirs) <= 1e-6
    assert max_diff(ours, make_model()) > 1e-2  # training moved the parameters
    assert_same_on_every_rank(hvd, list(ours.parameters()))


def test_fp16_matches_horovods_fp16_compression(hvd):
    (ours, opt_ours), (theirs, opt_theirs) = pair(hvd, "fp16", hvd.Compression.fp16)
    for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
        opt.zero_grad()
        loss_of(model, hvd.rank(), 0).backward()
        opt.synchronize()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        # Same fp16 values summed; hvdkit divides before the sum, Horovod after: at most an fp16 rounding apart.
        torch.testing.assert_close(a.grad, b.grad, rtol=2 ** -10, atol=1e-7 * hvd.size())
    for opt in (opt_ours, opt_theirs):
        with opt.skip_synchronize():
            opt.step()
    train(ours, opt_ours, hvd.rank(), 19, start=1)
    train(theirs, opt_theirs, hvd.rank(), 19, start=1)
    assert max_diff(ours, theirs) <= 1e-3
    assert_same_on_every_rank(hvd, list(ours.parameters()))


def test_fp16_divides_before_summing_so_large_gradients_do_not_overflow(hvd):
    hvdkit_torch.init()
    p = torch.nn.Parameter(torch.zeros(4))
    opt = hvdkit_torch.DistributedOptimizer(torch.optim.SGD([p], lr=1.0), [("p", p)], compression="fp16")
    (p * torch.tensor([60000.0, -60000.0, 1.0, 0.0])).sum().backward()
    opt.synchronize()
    # Horovod's fp16 compression sums 60000 * size in fp16 first: +-inf from 2 ranks on.
    assert torch.equal(p.grad, torch.tensor([60000.0, -60000.0, 1.0, 0.0]))


def test_gradient_clipping_recipe_matches_horovod(hvd):
    (ours, opt_ours), (theirs, opt_theirs) = pair(hvd)
    for step in range(5):
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            loss_of(model, hvd.rank(), step).backward()
            opt.synchronize()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            with opt.skip_synchronize():
                opt.step()
    assert max_diff(ours, theirs) <= 1e-6


def test_accumulating_backward_passes_matches_horovod(hvd):
    (ours, opt_ours), (theirs, opt_theirs) = pair(hvd, backward_passes_per_step=2)
    for step in range(4):
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            loss_of(model, hvd.rank(), 2 * step).backward()
            loss_of(model, hvd.rank(), 2 * step + 1).backward()
            opt.step()
    assert max_diff(ours, theirs) <= 1e-6


def test_parameters_unused_on_some_ranks_match_horovod(hvd):
    (ours, opt_ours), (theirs, opt_theirs) = pair(hvd)
    for step in range(3):
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            x, y = batch(hvd.rank(), step)
            head = model[:4] if hvd.rank() % 2 else model[:2]  # odd ranks skip the last Linear
            out = head(x)[:, :4]
            torch.nn.functional.mse_loss(out, y).backward()
            opt.step()
    assert max_diff(ours, theirs) <= 1e-6


def test_buckets_start_communicating_during_backward(hvd):
    hvdkit_torch.init()
    model = make_model()
    opt = hvdkit_torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=LR), model.named_parameters(),
                                            fusion_mb=FUSION_MB)
    loss_of(model, hvd.rank(), 0).backward()  # the first step settles the bucket order
    opt.step()
    opt.zero_grad()
    launched_before_last_grad = []
    first = next(model.parameters())  # registered first, so its gradient is among the last to arrive
    first.register_post_accumulate_grad_hook(lambda p: launched_before_last_grad.append(len(opt._reducer.flights)))
    loss_of(model, hvd.rank(), 1).backward()
    assert launched_before_last_grad and launched_before_last_grad[0] >= 1
    assert len(opt._reducer.flights) == len(opt.buckets)  # every bucket left before step()
    opt.step()
    assert not opt._reducer.flights
    stats = opt.last_step_stats
    assert stats.buckets == len(opt.buckets) and stats.dense_bytes == sum(4 * p.numel() for p in model.parameters())


def test_auto_hierarchy_ignores_emulated_nodes(hvd):
    (_, opt), _ = pair(hvd, hierarchical="auto")
    topo = hvdkit_torch.topology()
    assert (opt._reducer.links.intra is not None) == (topo.hierarchical and not topo.emulated)


def test_parameters_of_other_dtypes_are_averaged_densely(hvd):
    hvdkit_torch.init()
    params = {"bf16": torch.nn.Parameter(torch.zeros(5, dtype=torch.bfloat16)),
              "f16": torch.nn.Parameter(torch.zeros(3, dtype=torch.float16)),
              "f64": torch.nn.Parameter(torch.zeros(4, dtype=torch.float64)),
              "f32": torch.nn.Parameter(torch.zeros(6))}
    opt = hvdkit_torch.DistributedOptimizer(torch.optim.SGD(params.values(), lr=1.0), list(params.items()),
                                            compression="topk:0.5,min_numel=0")
    assert {b.dtype: b.compressed for b in opt.buckets} == {"bfloat16": False, "float16": False, "float64": False,
                                                            "float32": True}
    ((hvd.rank() + 1) * sum(p.double().sum() for p in params.values())).backward()
    opt.synchronize()
    mean = (hvd.size() + 1) / 2
    for name in ("bf16", "f16", "f64"):
        grad = params[name].grad
        torch.testing.assert_close(grad, torch.full_like(grad, mean), msg=name)  # the dtype's own tolerance


class EmbeddingModel(torch.nn.Module):
    """A sparse embedding (rows chosen per rank) feeding a dense layer: one sparse and two dense gradients."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embedding = torch.nn.Embedding(10, 3, sparse=True)
        self.head = torch.nn.Linear(3, 1)

    def forward(self, rows):
        return self.head(self.embedding(rows)).sum()


def test_sparse_gradients_travel_sparse_or_dense_with_the_same_result(hvd):
    """Without sparse_as_dense the embedding's gradient travels sparse (Horovod's allgather of indices and
    values); with it, it is densified, averaged in a bucket and made sparse again. Both equal one process averaging every rank's
    gradient, step after step; a rank that does not use the embedding in a step still takes part."""
    hvdkit_torch.init()
    steps = 3

    def rows(rank, step):
        return torch.tensor([(rank + step) % 10, (2 * rank + 3) % 10]) if (rank, step) != (0, 1) else None

    def loss(model, rank, step):
        picked = rows(rank, step)
        return model(picked) * (rank + 1) if picked is not None else model.head.weight.sum() * 0

    results = {}
    for sparse_as_dense in (False, True):
        model = EmbeddingModel()
        opt = hvdkit_torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.5),
                                                model.named_parameters(), sparse_as_dense=sparse_as_dense)
        for step in range(steps):
            opt.zero_grad()
            loss(model, hvd.rank(), step).backward()
            opt.step()
            if step == 0:  # handed back sparse either way, as Horovod's optimizer does
                assert model.embedding.weight.grad.is_sparse
        results[sparse_as_dense] = [p.detach().clone() for p in model.parameters()]
        if not sparse_as_dense and hvd.size() > 1:
            assert all(slot.name != "embedding.weight" for b in opt.buckets for slot in b.slots)
    reference = EmbeddingModel()
    plain = torch.optim.SGD(reference.parameters(), lr=0.5)
    for step in range(steps):
        plain.zero_grad()
        for rank in range(hvd.size()):
            (loss(reference, rank, step) / hvd.size()).backward()
        plain.step()
    for got in results.values():
        for p, q in zip(got, reference.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)

