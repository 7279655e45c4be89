"""hvdkit.tensorflow's DistributedGradientTape and GradientExchange refuse bad arguments in one process,
before Horovod is used.

Every check here runs while the tape or the exchange is being built, before any collective (and before
Horovod needs to be initialised), so its outcome is the same at every world size. Moved from
tests/parallel/tensorflow/test_exchange_errors.py, where every launch repeated them; the errors that need
Horovod or other ranks (variables differing across ranks, non-finite gradients, gradients that do not match
their variables, XLA) stay there.
"""
import horovod.tensorflow
import pytest
import tensorflow as tf

import hvdkit.tensorflow as hvdkit_tf


def wrap(**kwargs):
    return hvdkit_tf.DistributedGradientTape(tf.GradientTape(), **kwargs)


@pytest.fixture(autouse=True, scope="module")
def horovod_is_not_started():
    """The checks run before any collective: no Horovod in this process (the unit tests share one process,
    and some check what happens before init, so nothing here may start it)."""
    assert not horovod.tensorflow.is_initialized(), "a unit test started Horovod; unit tests must run without it"


@pytest.mark.parametrize("spec,problem", [("zstd", "unknown algorithm 'zstd'"), ("topk:2", "RATIO must be"),
                                          ("powersgd", "powersgd needs RANK"), ("topk:0.1,eff=1", "unknown option")])
def test_unknown_or_malformed_spec_names_it_and_the_choices(spec, problem):
    for make in (lambda: wrap(compression=spec), lambda: hvdkit_tf.GradientExchange([tf.Variable(1.0)], spec)):
        with pytest.raises(ValueError) as info:
            make()
        assert f"compression spec {spec!r}" in str(info.value) and problem in str(info.value)
        assert "valid specs: none, fp16, bf16, int8[:BLOCK], topk:RATIO" in str(info.value)


def test_compression_of_the_wrong_type_is_refused():
    with pytest.raises(ValueError, match="compression must be a spec string.*valid specs: none, fp16"):
        wrap(compression=0.01)


@pytest.mark.parametrize("kwargs,message", [
    ({"hierarchical": "yes"}, "hierarchical must be True, False or 'auto', got 'yes'"),
    ({"fusion_mb": -1}, "fusion_mb must be a number >= 0, got -1"),
    ({"nonfinite": "ignore"}, "nonfinite must be one of 'skip', 'raise', 'pass', got 'ignore'"),
    ({"op": 2}, "op must be hvd.Average or hvd.Sum, got 2"),
    ({"gradient_predivide_factor": 2.0}, "gradient_predivide_factor=2.0 is not supported"),
    ({"groups": 2}, "use fusion_mb"),
])
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        wrap(**kwargs)


def test_misuse_of_the_tape_and_the_exchange_is_explained():
    with pytest.raises(TypeError, match="gradtape must be a tf.GradientTape, got list"):
        hvdkit_tf.DistributedGradientTape([])
    with pytest.raises(ValueError, match="already a DistributedGradientTape"):
        hvdkit_tf.DistributedGradientTape(wrap())
    with pytest.raises(ValueError, match="no variables"):
        hvdkit_tf.GradientExchange([])
