"""Ranks that disagree raise on every rank within seconds, naming the parameter or setting, every value
and the ranks holding it; they never hang. Each rank asserts its own message and that every rank raised
the same one. A mismatch needs two ranks: at -np 1 those tests skip; the rest compare against a
single-process computation."""
import itertools
import time

import pytest
import torch

import hvdkit.torch as hvdkit_torch
from hvdkit.exchange.consistency import ranks_text
from hvdkit.torch import distributed_optimizer as optimizer_module
from optimizer_support import FUSION_MB, LR, batch, loss_of, make_model

pytestmark = pytest.mark.timeout(90)  # a hang fails here; the tests themselves want seconds

PROMPT_S = 30.0  # "within seconds", with room for a loaded 2-core machine


@pytest.fixture(autouse=True)
def started(hvd):
    hvdkit_torch.init()


@pytest.fixture
def culprit(hvd):
    if hvd.size() == 1:
        pytest.skip("a mismatch needs two ranks")
    return hvd.size() - 1


def others(hvd):
    return ranks_text(range(hvd.size() - 1))


def wrap(model, **kwargs):
    kwargs.setdefault("fusion_mb", FUSION_MB)
    return hvdkit_torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=LR),
                                             named_parameters=model.named_parameters(), **kwargs)


def raised_on_every_rank(hvd, action, error=ValueError):
    """Run ``action``; it must raise ``error`` promptly; returns the message after checking that every
    rank raised the same one."""
    start = time.monotonic()
    with pytest.raises(error) as info:
        action()
    elapsed = time.monotonic() - start
    assert elapsed < PROMPT_S, f"took {elapsed:.1f} s to raise"
    message = str(info.value)
    everyone = hvd.allgather_object(message, name="test_mismatch.messages")
    assert all(m == message for m in everyone), everyone
    return message


def model_with_width(wide, extra_layer=False):
    torch.manual_seed(0)
    layers = [torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, wide), torch.nn.ReLU(),
              torch.nn.Linear(wide, 4)]
    if extra_layer:
        layers.append(torch.nn.Linear(4, 4))
    return torch.nn.Sequential(*layers)


# --- models that differ from the start ------------------------------------------------------------


def test_a_layer_of_another_size_on_one_rank(hvd, culprit):
    model = model_with_width(17 if hvd.rank() == culprit else 16)
    opt = wrap(model)
    message = raised_on_every_rank(hvd, lambda: loss_of(model, hvd.rank(), 0).backward())
    assert message.startswith("hvdkit DistributedOptimizer: the model differs across ranks: parameter ")
    assert (f"parameter '2.weight' has shape (16, 32), dtype float32 on {others(hvd)} but shape (17, 32), "
            f"dtype float32 on rank {culprit}") in message
    del opt


def test_a_different_number_of_parameters_on_one_rank(hvd, culprit):
    model = model_with_width(16, extra_layer=hvd.rank() == culprit)
    opt = wrap(model)
    message = raised_on_every_rank(hvd, lambda: model(batch(hvd.rank(), 0)[0]).sum().backward())
    assert message == (f"hvdkit DistributedOptimizer: the model differs across ranks: parameter '5.weight' exists "
                       f"on rank {culprit} but not on {others(hvd)}")
    del opt


def test_broadcast_state_names_the_parameter_and_the_ranks(hvd, culprit):
    model = model_with_width(17 if hvd.rank() == culprit else 16)
    message = raised_on_every_rank(hvd, lambda: hvdkit_torch.broadcast_state(model, root_rank=0))
    assert message == (f"broadcast_state: the model differs across ranks: parameter '2.weight' has shape (16, 32), "
                       f"dtype torch.float32 on {others(hvd)} but shape (17, 32), dtype torch.float32 on rank "
                       f"{culprit}")


# --- settings that differ -------------------------------------------------------------------------


