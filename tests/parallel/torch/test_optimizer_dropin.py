"""A script written for horovod.torch runs unchanged on hvdkit.torch and trains identically.

``horovod_example`` follows Horovod's own examples/pytorch/pytorch_mnist.py and
pytorch_imagenet_resnet50.py (init, broadcast_parameters,
broadcast_optimizer_state, Compression, DistributedOptimizer with op and
gradient_predivide_factor, metric averaging with allreduce, an LR scheduler
on the wrapped optimizer); only the module passed in differs.
"""
import horovod.torch
import pytest
import torch

import hvdkit.torch
from optimizer_support import batch, make_model

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True, scope="module")
def hvdkit_initialises_horovod_first():
    """The scripts below call hvd.init() of either module; hvdkit's must come first in the
    process so the node process sets exist (Horovod registers them only at init)."""
    hvdkit.torch.init()


def horovod_example(hvd, fp16_allreduce=False, predivide=1.0, epochs=2, steps_per_epoch=4):
    hvd.init()
    torch.manual_seed(42)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01 * hvd.size(), momentum=0.5)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    compression = hvd.Compression.fp16 if fp16_allreduce else hvd.Compression.none
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                         compression=compression, op=hvd.Average,
                                         gradient_predivide_factor=predivide)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    losses = []
    for epoch in range(epochs):
        for step in range(steps_per_epoch):
            data, target = batch(hvd.rank(), epoch * steps_per_epoch + step)
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(data), target)
            loss.backward()
            optimizer.step()
        scheduler.step()
        losses.append(hvd.allreduce(loss.detach(), name="avg_loss").item())  # metric_average
    return model, losses


@pytest.mark.parametrize("fp16,predivide", [(False, 1.0), (True, 1.0), (False, 2.0)])
def test_horovod_example_runs_unchanged_and_matches_horovod(hvd, fp16, predivide):
    ours, our_losses = horovod_example(hvdkit.torch, fp16, predivide)
    theirs, their_losses = horovod_example(horovod.torch, fp16, predivide)
    tolerance = 1e-3 if fp16 else 1e-6
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=tolerance)
    assert our_losses == pytest.approx(their_losses, abs=tolerance)


def test_the_wrapped_optimizer_is_still_an_instance_of_its_class(hvd):
    hvdkit.torch.init()
    model = make_model()
    opt = hvdkit.torch.DistributedOptimizer(torch.optim.Adam(model.parameters(), lr=0.1, betas=(0.5, 0.6)),
                                            named_parameters=model.named_parameters())
    assert isinstance(opt, torch.optim.Adam)
    assert type(opt).__name__ == "Adam"
    assert opt.defaults["betas"] == (0.5, 0.6) and opt.param_groups[0]["lr"] == 0.1


def test_parameter_names_are_horovods_attribute_with_unique_names_even_without_named_parameters(hvd):
    """Horovod scripts read ``optimizer._parameter_names`` ({parameter: name}); without ``named_parameters``
    every parameter still gets a distinct name, and every rank the same names (as Horovod's suite checks)."""
    model = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 10))
    base = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[1].parameters()}], lr=0.001)
    names = hvdkit.torch.DistributedOptimizer(base)._parameter_names
    assert set(names) == set(model.parameters()) and len(set(names.values())) == 4
    everyone = hvd.allgather_object(sorted(names.values()))
    assert all(theirs == everyone[0] for theirs in everyone)


def grouped_run(hvd, groups):
    torch.manual_seed(42)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    named = list(model.named_parameters())
    if groups == "listed":
        groups = [[named[0][1], named[-1][1]]]
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=named, groups=groups)
    for step in range(3):
        data, target = batch(hvd.rank(), step)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(data), target).backward()
        optimizer.step()
    return model, optimizer


@pytest.mark.parametrize("groups", [2, "listed"])
def test_groups_are_buckets_and_match_horovods(hvd, groups):
    """Horovod's explicit groups: an integer splits the parameters in registration order (split_list),
    a list groups the listed parameters and leaves the others alone; hvdkit makes each group a bucket."""
    ours, optimizer = grouped_run(hvdkit.torch, groups)
    theirs, _ = grouped_run(horovod.torch, groups)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    count = len(list(ours.parameters()))
    planned = sorted(sorted(slot.index for slot in bucket.slots) for bucket in optimizer.buckets)
    if groups == 2:
        half = (count + 1) // 2
        assert planned == [list(range(half)), list(range(half, count))]
    else:
        assert planned == sorted([[0, count - 1]] + [[i] for i in range(1, count - 1)])
