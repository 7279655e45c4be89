"""hvdkit.tensorflow.keras.callbacks on real ranks: each does what Horovod's does, on Keras 3.

Probes placed before and after the callback under test record what it
changed; every rank checks against values it computes alone (every rank's
seed is known) or gathers from the others.
"""
import keras
import numpy as np
import pytest

import hvdkit.tensorflow.keras as hvdk

pytestmark = pytest.mark.timeout(180)

FEATURES, OUTPUTS, BATCH = 5, 2, 4


@pytest.fixture(scope="module", autouse=True)
def horovod():
    hvdk.init()


def make_model(seed, dropout=False):
    keras.utils.set_random_seed(seed)  # also seeds the Dropout layer's generator: rank-different states
    layers = [keras.Input((FEATURES,)), keras.layers.Dense(6, activation="tanh")]
    layers += [keras.layers.Dropout(0.1)] if dropout else []
    return keras.Sequential(layers + [keras.layers.Dense(OUTPUTS)])


def rank_data(rank, steps, seed=5):
    rng = np.random.default_rng([seed, rank])
    return (rng.standard_normal((steps * BATCH, FEATURES)).astype(np.float32),
            rng.standard_normal((steps * BATCH, OUTPUTS)).astype(np.float32))


def seed_states(model):
    """The Dropout layers' random-generator states."""
    return [g.state.numpy() for layer in model._flatten_layers() for g in getattr(layer, "_seed_generators", ())]


class Probe(keras.callbacks.Callback):
    """Records what later callbacks (or the callback before it) left behind."""

    def __init__(self):
        super().__init__()
        self.at_begin, self.epoch_logs, self.batches = None, [], []
        self.epoch = None

    def on_train_begin(self, logs=None):
        self.at_begin = ([w.copy() for w in self.model.get_weights()],
                         [v.numpy() for v in self.model.optimizer.variables],
                         seed_states(self.model))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self.model.optimizer
        self.batches.append((self.epoch, batch, float(optimizer.learning_rate.numpy()),
                             [v.numpy() for v in getattr(optimizer, "momentums", [])]))

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_logs.append(dict(logs))


def test_broadcast_makes_model_and_optimizer_equal_to_the_root_rank():
    rank, size = hvdk.rank(), hvdk.size()
    root = size - 1

    def prepared(seed, rank):
        model = make_model(seed, dropout=True)
        optimizer = hvdk.DistributedOptimizer(keras.optimizers.SGD(0.05, momentum=0.9))
        model.compile(optimizer=optimizer, loss="mse")
        optimizer.build(model.trainable_variables)
        for v in optimizer.momentums:
            v.assign(np.full(v.shape, rank + 1.0, np.float32))
        optimizer.iterations.assign(7 * rank)
        return model

    model = prepared(100 + rank, rank)
    root_model = prepared(100 + root, root)  # what the root starts from, rebuilt here from its seed
    probe = Probe()
    model.fit(*rank_data(rank, 2), batch_size=BATCH, epochs=1, verbose=0, shuffle=False,
              callbacks=[hvdk.callbacks.BroadcastGlobalVariablesCallback(root), probe])
    weights, optimizer_vars, seeds = probe.at_begin
    for got, want in zip(weights, root_model.get_weights()):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(optimizer_vars, root_model.optimizer.variables):
        np.testing.assert_array_equal(got, want.numpy())
    assert int(optimizer_vars[0]) == 7 * root  # the iteration counter came from the root too
    if rank != root:  # random-generator states stay per rank (dropout masks stay independent)
        assert seeds and any(not np.array_equal(a, b) for a, b in zip(seeds, seed_states(root_model)))
    for i, w in enumerate(model.get_weights()):  # after a step with averaged gradients: still equal
        np.testing.assert_array_equal(w, hvdk.broadcast(w, root_rank=0, name=f"cb.same.{i}").numpy())


def test_broadcast_root_rank_is_checked():
    with pytest.raises(ValueError, match="root_rank"):
        hvdk.callbacks.BroadcastGlobalVariablesCallback(-1)
    model = make_model(1)
    model.compile(optimizer=hvdk.DistributedOptimizer(keras.optimizers.SGD(0.1)), loss="mse")
    with pytest.raises(ValueError, match=f"root_rank {hvdk.size()} is not a rank"):
        model.fit(*rank_data(0, 1), batch_size=BATCH, verbose=0,
                  callbacks=[hvdk.callbacks.BroadcastGlobalVariablesCallback(hvdk.size())])


def test_metric_average_replaces_logs_by_the_mean_over_ranks():
    rank, size = hvdk.rank(), hvdk.size()
    model = make_model(7)
    model.compile(optimizer=hvdk.DistributedOptimizer(keras.optimizers.SGD(0.05)), loss="mse", metrics=["mae"])
    raw, averaged = Probe(), Probe()
    model.fit(*rank_data(rank, 3), batch_size=BATCH, epochs=2, verbose=0, shuffle=False,
              callbacks=[hvdk.callbacks.BroadcastGlobalVariablesCallback(0), raw,
                         hvdk.callbacks.MetricAverageCallback(), averaged])
    for epoch, (mine, got) in enumerate(zip(raw.epoch_logs, averaged.epoch_logs)):
        names = sorted(mine)
        assert names == ["loss", "mae"] and sorted(got) == names
        every = hvdk.allgather(np.array([[mine[n] for n in names]]), name=f"cb.logs.{epoch}").numpy()
        np.testing.assert_allclose([got[n] for n in names], every.mean(axis=0), rtol=1e-6)
        if size > 1:
            assert not np.allclose(every[0], every[-1]), "ranks logged equal values: averaging is untested"


def test_warmup_sets_horovods_learning_rates_and_corrects_momentum():
    rank, size = hvdk.rank(), hvdk.size()
    steps, warmup, initial = 3, 2, 0.05 * size
    model = make_model(9)
    model.compile(optimizer=hvdk.DistributedOptimizer(keras.optimizers.SGD(initial, momentum=0.9)), loss="mse")
    before, after = Probe(), Probe()
    warm = hvdk.callbacks.LearningRateWarmupCallback(initial, warmup_epochs=warmup, verbose=0)
    model.fit(*rank_data(rank, steps), batch_size=BATCH, epochs=warmup + 1, verbose=0, shuffle=False,
              callbacks=[before, warm, after])
    assert warm.steps_per_epoch == steps  # found from fit()
    corrected = 0
    for (epoch, batch, old_lr, old_v), (_, _, lr, v) in zip(before.batches, after.batches):
        progress = min(epoch + (batch + 1) / steps, warmup)
        assert lr == pytest.approx(initial / size * (progress * (size - 1) / warmup + 1), rel=1e-6), (epoch, batch)
        for a, b in zip(v, old_v):  # SGD's velocity includes the rate: rescaled when the rate changes
            np.testing.assert_allclose(a, b * (lr / old_lr), rtol=1e-5, atol=1e-8)
        corrected += lr != old_lr and any(np.any(b != 0) for b in old_v)
    assert corrected > 0 or size == 1
    assert after.epoch_logs[-1]["lr"] == pytest.approx(initial, rel=1e-6)
