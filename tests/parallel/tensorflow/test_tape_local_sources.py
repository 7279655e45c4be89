"""Local sources in hvdkit's tape (``register_local_source``, ``PartialDistributedGradientTape``) on real ranks.

Every rank can compute every rank's gradients (data and weights come from seeds), so each checks: a local
source's gradient is its own gradient (divided by the world size under Horovod's default
``scale_local_gradients=True``), every other gradient the numpy mean of all ranks' own gradients. The
model-parallel case gives each rank a local layer of a different width, which an exchange over every
variable would refuse.
"""
import numpy as np
import pytest
import tensorflow as tf

import keras
import hvdkit.tensorflow as hvdkit_tf
from tape_support import batch, local_gradients, loss_of, make_model

pytestmark = pytest.mark.timeout(120)

RTOL, ATOL = 1e-5, 1e-6  # float32 sums of a few hundred terms, averaged over ranks


@pytest.fixture(autouse=True)
def started(hvd):
    hvdkit_tf.init()


def mean_of_every_rank(model, size, step):
    per_rank = [local_gradients(model, r, step) for r in range(size)]
    return [np.mean([g[i].numpy() for g in per_rank], axis=0) for i in range(len(per_rank[0]))]


def assert_local_and_shared(hvd, model, grads, local, step, scale):
    own = [g.numpy() for g in local_gradients(model, hvd.rank(), step)]
    mean = mean_of_every_rank(model, hvd.size(), step)
    local_ids = {id(v) for v in local}
    for got, v, mine, avg in zip(grads, model.trainable_variables, own, mean):
        want = mine / (hvd.size() if scale else 1) if id(v) in local_ids else avg
        assert np.abs(want).max() > 0  # an all-zero result cannot pass
        np.testing.assert_allclose(got.numpy(), want, rtol=RTOL, atol=ATOL, err_msg=v.path)


@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("traced", [False, True])
def test_registered_sources_keep_their_own_gradient_the_others_are_averaged(hvd, traced, scale):
    model = make_model()
    local = list(model.layers[0].trainable_variables)  # the first Dense layer's kernel and bias

    def step_grads(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x) - y) ** 2)
        tape = hvdkit_tf.DistributedGradientTape(tape, scale_local_gradients=scale)
        for v in local:
            tape.register_local_source(v)
        return tape.gradient(loss, model.trainable_variables), tape.finite

    run = tf.function(step_grads) if traced else step_grads
    for step in range(2):  # weights stay as made: every rank can recompute the others' gradients
        grads, finite = run(*batch(hvd.rank(), step))
        assert bool(finite)
        assert_local_and_shared(hvd, model, grads, local, step, scale)


def test_partial_tape_with_rank_sized_local_layers_model_parallel(hvd):
    """Each rank's local layer has its own width (model parallel): only the shared head is exchanged."""
    width = 3 + hvd.rank()
    local_layer = keras.layers.Dense(width, name="mine")
    head = keras.layers.Dense(4, name="head")
    x, y = batch(hvd.rank(), 0)
    local_layer.build(x.shape)
    head.build((None, 2))
    rng = np.random.default_rng([5, hvd.rank()])
    for v in local_layer.trainable_variables:
        v.assign(rng.standard_normal(tuple(v.shape)).astype(np.float32))
    for v in head.trainable_variables:
        v.assign(np.full(tuple(v.shape), 0.1, np.float32))
    variables = local_layer.trainable_variables + head.trainable_variables

    with tf.GradientTape(persistent=True) as tape:
        hidden = local_layer(x)
        features = tf.stack([tf.reduce_sum(hidden, axis=1), tf.reduce_max(hidden, axis=1)], axis=1)  # width-free
        loss = tf.reduce_mean((head(features) - y) ** 2)
    own = [g.numpy() for g in tape.gradient(loss, variables)]
    tape = hvdkit_tf.PartialDistributedGradientTape(tape, local_layers=local_layer, scale_local_gradients=False)
    grads = tape.gradient(loss, variables)
    for got, mine in zip(grads[:2], own[:2]):
        np.testing.assert_allclose(got.numpy(), mine, rtol=RTOL, atol=ATOL)
    for got, mine in zip(grads[2:], own[2:]):  # the head: the mean of every rank's own, gathered by Horovod
        every = hvd.allgather(tf.constant(mine)[None]).numpy()
        assert np.abs(every).max() > 0
        np.testing.assert_allclose(got.numpy(), every.mean(axis=0), rtol=RTOL, atol=ATOL)
    local, shared = tape.get_local_and_global_gradients(loss, variables)
    assert [v.path for v, _ in local] == [v.path for v in local_layer.trainable_variables]
    assert [v.path for v, _ in shared] == [v.path for v in head.trainable_variables]


def test_every_source_local_sends_nothing(hvd):
    model = make_model()
    with tf.GradientTape() as tape:
        loss = loss_of(model, hvd.rank(), 0)
    tape = hvdkit_tf.PartialDistributedGradientTape(tape, local_layers=model.layers)
    grads = tape.gradient(loss, model.trainable_variables)
    own = local_gradients(model, hvd.rank(), 0)
    for got, mine in zip(grads, own):
        np.testing.assert_allclose(got.numpy(), mine.numpy() / hvd.size(), rtol=RTOL, atol=ATOL)
    assert tape.exchange is None and bool(tape.finite)


def test_a_keras_variable_and_its_tf_variable_are_one_local_source(hvd):
    model = make_model()
    kernel = model.layers[0].kernel
    with tf.GradientTape() as tape:
        loss = loss_of(model, hvd.rank(), 0)
    tape = hvdkit_tf.DistributedGradientTape(tape, scale_local_gradients=False)
    tape.register_local_source(kernel.value)  # the tf.Variable behind the Keras one
    grads = tape.gradient(loss, model.trainable_variables)
    np.testing.assert_allclose(grads[0].numpy(), local_gradients(model, hvd.rank(), 0)[0].numpy(),
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("bad", [3, [keras.layers.Dense(2), "dense"], tf.Variable(1.0)])
def test_local_layers_must_be_keras_layers(hvd, bad):
    with pytest.raises(ValueError, match="local_layers must"):
        hvdkit_tf.PartialDistributedGradientTape(tf.GradientTape(), local_layers=bad)


def test_keras_variables_answer_ref_like_tf_variables(hvd):
    """Horovod's scripts key variables by ``v.ref()``; Keras 3 variables lack it until hvdkit is imported."""
    model = make_model()
    a, b = model.layers[0].kernel, model.layers[1].kernel
    refs = {a.ref(): "a", b.ref(): "b"}
    assert refs[a.ref()] == "a" and refs[b.ref()] == "b" and a.ref().deref() is a
