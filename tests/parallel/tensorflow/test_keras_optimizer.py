"""hvdkit's Keras DistributedOptimizer under ``model.fit`` on real ranks equals one process
training on every rank's batches at once.

Every rank can build every rank's data from the seed, so each rank trains its
own shard with the DistributedOptimizer and, alone, a plain-Keras reference on
the global batches (rank 0's rows, then rank 1's, ... per step): with equal
batch sizes the gradient of the global mean loss is the average of the ranks'
gradients, so weights must agree to float32 rounding.
"""
import keras
import numpy as np
import pytest

import hvdkit.tensorflow.keras as hvdk

pytestmark = pytest.mark.timeout(180)

FEATURES, HIDDEN, OUTPUTS = 6, 8, 3
BATCH = 4  # per rank and step
LR = 0.1


@pytest.fixture(scope="module", autouse=True)
def horovod():
    hvdk.init()


def rank_data(rank, steps, seed):
    rng = np.random.default_rng([seed, rank])
    return (rng.standard_normal((steps * BATCH, FEATURES)).astype(np.float32),
            rng.standard_normal((steps * BATCH, OUTPUTS)).astype(np.float32))


def global_data(size, steps, seed, poison=None):
    """Step s of the reference = every rank's batch s, concatenated in rank order; ``poison`` (rank, step)
    puts a NaN in that rank's batch, as ``poisoned`` does on that rank."""
    parts = [poisoned(rank_data(r, steps, seed), r, poison) for r in range(size)]
    rows = [slice(s * BATCH, (s + 1) * BATCH) for s in range(steps)]
    return tuple(np.concatenate([p[i][row] for row in rows for p in parts]) for i in range(2))


def poisoned(data, rank, poison):
    x, y = data
    if poison is not None and poison[0] == rank:
        x = x.copy()
        x[poison[1] * BATCH, 0] = np.nan
    return x, y


