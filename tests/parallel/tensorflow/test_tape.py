"""hvdkit.tensorflow.DistributedGradientTape on real ranks against what one process computes.

Every rank can compute every rank's gradients (data comes from seeds), so
each checks the averaged gradients against the plain mean of all of them,
eagerly and inside a tf.function, for Keras 3 variables and tf.Variables.
"""
import gc
import weakref

import numpy as np
import pytest
import tensorflow as tf

import hvdkit.tensorflow as hvdkit_tf
from tape_support import (assert_same_on_every_rank, batch, local_gradients, loss_of, make_model, sgd,
                          snapshot)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def started(hvd):
    hvdkit_tf.init()


def distributed_gradients(model, rank, step, **kwargs):
    with tf.GradientTape() as tape:
        loss = loss_of(model, rank, step)
    tape = hvdkit_tf.DistributedGradientTape(tape, **kwargs)
    return tape.gradient(loss, model.trainable_variables), tape


def mean_of_every_rank(model, size, step):
    per_rank = [local_gradients(model, r, step) for r in range(size)]
    return [np.mean([g[i].numpy() for g in per_rank], axis=0) for i in range(len(per_rank[0]))]


@pytest.mark.parametrize("hierarchical", [False, True])
def test_gradients_equal_the_mean_of_every_ranks_local_gradients(hvd, hierarchical):
    if hierarchical and not hvdkit_tf.init().hierarchical:
        pytest.skip("one node (or one rank per node): hierarchical mode is the flat exchange, tested above")
    model = make_model()
    for step in range(2):
        grads, tape = distributed_gradients(model, hvd.rank(), step, hierarchical=hierarchical)
        expected = mean_of_every_rank(model, hvd.size(), step)
        for got, want, v in zip(grads, expected, model.trainable_variables):
            assert got.shape == v.shape and got.dtype == tf.float32
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
        assert bool(tape.finite) and tape.last_step_stats.step == step
        assert (tape.exchange._reducer.links.intra is not None) == hierarchical  # the node-then-cluster route
        assert_same_on_every_rank(hvd, [g.numpy() for g in grads], name=f"mean.{hierarchical}.{step}")
        sgd(model, grads)


def test_op_sum_sums_and_horovod_compression_names_are_accepted(hvd):
    model = make_model()
    grads, tape = distributed_gradients(model, hvd.rank(), 0, op=hvd.Sum, compression=hvd.Compression.none)
    expected = mean_of_every_rank(model, hvd.size(), 0)
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got.numpy(), hvd.size() * want, rtol=1e-5, atol=1e-5)
    assert tape.exchange.compression.name == "none"
    _, tape = distributed_gradients(model, hvd.rank(), 0, compression=hvdkit_tf.Compression.fp16)
    assert tape.exchange.compression.name == "fp16"


def test_tape_inside_tf_function_equals_eager_and_keeps_error_feedback(hvd):
    """Three topk steps (error feedback carried between them) eagerly and traced: the same weights."""
    eager_model, graph_model = make_model(), make_model()
    traced_shapes = []

    @tf.function  # AutoGraph on, as in scripts: hvdkit's functions must opt out of conversion themselves
    def graph_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((graph_model(x) - y) ** 2)
        tape = hvdkit_tf.DistributedGradientTape(tape, compression="topk:0.1,min_numel=0")
        grads = tape.gradient(loss, graph_model.trainable_variables)
        traced_shapes.extend(tuple(g.shape) for g in grads)
        sgd(graph_model, grads)
        return tape.finite

    for step in range(3):
        grads, _ = distributed_gradients(eager_model, hvd.rank(), step, compression="topk:0.1,min_numel=0")
        sgd(eager_model, grads)
        assert bool(graph_step(*batch(hvd.rank(), step)))
        for a, b in zip(snapshot(eager_model), snapshot(graph_model)):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")
    assert graph_step.experimental_get_tracing_count() == 1
    assert traced_shapes == [tuple(v.shape) for v in graph_model.trainable_variables]  # static in the graph
    assert_same_on_every_rank(hvd, snapshot(graph_model), name="graph")


