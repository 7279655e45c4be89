"""Bad input to hvdkit.tensorflow: clear errors on every rank, never a hang.

Argument checks that raise before any collective, the same at every world size, are unit tests
(tests/unit/tensorflow/test_exchange_arguments.py); the errors here need Horovod or other ranks."""
import warnings

import numpy as np
import pytest
import tensorflow as tf

import hvdkit.tensorflow as hvdkit_tf
from tape_support import WIDTHS, assert_same_on_every_rank, loss_of, make_model, sgd, snapshot

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def started(hvd):
    hvdkit_tf.init()


def test_gradients_that_do_not_match_the_variables_are_explained():
    exchange = hvdkit_tf.GradientExchange([tf.Variable(tf.zeros([2, 3]), name="w")])
    with pytest.raises(ValueError, match="got 2 gradients for 1 variables"):
        exchange.reduce([None, None])
    with pytest.raises(ValueError, match=r"gradient 0 has shape \(3,\) and dtype float32, but its variable \(w:0\) "
                                         r"has shape \(2, 3\)"):
        exchange.reduce([tf.zeros([3])])


def rank_dependent_model(hvd):
    """The usual model, except that the last rank's middle layer has one more output."""
    widths = list(WIDTHS)
    if hvd.rank() == hvd.size() - 1:
        widths[2] += 1
    return make_model(widths=widths)


DIFFERS = (r"hvdkit.tensorflow: the model differs across ranks: parameter '2/kernel' has shape \(32, 16\).* on "
           r"ranks? 0.* but shape \(32, 17\).* on rank \d.*variables on this rank: 0/kernel is '.*kernel'")


def test_variables_differing_across_ranks_fail_on_every_rank(hvd):
    if hvd.size() == 1:
        pytest.skip("needs two ranks to differ")
    model = rank_dependent_model(hvd)
    with tf.GradientTape() as tape:
        loss = loss_of(model, hvd.rank(), 0)
    with pytest.raises(ValueError, match=DIFFERS):
        hvdkit_tf.DistributedGradientTape(tape).gradient(loss, model.trainable_variables)


def test_variables_differing_across_ranks_fail_when_traced(hvd):
    if hvd.size() == 1:
        pytest.skip("needs two ranks to differ")
    model = rank_dependent_model(hvd)

    @tf.function(autograph=False)  # AutoGraph's error rewriting would take seconds; the step is plain Python
    def step():
        with tf.GradientTape() as tape:
            loss = loss_of(model, 0, 0)
        return hvdkit_tf.DistributedGradientTape(tape, compression="topk:0.1").gradient(loss,
                                                                                         model.trainable_variables)

    with pytest.raises(ValueError, match=DIFFERS):
        step()


def test_broadcast_of_variables_differing_across_ranks_fails_on_every_rank(hvd):
    if hvd.size() == 1:
        pytest.skip("needs two ranks to differ")
    with pytest.raises(ValueError, match=DIFFERS.replace("hvdkit.tensorflow", "hvdkit broadcast_variables")):
        hvdkit_tf.broadcast_variables(rank_dependent_model(hvd).trainable_variables, root_rank=0)


def test_broadcast_refuses_what_it_cannot_broadcast(hvd):
    with pytest.raises(TypeError, match=r"variables\[1\] must be a tf.Variable or a Keras variable, got EagerTensor"):
        hvdkit_tf.broadcast_variables([tf.Variable(1.0), tf.constant(1.0)])
    with pytest.raises(ValueError, match=rf"root_rank must be a rank in 0..{hvd.size() - 1}, got {hvd.size()}"):
        hvdkit_tf.broadcast_variables([tf.Variable(1.0)], root_rank=hvd.size())


def nan_on_last_rank(hvd, model, step, **kwargs):
    """One step whose loss gives the last rank's second kernel ('2/kernel') one NaN gradient entry."""
    poison = float("nan") if hvd.rank() == hvd.size() - 1 else 0.0
    with tf.GradientTape() as tape:
        loss = loss_of(model, hvd.rank(), step) + poison * model.trainable_variables[2][0, 0]
    tape = hvdkit_tf.DistributedGradientTape(tape, **kwargs)
    return tape.gradient(loss, model.trainable_variables), tape


