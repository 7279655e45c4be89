"""Deep Gradient Compression's options on the sparsifiers: the warm-up schedule of the paper, the spec
grammar, and which optimizers the momentum may move out of."""
import pytest

from hvdkit.compression import dgc
from hvdkit.compression.spec import parse


def test_sparsity_warm_up_follows_the_paper():
    """DGC (section 3.4): sparsity 75 %, 93.75 %, 98.4375 %, 99.6 % over the warm-up, then the target."""
    kept = [dgc.density(0.001, 8, step) for step in range(10)]
    assert kept == [0.25, 0.25, 0.0625, 0.0625, 0.015625, 0.015625, 0.00390625, 0.00390625, 0.001, 0.001]
    assert [dgc.density(0.05, 8, step) for step in (0, 2, 4, 6, 8)] == [0.25, 0.0625, 0.05, 0.05, 0.05]
    assert dgc.density(0.01, 0, 0) == 0.01


def test_options_parse_with_documented_defaults_and_aliases():
    spec = parse("topk:0.01")
    assert (spec.options["mc"], spec.options["mask"], spec.options["clip"], spec.options["ramp"]) == \
        ("0", True, 0.0, 0)
    spec = parse("randomk:0.01,momentum_correction=1,momentum_masking=0,clip_norm=2.5,sparsity_warmup=400")
    assert (spec.options["mc"], spec.options["mask"], spec.options["clip"], spec.options["ramp"]) == \
        ("1", False, 2.5, 400)
    assert parse("randomk:0.01").options["min_numel"] == 1024
    assert parse("randomk:0.01,min_numel=0").options["min_numel"] == 0


@pytest.mark.parametrize("text,problem", [
    ("topk:0.01,mc=2", "option mc='2': expected auto, 0 or 1"),
    ("topk:0.01,clip=-1", "option clip='-1': expected a number >= 0"),
    ("randomk:0.1,ramp=x", "option ramp='x': expected an integer"),
    ("int8,mc=1", "unknown option 'mc=1'"),
])
def test_bad_options_name_the_value_and_what_is_valid(text, problem):
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
        parse(text)


SGD = dgc.OptimizerMomentum("torch.optim.SGD", 0.9, True)
ADAM = dgc.OptimizerMomentum("torch.optim.Adam", why_not="the wrapped optimizer is Adam, not torch.optim.SGD")


def test_auto_moves_sgds_momentum_and_leaves_every_other_optimizer_alone():
    auto = parse("topk:0.01,mc=auto")
    assert dgc.momentum_plan(auto, SGD, ranks=2) == (0.9, True)
    assert dgc.momentum_plan(auto, ADAM, ranks=2) is None
    assert dgc.momentum_plan(auto, dgc.OptimizerMomentum("torch.optim.SGD", 0.0), ranks=2) is None
    assert dgc.momentum_plan(auto, SGD, ranks=1) is None  # a lone rank compresses nothing
    assert dgc.momentum_plan(parse("topk:0.01,mc=auto,ef=0"), SGD, ranks=2) is None
    assert dgc.momentum_plan(auto, SGD, ranks=2, local_sgd=True) is None
    assert dgc.momentum_plan(parse("topk:0.01"), SGD, ranks=2) is None  # off by default
    assert dgc.momentum_plan(parse("int8"), SGD, ranks=2) is None  # not a sparsifier


@pytest.mark.parametrize("spec,optimizer,local_sgd,problem", [
    ("topk:0.01,mc=1", ADAM, False, "Adam, not torch.optim.SGD"),
    ("topk:0.01,mc=1,ef=0", SGD, False, "drop ef=0"),
    ("randomk:0.01,mc=1", SGD, True, "use mc=0 with local_sgd"),
    ("randomk:0.01,mc=1", dgc.OptimizerMomentum("torch.optim.SGD", 0.0), False, "has momentum 0.0"),
])
def test_mc_1_refuses_what_it_cannot_apply(spec, optimizer, local_sgd, problem):
    with pytest.raises(ValueError, match=f"compression '{spec.split(',')[0]}.*mc=1.*{problem}"):
        dgc.momentum_plan(parse(spec), optimizer, ranks=2, local_sgd=local_sgd)