@pytest.mark.parametrize("mine,theirs,named", [
    ({"compression": "topk:0.1"}, {"compression": "topk:0.2"}, "compression is 'topk:0.1' on {others} but "
                                                               "'topk:0.2' on rank {culprit}"),
    ({"compression": "fp16"}, {"compression": "none"}, "compression is 'fp16' on {others} but 'none' on rank {culprit}"),
    ({"compression": "topk:0.1"}, {"compression": "topk:0.1,warmup=3"}, "compression option warmup is 0 on {others} "
                                                                        "but 3 on rank {culprit}"),
    ({"compression": "topk:0.1"}, {"compression": "topk:0.1,min_numel=64"}, "compression option min_numel is 1024 on "
                                                                            "{others} but 64 on rank {culprit}"),
    ({"fusion_mb": FUSION_MB}, {"fusion_mb": 1}, "fusion_mb is 0.002 on {others} but 1.0 on rank {culprit}"),
    ({}, {"op": hvdkit_torch.Sum}, "op is 'average' on {others} but 'sum' on rank {culprit}"),
], ids=["spec", "algorithm", "warmup", "min_numel", "fusion_mb", "op"])
def test_settings_differing_on_one_rank(hvd, culprit, mine, theirs, named):
    model = make_model()
    opt = wrap(model, **(theirs if hvd.rank() == culprit else mine))
    message = raised_on_every_rank(hvd, lambda: loss_of(model, hvd.rank(), 0).backward())
    assert message == ("hvdkit DistributedOptimizer: the settings differ across ranks: "
                       + named.format(others=others(hvd), culprit=culprit))
    del opt


def test_hierarchical_on_some_ranks_only(hvd, topo, culprit):
    if not topo.hierarchical:
        pytest.skip("hierarchical mode needs several nodes of several ranks (HVDKIT_RANKS_PER_NODE=2 at -np 4)")
    model = make_model()
    opt = wrap(model, compression="topk:0.1", hierarchical=hvd.rank() == culprit)
    message = raised_on_every_rank(hvd, lambda: loss_of(model, hvd.rank(), 0).backward())
    assert message.endswith(f"the settings differ across ranks: hierarchical is False on {others(hvd)} but True on "
                            f"rank {culprit}")
    del opt


def test_optimizers_created_in_a_different_order(hvd, culprit, monkeypatch):
    # As if the culprit had built one more DistributedOptimizer earlier: its op names would never pair up.
    monkeypatch.setattr(optimizer_module, "_ids", itertools.count(901 if hvd.rank() == culprit else 900))
    model = make_model()
    opt = wrap(model)
    message = raised_on_every_rank(hvd, lambda: loss_of(model, hvd.rank(), 0).backward())
    assert message.endswith(f"the optimizer's name (create DistributedOptimizers in the same order on every rank) "
                            f"is 'o900' on {others(hvd)} but 'o901' on rank {culprit}")
    del opt


# --- tensors that change after the first step -----------------------------------------------------


def forward(model, x, double_middle):
    """The model's forward, with its middle layer run in float64 when ``double_middle``."""
    h = model[1](model[0](x))
    h = model[2](h.double()).float() if double_middle else model[2](h)
    return model[4](model[3](h))


@pytest.mark.parametrize("compression,hierarchical", [("none", False), ("topk:0.1", False), ("powersgd:2", False),
                                                      ("none", True), ("topk:0.1", True)])