def make_model(seed=3):
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(HIDDEN, activation="tanh"),
                              keras.layers.Dense(OUTPUTS)])
    rng = np.random.default_rng(seed)
    model.set_weights([0.5 * rng.standard_normal(w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def fit(optimizer, x, y, batch_size, run_eagerly=False):
    model = make_model()
    model.compile(optimizer=optimizer, loss="mse", run_eagerly=run_eagerly)
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    return model


def train(make_optimizer, steps, seed, poison=None, run_eagerly=False, **distributed):
    """(this rank's model trained on its own batches with the DistributedOptimizer, the optimizer)."""
    optimizer = hvdk.DistributedOptimizer(make_optimizer(), **distributed)
    rank = hvdk.rank()
    return fit(optimizer, *poisoned(rank_data(rank, steps, seed), rank, poison), BATCH, run_eagerly), optimizer


def reference(make_optimizer, x, y):
    """One process, plain Keras, on the global batches (eager: nothing to trace, quick for a few steps)."""
    return fit(make_optimizer(), x, y, BATCH * hvdk.size(), run_eagerly=True)


def train_both(make_optimizer, steps, seed, poison=None, **distributed):
    """(distributed model, its optimizer, reference model)."""
    model, optimizer = train(make_optimizer, steps, seed, poison, **distributed)
    return model, optimizer, reference(make_optimizer, *global_data(hvdk.size(), steps, seed, poison))


def assert_weights_close(got, want, atol=1e-5):
    for a, b in zip(got.get_weights(), want.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol)


def assert_same_on_every_rank(model):
    for i, w in enumerate(model.get_weights()):
        root = hvdk.broadcast(w, root_rank=0, name=f"keras.same.{i}").numpy()
        np.testing.assert_array_equal(w, root, err_msg=f"weight {i} differs from rank 0's")


@pytest.mark.parametrize("hierarchical", [False, True])
def test_fit_equals_single_process_reference(hierarchical):
    topo = hvdk.init()
    if hierarchical and not topo.hierarchical:
        pytest.skip("one node (or one rank per node): hierarchical mode is the flat exchange, tested beside")
    steps = 5
    model, optimizer, want = train_both(lambda: keras.optimizers.SGD(LR, momentum=0.9), steps, seed=11,
                                        hierarchical=hierarchical)
    assert_weights_close(model, want)
    assert_same_on_every_rank(model)
    assert optimizer.exchange.steps == steps
    stats = optimizer.exchange.last_step_stats
    assert stats.dense_bytes == 4 * sum(w.size for w in model.get_weights()) and not stats.skipped


@pytest.mark.parametrize("horovod_api", [False, True], ids=["keras_eager", "horovod_traced"])
def test_gradient_accumulation_exchanges_once_per_update(horovod_api):
    """Keras's gradient_accumulation_steps (run eagerly: ops.cond runs one branch), and Horovod's
    backward_passes_per_step (traced: the exchange sits in a tf.cond branch), which sums the passes'
    gradients where Keras averages them: the same as Keras at twice the learning rate."""
    micro_steps, accumulate = 6, 2
    make = lambda lr: keras.optimizers.SGD(lr, momentum=0.9, gradient_accumulation_steps=accumulate)  # noqa: E731
    if horovod_api:
        model, optimizer = train(lambda: keras.optimizers.SGD(LR, momentum=0.9), micro_steps, seed=12,
                                 backward_passes_per_step=accumulate)
        want = reference(lambda: make(accumulate * LR), *global_data(hvdk.size(), micro_steps, 12))
    else:
        model, optimizer = train(lambda: make(LR), micro_steps, seed=12, run_eagerly=True)
        want = reference(lambda: make(LR), *global_data(hvdk.size(), micro_steps, 12))
    assert optimizer.exchange.steps == micro_steps // accumulate
    assert int(optimizer.iterations.numpy()) == micro_steps // accumulate
    assert_weights_close(model, want)


def test_clipping_sees_the_averaged_gradients():
    steps, clip = 4, 0.05
    model, _, clipped = train_both(lambda: keras.optimizers.SGD(LR, clipnorm=clip), steps, seed=13)
    assert_weights_close(model, clipped)
    unclipped = reference(lambda: keras.optimizers.SGD(LR), *global_data(hvdk.size(), steps, 13))
    gap = max(np.abs(a - b).max() for a, b in zip(clipped.get_weights(), unclipped.get_weights()))
    assert gap > 1e-3, "clipnorm never bit: this test would not notice clipping before averaging"


def test_nonfinite_gradient_on_one_rank_skips_the_step_on_every_rank():
    steps, bad_step = 3, 1
    poison = (hvdk.size() - 1, bad_step)
    make = lambda: keras.optimizers.SGD(LR, momentum=0.9)  # noqa: E731
    with pytest.warns(RuntimeWarning, match="not finite"):
        model, optimizer = train(make, steps, seed=14, poison=poison)
    x, y = global_data(hvdk.size(), steps, 14)
    keep = np.r_[0:bad_step * BATCH * hvdk.size(), (bad_step + 1) * BATCH * hvdk.size():len(x)]
    assert_weights_close(model, reference(make, x[keep], y[keep]))  # the same run without the bad step
    assert_same_on_every_rank(model)
    assert optimizer.exchange.steps == steps and not optimizer.exchange.last_step_stats.skipped


def test_loss_scale_optimizer_checks_the_averaged_gradients():
    steps, bad_step = 4, 2
    poison = (hvdk.size() - 1, bad_step)
    make = lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(LR, momentum=0.9),  # noqa: E731
                                                       initial_scale=2.0**10)
    model, optimizer, want = train_both(make, steps, seed=15, poison=poison)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert float(optimizer.dynamic_scale.numpy()) == 2.0**9, "the overflow step did not halve the loss scale"
    assert float(want.optimizer.dynamic_scale.numpy()) == 2.0**9
    assert np.all(np.isfinite(np.concatenate([w.ravel() for w in model.get_weights()])))
    assert_weights_close(model, want)
    assert_same_on_every_rank(model)
    assert optimizer.exchange.steps == steps


@pytest.mark.parametrize("spec", ["topk:0.2,min_numel=1", "onebit,block=64,min_numel=1"])
def test_error_feedback_follows_the_loss_scale(spec):
    """A LossScaleOptimizer that doubles its scale after every step and halves it on an overflow gives the
    same compressed training as no loss scaling, the overflowing step left out: residuals are rescaled when
    the scale changes, and the overflowing step's are not kept."""
    if hvdk.size() == 1:
        pytest.skip("a lone rank compresses nothing")
    steps, bad_step = 6, 3
    rank = hvdk.rank()
    make = lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(LR, momentum=0.9),  # noqa: E731
                                                       initial_scale=2.0**8, dynamic_growth_steps=1)
    poison = (hvdk.size() - 1, bad_step)
    optimizer = hvdk.DistributedOptimizer(make(), compression=spec)
    model = fit(optimizer, *poisoned(rank_data(rank, steps, 16), rank, poison), BATCH)
    assert float(optimizer.dynamic_scale.numpy()) == 2.0**(8 + (steps - 1) - 1)
    x, y = rank_data(rank, steps, 16)
    keep = np.r_[0:bad_step * BATCH, (bad_step + 1) * BATCH:len(x)]
    plain = hvdk.DistributedOptimizer(keras.optimizers.SGD(LR, momentum=0.9), compression=spec)
    want = fit(plain, x[keep], y[keep], BATCH)
    assert_weights_close(model, want)
    assert_same_on_every_rank(model)
