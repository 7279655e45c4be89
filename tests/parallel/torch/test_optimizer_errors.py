"""Bad input to hvdkit.torch: clear errors on every rank, never a hang.

Argument checks that raise before any collective, the same at every world size, are unit tests
(tests/unit/torch/test_optimizer_arguments.py); the errors here need Horovod or other ranks."""
import contextlib
import warnings

import pytest
import torch

import hvdkit.torch as hvdkit_torch
from optimizer_support import FUSION_MB, LR, assert_same_on_every_rank, loss_of, make_model

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def started(hvd):
    hvdkit_torch.init()


def wrap(model=None, **kwargs):
    model = model or make_model()
    named = kwargs.pop("named_parameters", model.named_parameters())
    optimizer = kwargs.pop("optimizer", None) or torch.optim.SGD(model.parameters(), lr=LR)
    return hvdkit_torch.DistributedOptimizer(optimizer, named, fusion_mb=kwargs.pop("fusion_mb", FUSION_MB),
                                             **kwargs)


def test_horovod_and_hvdkit_compression_names_are_accepted(hvd):
    assert wrap(compression=hvd.Compression.fp16).compression.name == "fp16"
    assert wrap(compression=hvdkit_torch.Compression.fp16).compression.name == "fp16"
    assert wrap(compression=hvdkit_torch.Compression.topk(0.01, ef=False)).compression.options["ef"] is False


def rank_dependent_model(hvd):
    """The usual model, except that the last rank's middle layer has one more output."""
    torch.manual_seed(0)
    wide = 17 if hvd.rank() == hvd.size() - 1 else 16
    return torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, wide), torch.nn.ReLU(),
                               torch.nn.Linear(wide, 4))


def test_model_differing_across_ranks_is_caught_at_broadcast_state(hvd):
    if hvd.size() == 1:
        pytest.skip("needs two ranks to differ")
    model = rank_dependent_model(hvd)
    with pytest.raises(ValueError, match=r"broadcast_state: the model differs across ranks: parameter '2.weight' "
                                         r"has shape \(16, 32\).* on ranks? 0\S* but shape \(17, 32\).* on rank \d"):
        hvdkit_torch.broadcast_state(model, root_rank=0)


def test_model_differing_across_ranks_is_caught_at_the_first_step(hvd):
    if hvd.size() == 1:
        pytest.skip("needs two ranks to differ")
    model = rank_dependent_model(hvd)
    opt = wrap(model)
    with pytest.raises(ValueError, match="DistributedOptimizer: the model differs across ranks: parameter '2.weight'"):
        loss_of(model, hvd.rank(), 0).backward()


def test_broadcast_state_copies_root_parameters_and_optimizer_state(hvd):
    model = make_model(seed=hvd.rank())  # different starting points
    opt = wrap(model, compression="topk:0.2")
    root = hvd.size() - 1
    hvdkit_torch.broadcast_state(model, opt, root_rank=root)
    expected = make_model(seed=root)
    for a, b in zip(model.parameters(), expected.parameters()):
        assert torch.equal(a, b)
    loss_of(model, hvd.rank(), 0).backward()
    opt.step()
    assert_same_on_every_rank(hvd, list(model.parameters()))


def test_broadcast_state_initialises_adam_state_without_a_distributed_step(hvd):
    model = make_model()
    opt = wrap(model, optimizer=torch.optim.Adam(model.parameters(), lr=LR))
    before = [p.detach().clone() for p in model.parameters()]
    hvdkit_torch.broadcast_state(model, opt)
    assert opt._reducer.steps == 0  # no exchange happened
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # Adam on zero grads: no move
    assert len(opt.state) == len(before)


def test_zero_grad_between_backward_and_step_is_refused(hvd):
    model = make_model()
    opt = wrap(model)
    loss_of(model, hvd.rank(), 0).backward()
    with pytest.raises(AssertionError, match="zero_grad\\(\\) was called after loss.backward\\(\\)"):
        opt.zero_grad()
    opt.step()


def test_too_many_backward_passes_are_refused_naming_the_parameter(hvd):
    model = make_model()
    opt = wrap(model)
    loss_of(model, hvd.rank(), 0).backward()
    with pytest.raises(AssertionError, match=r"more than backward_passes_per_step times .* \(parameter '4.bias'\)"):
        loss_of(model, hvd.rank(), 1).backward()
    opt.step()


@contextlib.contextmanager
def nan_gradient_on_last_rank(hvd, model):
    """Inside the block, backward gives the last rank's '2.weight' a NaN gradient entry."""
    def poison(grad):
        grad = grad.clone()
        grad[0, 0] = float("nan")
        return grad

    handle = model[2].weight.register_hook(poison) if hvd.rank() == hvd.size() - 1 else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


@pytest.mark.parametrize("spec", ["none", "fp16,ef=1", "int8,ef=1", "topk:0.1", "onebit", "powersgd:2"])
@pytest.mark.parametrize("hierarchical", [False, True])
def test_nan_gradients_skip_the_step_on_every_rank_and_keep_residuals_clean(hvd, spec, hierarchical):
    model = make_model()
    opt = wrap(model, compression=spec, hierarchical=hierarchical)
    for step in range(2):
        opt.zero_grad()
        loss_of(model, hvd.rank(), step).backward()
        opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    with warnings.catch_warnings(record=True) as caught, nan_gradient_on_last_rank(hvd, model):
        warnings.simplefilter("always")
        loss_of(model, hvd.rank(), 2).backward()
        opt.step()
    assert any("not finite" in str(w.message) and "2.weight" in str(w.message) for w in caught)
    assert opt.last_step_stats.skipped
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for state in opt._reducer.states.values():
        for tensor in (state.residual, state.memory):
            assert tensor is None or bool(torch.isfinite(tensor).all())
    opt.zero_grad()
    loss_of(model, hvd.rank(), 3).backward()
    opt.step()
    assert not opt.last_step_stats.skipped
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert_same_on_every_rank(hvd, list(model.parameters()))


def test_nan_gradients_raise_on_every_rank_with_nonfinite_raise(hvd):
    model = make_model()
    opt = wrap(model, compression="topk:0.1", nonfinite="raise")
    opt.zero_grad()
    with nan_gradient_on_last_rank(hvd, model):
        loss_of(model, hvd.rank(), 0).backward()
    with pytest.raises(FloatingPointError, match="not finite.*2.weight"):
        opt.synchronize()


def test_checkpoint_carries_error_feedback_state(hvd):
    model = make_model()
    opt = wrap(model, compression="topk:0.1,min_numel=0")
    loss_of(model, hvd.rank(), 0).backward()
    opt.step()
    saved = opt.state_dict()
    assert saved["hvdkit"]["steps"] == 1
    assert bool(saved["hvdkit"]["buckets"]) == (hvd.size() > 1)  # a lone rank compresses nothing
    other_model = make_model()
    other = wrap(other_model, compression="topk:0.1,min_numel=0")
    other.load_state_dict(saved)
    for key, state in opt._reducer.states.items():
        assert torch.equal(other._reducer.states[key].residual, state.residual)
    with pytest.raises(ValueError, match="saved with compression 'topk:0.1"):
        wrap(make_model(), compression="onebit").load_state_dict(saved)