def test_tf_variables_unused_variables_and_nested_sources(hvd):
    """Plain tf.Variables in a dict; a variable outside the loss gets zeros; the result keeps the structure."""
    rank, size = hvd.rank(), hvd.size()
    w = tf.Variable(np.arange(6, dtype=np.float32).reshape(2, 3), name="w")
    b = tf.Variable(np.ones(3, np.float32), name="b")
    unused = tf.Variable(np.ones(4, np.float32), name="unused")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum((rank + 1.0) * w) + tf.reduce_sum(b * b * rank)
    grads = hvdkit_tf.DistributedGradientTape(tape).gradient(loss, {"w": w, "pair": (b, unused)})
    mean_rank = (size - 1) / 2
    np.testing.assert_allclose(grads["w"].numpy(), np.full((2, 3), mean_rank + 1), rtol=1e-6)
    np.testing.assert_allclose(grads["pair"][0].numpy(), np.full(3, 2 * mean_rank), rtol=1e-6)
    assert np.array_equal(grads["pair"][1].numpy(), np.zeros(4, np.float32))


def test_indexed_slices_gradients_are_densified(hvd):
    """An embedding lookup gives IndexedSlices; each rank looks up its own row."""
    table = tf.Variable(np.zeros((hvd.size() + 1, 2), np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.gather(table, [hvd.rank()]))
    grad, = hvdkit_tf.DistributedGradientTape(tape).gradient(loss, [table])
    expected = np.zeros((hvd.size() + 1, 2), np.float32)
    expected[:hvd.size()] = 1.0 / hvd.size()
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-6)


def test_wrapping_before_the_with_block_and_persistent_tapes(hvd):
    model = make_model()
    with hvdkit_tf.DistributedGradientTape(tf.GradientTape(persistent=True)) as tape:
        loss = loss_of(model, hvd.rank(), 0)
    assert isinstance(tape, tf.GradientTape)
    first = tape.gradient(loss, model.trainable_variables)
    second = tape.gradient(loss, model.trainable_variables)
    expected = mean_of_every_rank(model, hvd.size(), 0)
    for a, b, want in zip(first, second, expected):
        np.testing.assert_allclose(a.numpy(), want, rtol=1e-5, atol=1e-6)
        assert np.array_equal(a.numpy(), b.numpy())


def test_a_later_tape_reuses_the_exchange_and_its_error_feedback(hvd):
    model = make_model()
    _, first = distributed_gradients(model, hvd.rank(), 0, compression="topk:0.1,min_numel=0")
    _, second = distributed_gradients(model, hvd.rank(), 1, compression="topk:0.1,min_numel=0")
    _, other = distributed_gradients(model, hvd.rank(), 1, compression="topk:0.2,min_numel=0")
    assert second.exchange is first.exchange and first.exchange.steps == 2
    assert other.exchange is not first.exchange
    kept = weakref.ref(first.exchange)
    del model, first, second, other
    gc.collect()
    assert kept() is None  # the exchange (and its residuals) went with the model


def test_broadcast_variables_makes_keras_and_tf_variables_equal_to_the_root(hvd):
    root = hvd.size() - 1
    model = make_model(seed=hvd.rank())  # different starting points
    extra = [tf.Variable(np.full(3, hvd.rank(), np.int32)), tf.Variable(tf.cast([hvd.rank(), 1.5], tf.bfloat16)),
             tf.Variable(np.full(2, hvd.rank(), np.float16))]
    assert hvdkit_tf.broadcast_variables(model.variables + extra, root_rank=root) is None
    for a, b in zip(snapshot(model), snapshot(make_model(seed=root))):
        assert np.array_equal(a, b)
    assert extra[0].numpy().tolist() == [root] * 3 and extra[1].numpy().astype(np.float32).tolist() == [root, 1.5]
    assert extra[2].numpy().tolist() == [root, root]


def test_broadcast_variables_inside_tf_function(hvd):
    model = make_model(seed=hvd.rank() + 10)

    @tf.function
    def broadcast():
        hvdkit_tf.broadcast_variables(model.trainable_variables, root_rank=0)

    broadcast()
    for a, b in zip(snapshot(model), snapshot(make_model(seed=10))):
        assert np.array_equal(a, b)
