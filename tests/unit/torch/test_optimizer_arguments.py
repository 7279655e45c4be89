"""hvdkit.torch.DistributedOptimizer refuses bad arguments in one process, before Horovod is used.

Every check here runs while the optimizer is being built, before any collective (and before Horovod
needs to be initialised), so its outcome is the same at every world size. Moved from
tests/parallel/torch/test_optimizer_errors.py and test_optimizer_equivalence.py, where every launch
repeated them; the errors that need other ranks (models or settings differing across ranks, non-finite
gradients on one rank) stay there.
"""
import horovod.torch
import pytest
import torch

import hvdkit.torch as hvdkit_torch

LR = 0.05
FUSION_MB = 0.002


def make_model():
    """The parallel tests' model (tests/parallel/torch/optimizer_support.py): six parameters, the last
    '4.bias' of shape (4,)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 4))


def wrap(model=None, **kwargs):
    model = model or make_model()
    named = kwargs.pop("named_parameters", model.named_parameters())
    optimizer = kwargs.pop("optimizer", None) or torch.optim.SGD(model.parameters(), lr=LR)
    return hvdkit_torch.DistributedOptimizer(optimizer, named, fusion_mb=kwargs.pop("fusion_mb", FUSION_MB),
                                             **kwargs)


@pytest.fixture(autouse=True, scope="module")
def horovod_is_not_started():
    """The checks run before any collective: no Horovod in this process (the unit tests share one process,
    and some check what happens before init, so nothing here may start it)."""
    assert not horovod.torch.is_initialized(), "a unit test started Horovod; unit tests must run without it"


@pytest.mark.parametrize("spec,problem", [("zstd", "unknown algorithm 'zstd'"), ("topk:2", "RATIO must be"),
                                          ("powersgd", "powersgd needs RANK"), ("topk:0.1,eff=1", "unknown option")])
def test_unknown_or_malformed_spec_names_it_and_the_choices(spec, problem):
    with pytest.raises(ValueError) as info:
        wrap(compression=spec)
    assert f"compression spec {spec!r}" in str(info.value) and problem in str(info.value)
    assert "valid specs: none, fp16, bf16, int8[:BLOCK], topk:RATIO" in str(info.value)


def test_compression_of_the_wrong_type_is_refused():
    with pytest.raises(ValueError, match="compression must be a spec string"):
        wrap(compression=0.01)


def test_duplicate_names_are_listed():
    model = make_model()
    named = [("same", p) for p in model.parameters()]
    with pytest.raises(ValueError, match="parameter names must be unique; duplicates: same"):
        wrap(model, named_parameters=named)


def test_missing_names_are_located():
    model = make_model()
    named = list(model.named_parameters())[:-1]
    with pytest.raises(ValueError, match=r"1 of the optimizer's parameters are not named: "
                                         r"param_groups\[0\]\['params'\]\[5\] \(shape \(4,\)\)"):
        wrap(model, named_parameters=named)


def test_one_parameter_under_two_names_is_refused():
    model = make_model()
    named = list(model.named_parameters()) + [("alias", model[0].weight)]
    with pytest.raises(ValueError, match="one parameter appears under two names, '0.weight' and 'alias'"):
        wrap(model, named_parameters=named)


def test_named_parameters_must_be_pairs():
    model = make_model()
    with pytest.raises(ValueError, match=r"sequence of \(name, parameter\) tuples"):
        wrap(model, named_parameters=list(model.parameters()))


def test_optimizer_without_parameters_is_refused():
    with pytest.raises(ValueError, match="the optimizer has no parameters"):
        hvdkit_torch.DistributedOptimizer(torch.optim.SGD([{"params": []}], lr=LR))


def test_optimizer_whose_parameters_are_all_frozen_is_refused():
    model = make_model()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="none of the optimizer's parameters requires grad"):
        wrap(model)


@pytest.mark.parametrize("kwargs,message", [
    ({"hierarchical": "yes"}, "hierarchical must be True, False or 'auto', got 'yes'"),
    ({"fusion_mb": -1}, "fusion_mb must be a number >= 0, got -1"),
    ({"backward_passes_per_step": 0}, "backward_passes_per_step must be > 0, got 0"),
    ({"nonfinite": "ignore"}, "nonfinite must be one of 'skip', 'raise', 'pass', got 'ignore'"),
    ({"gradient_predivide_factor": 0}, "gradient_predivide_factor must be a number > 0, got 0"),
    ({"gradient_predivide_factor": 2.0, "op": hvdkit_torch.Sum},
     "gradient_predivide_factor=2.0 splits an average: it needs op=hvd.Average"),
    ({"groups": 0}, "groups should be a positive integer or a list of lists of parameters, got 0"),
    ({"groups": [[torch.zeros(2)]]}, "groups holds a tensor of shape (2,) that is not a trainable parameter"),
    ({"groups": 2, "num_groups": 2}, "pass groups or num_groups, not both"),
])
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        wrap(**kwargs)


def test_adasum_refuses_hvdkit_compressors():
    model = make_model()
    with pytest.raises(ValueError, match="supports compression 'none' or 'fp16' only"):
        hvdkit_torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=LR), model.named_parameters(),
                                          compression="topk:0.1", op=hvdkit_torch.Adasum)



def test_bucket_order_must_be_known():
    with pytest.raises(ValueError, match="bucket_order must be one of 'ready', 'registration', got 'arrival'"):
        wrap(bucket_order="arrival")