def clean_step(hvd, model, step, **kwargs):
    with tf.GradientTape() as tape:
        loss = loss_of(model, hvd.rank(), step)
    tape = hvdkit_tf.DistributedGradientTape(tape, **kwargs)
    grads = tape.gradient(loss, model.trainable_variables)
    assert bool(tape.finite)
    sgd(model, grads)
    return tape


@pytest.mark.parametrize("spec", ["none", "fp16,ef=1", "int8,ef=1", "topk:0.1", "onebit", "powersgd:2"])
@pytest.mark.parametrize("hierarchical", [False, True])
def test_nan_gradients_are_not_finite_on_every_rank_and_keep_residuals_clean(hvd, spec, hierarchical):
    if hierarchical and not hvdkit_tf.init().hierarchical:
        pytest.skip("one node (or one rank per node): hierarchical mode is the flat exchange, tested above")
    model = make_model()
    kwargs = {"compression": spec, "hierarchical": hierarchical}
    clean_step(hvd, model, 0, **kwargs)  # residuals (and PowerSGD's Q) hold finite values now
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grads, tape = nan_on_last_rank(hvd, model, 1, **kwargs)
    assert not bool(tape.finite) and tape.last_step_stats.skipped
    assert any("not finite" in str(w.message) and "2/kernel" in str(w.message) for w in caught)
    assert not all(np.isfinite(g.numpy()).all() for g in grads)  # handed back as they are: the caller skips
    for state in tape.exchange._reducer.states.values():
        for tensor in (state.residual, state.memory):
            assert tensor is None or np.isfinite(tensor.numpy()).all()
    clean_step(hvd, model, 2, **kwargs)
    assert all(np.isfinite(w).all() for w in snapshot(model))
    assert_same_on_every_rank(hvd, snapshot(model), name=f"nan.{spec}.{hierarchical}")


def test_nan_gradients_raise_on_every_rank_with_nonfinite_raise(hvd):
    model = make_model()
    with pytest.raises(FloatingPointError, match="not finite.*2/kernel"):
        nan_on_last_rank(hvd, model, 0, compression="topk:0.1", nonfinite="raise")


def test_nan_gradients_inside_tf_function(hvd):
    """Traced: "skip" gives finite False on every rank; "raise" fails the step on every rank with the
    FloatingPointError's message (a graph cannot raise a Python exception type)."""
    model = make_model()
    poison = tf.constant(float("nan") if hvd.rank() == hvd.size() - 1 else 0.0)

    def step(nonfinite):
        with tf.GradientTape() as tape:
            loss = loss_of(model, hvd.rank(), 0) + poison * model.trainable_variables[2][0, 0]
        tape = hvdkit_tf.DistributedGradientTape(tape, compression="onebit", nonfinite=nonfinite)
        tape.gradient(loss, model.trainable_variables)
        return tape.finite

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not bool(tf.function(step, autograph=False)("skip"))
    with pytest.raises(tf.errors.OpError, match="FloatingPointError: hvdkit: the averaged gradients .* not finite"):
        tf.function(step, autograph=False)("raise")


def test_exchange_inside_an_xla_compiled_function_is_refused_clearly():
    model = make_model()

    @tf.function(jit_compile=True, autograph=False)
    def step():
        with tf.GradientTape() as tape:
            loss = loss_of(model, 0, 0)
        return hvdkit_tf.DistributedGradientTape(tape).gradient(loss, model.trainable_variables)

    with pytest.raises(RuntimeError, match=r"cannot run inside an XLA-compiled function \(jit_compile=True\)"):
        step()


def test_exchange_state_round_trips_through_state_dict(hvd):
    model = make_model()
    tape = clean_step(hvd, model, 0, compression="topk:0.1,min_numel=0")
    saved = tape.exchange.state_dict()
    assert saved["steps"] == 1 and bool(saved["buckets"]) == (hvd.size() > 1)  # a lone rank compresses nothing
    other = hvdkit_tf.GradientExchange(model.trainable_variables, "topk:0.1,min_numel=0")
    other.load_state_dict(saved)
    assert other.steps == 1
    for key, state in tape.exchange._reducer.states.items():
        assert np.array_equal(other._reducer.states[key].residual.numpy(), state.residual.numpy())
    with pytest.raises(ValueError, match="saved with compression 'topk:0.1"):
        hvdkit_tf.GradientExchange(model.trainable_variables, "onebit").load_state_dict(saved)