def test_a_layer_switched_to_float64_on_one_rank_after_the_first_step(hvd, culprit, compression, hierarchical):
    model = make_model()
    opt = wrap(model, compression=compression, hierarchical=hierarchical)
    for step in range(3):
        switched = step == 1 and hvd.rank() == culprit
        if switched:
            model[2].double()
        x, y = batch(hvd.rank(), step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(forward(model, x, switched), y).backward()
        if step < 1:
            opt.step()
            continue
        message = raised_on_every_rank(hvd, opt.step)
        break
    assert message.startswith("hvdkit DistributedOptimizer: a gradient changed shape or dtype on some ranks after "
                              "the optimizer was built: parameter '2.")
    shape = "(16, 32)" if "'2.weight'" in message else "(16,)"
    assert (f"has shape {shape}, dtype float32 on {others(hvd)} but shape {shape}, dtype float64 on rank {culprit} "
            f"(planned: shape {shape}, dtype float32) (1 more parameter changed too)") in message
    del opt


def test_a_parameter_resized_on_one_rank_after_the_first_step(hvd, culprit):
    model = make_model()
    opt = wrap(model, compression="topk:0.1")
    for step in range(2):
        if step == 1 and hvd.rank() == culprit:
            model[4].weight.data = torch.zeros(5, 16)
            model[4].bias.data = torch.zeros(5)
        opt.zero_grad()
        model(batch(hvd.rank(), step)[0]).pow(2).mean().backward()
        if step == 0:
            opt.step()
    message = raised_on_every_rank(hvd, opt.step)
    assert "parameter '4." in message and f"dtype float32 on rank {culprit} (planned: shape" in message
    assert ("parameter '4.weight' has shape (4, 16), dtype float32 on {o} but shape (5, 16), dtype float32 on rank "
            "{c}".format(o=others(hvd), c=culprit) in message
            or "parameter '4.bias' has shape (4,), dtype float32 on {o} but shape (5,), dtype float32 on rank "
            "{c}".format(o=others(hvd), c=culprit) in message), message
    del opt


def test_after_a_mismatch_the_ranks_go_on_working(hvd, culprit):
    model = make_model()
    opt = wrap(model, compression="topk:0.1")
    for step in range(2):
        switched = step == 1 and hvd.rank() == culprit
        if switched:
            model[2].double()
        opt.zero_grad()
        forward(model, batch(hvd.rank(), step)[0], switched).sum().backward()
        if step == 0:
            opt.step()
    raised_on_every_rank(hvd, opt.step)
    total = hvdkit_torch.allreduce(torch.ones(3), op=hvdkit_torch.Sum, name="test_mismatch.after")
    assert torch.equal(total, torch.full((3,), float(hvd.size())))


# --- gradients that are missing on some ranks: not a mismatch -------------------------------------


class Branchy(torch.nn.Module):
    """The usual model plus a head that only some ranks use at some steps."""

    def __init__(self):
        super().__init__()
        self.trunk = make_model()
        torch.manual_seed(1)
        self.head = torch.nn.Linear(4, 4)

    def forward(self, x, use_head):
        out = self.trunk(x)
        return self.head(out) if use_head else out


def uses_head(rank, step):
    return step == 0 or (step == 1 and rank == 0)  # step 0: every rank; step 1: rank 0 only; then none


def branchy_loss(model, rank, step):
    x, y = batch(rank, step)
    return torch.nn.functional.mse_loss(model(x, uses_head(rank, step)), y)


def reference(size, steps):
    """One process: every rank's gradients (None counts as zero), averaged, plain SGD."""
    model = Branchy()
    for step in range(steps):
        total = [torch.zeros_like(p) for p in model.parameters()]
        for rank in range(size):
            model.zero_grad()
            branchy_loss(model, rank, step).backward()
            for t, p in zip(total, model.parameters()):
                if p.grad is not None:
                    t += p.grad
        with torch.no_grad():
            for t, p in zip(total, model.parameters()):
                p -= LR * t / size
    return list(model.parameters())


@pytest.mark.parametrize("hierarchical", [False, True])
def test_a_gradient_missing_on_some_ranks_counts_as_zero(hvd, hierarchical):
    model = Branchy()
    opt = wrap(model, hierarchical=hierarchical)
    steps = 3
    for step in range(steps):
        opt.zero_grad()
        branchy_loss(model, hvd.rank(), step).backward()
        opt.step()
    for got, expected in zip(model.parameters(), reference(hvd.size(), steps)):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


# --- Horovod collectives called directly ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["shape", "dtype"])
def test_direct_allreduce_of_mismatched_tensors_raises_on_every_rank(hvd, culprit, kind):
    mine = hvd.rank() == culprit
    if kind == "shape":
        tensor, expected = torch.ones(4 if mine else 3), ("Mismatched ALLREDUCE tensor shapes", "[3]", "[4]")
    else:
        tensor = torch.ones(3, dtype=torch.float64 if mine else torch.float32)
        expected = ("Mismatched data types", "float32", "float64")
    message = raised_on_every_rank(hvd, lambda: hvdkit_torch.allreduce(tensor, name=f"test_mismatch.{kind}"),
                                   error=hvdkit_torch.HorovodInternalError)
    assert all(part in message for part in expected), message
    total = hvdkit_torch.allreduce(torch.ones(2), op=hvdkit_torch.Sum, name=f"test_mismatch.{kind}.after")
    assert torch.equal(total, torch.full((2,), float(hvd.size())))
