"""Buckets follow the order in which backward produces gradients.

The model's six equal layers run l0 -> l5 but are registered scrambled, so
buckets planned in reverse registration order (Horovod's plan, and hvdkit's
with ``bucket_order="registration"``) pair gradients that arrive far apart:
each bucket waits for its late member. With the default
``bucket_order="ready"`` the first step records the order PyTorch's gradient
hooks fire in and the buckets are built in that order, so from the second
step each bucket leaves as soon as its two gradients exist. The updates are
the same either way.
"""
import pytest
import torch

import hvdkit.torch as hvdkit_torch
from optimizer_support import assert_same_on_every_rank

pytestmark = pytest.mark.timeout(120)

WIDTH = 16
REGISTERED = [0, 5, 1, 4, 2, 3]  # layer numbers in registration order
TWO_LAYERS_MB = 2 * WIDTH * WIDTH * 4 / 2**20  # buckets of two layers


class Scrambled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        layers = {i: torch.nn.Linear(WIDTH, WIDTH, bias=False) for i in range(6)}
        for i in REGISTERED:
            self.add_module(f"l{i}", layers[i])
        self.layers = [layers[i] for i in range(6)]

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


def run(hvd, bucket_order, steps=3):
    """(model, optimizer, parameter names in the order their hooks fired, and per step the number of
    buckets launched after each gradient arrived)."""
    model = Scrambled()
    ready, launched = [], []
    opt = hvdkit_torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), model.named_parameters(),
                                            fusion_mb=TWO_LAYERS_MB, bucket_order=bucket_order)

    def probe(name):
        def arrived(_):
            ready.append(name)
            launched[-1].append(sum(opt._reducer.launched(b.index) for b in opt.buckets))
        return arrived

    for name, p in model.named_parameters():  # after the optimizer's hooks: counts the bucket just launched
        p.register_post_accumulate_grad_hook(probe(name))
    g = torch.Generator().manual_seed(hvd.rank())
    for _ in range(steps):
        x, y = torch.randn(8, WIDTH, generator=g), torch.randn(8, WIDTH, generator=g)
        opt.zero_grad()
        launched.append([])
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return model, opt, ready[:6], launched


def test_buckets_follow_the_order_gradients_arrive_in(hvd):
    hvdkit_torch.init()
    model, opt, order, launched = run(hvd, "ready")
    assert order == [f"l{i}.weight" for i in reversed(range(6))]
    assert [slot.name for bucket in opt.buckets for slot in bucket.slots] == order
    assert len(opt.buckets) == 3
    if hvd.size() > 1:
        assert launched[0] == [0] * 6  # the first step's buckets leave once backward has finished
        assert launched[1:] == [[0, 1, 1, 2, 2, 3]] * 2  # then each as soon as its two gradients exist
    reference, old, _, launched_old = run(hvd, "registration")
    if hvd.size() > 1:
        assert launched_old[1] == [0, 0, 0, 1, 2, 3]  # each bucket waits for its late member
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)
    assert_same_on_every_rank(hvd, list(model.parameters()))
