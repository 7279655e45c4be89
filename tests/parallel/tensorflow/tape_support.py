"""Shared pieces of the TensorFlow front-end tests: a small Keras model with fixed weights, per-rank data any
rank can recompute, and a single-process simulation (hvdkit.exchange.simulate with TFOps) of the same exchange."""
import numpy as np
import tensorflow as tf

import keras
from hvdkit.exchange.reducer import Reducer
from hvdkit.exchange.simulate import SimulatedWorld
from hvdkit.compression.tf_ops import TFOps
from hvdkit.compression.horovod_names import resolve
from hvdkit.tensorflow.variables import tensor_infos

FUSION_MB = 0.004  # ~4 KiB: two buckets of each kind for the small model below
LR = 0.05
WIDTHS = (20, 32, 16, 4)


def make_model(seed=0, widths=WIDTHS):
    """An MLP whose weights come from ``seed`` alone (equal on every rank for equal seeds)."""
    layers = [keras.Input((widths[0],))]
    layers += [keras.layers.Dense(w, activation="relu" if i + 2 < len(widths) else None)
               for i, w in enumerate(widths[1:])]
    model = keras.Sequential(layers)
    rng = np.random.default_rng([seed, 99])
    for v in model.trainable_variables:
        v.assign(0.3 * rng.standard_normal(tuple(v.shape)).astype(np.float32))
    return model


def batch(rank, step, seed=7):
    """Rank ``rank``'s data at ``step``: the same on whichever process computes it."""
    rng = np.random.default_rng([seed, step, rank])
    return (tf.constant(rng.standard_normal((8, WIDTHS[0])).astype(np.float32)),
            tf.constant(rng.standard_normal((8, WIDTHS[-1])).astype(np.float32)))


def loss_of(model, rank, step):
    x, y = batch(rank, step)
    return tf.reduce_mean((model(x) - y) ** 2)


def local_gradients(model, rank, step):
    """One rank's own gradients, computed with a plain tape."""
    with tf.GradientTape() as tape:
        loss = loss_of(model, rank, step)
    return tape.gradient(loss, model.trainable_variables)


def sgd(model, grads):
    for v, g in zip(model.trainable_variables, grads):
        v.assign_sub(LR * g)


def snapshot(model):
    return [v.numpy().copy() for v in model.trainable_variables]


def simulate(size, ranks_per_node, spec, hierarchical, steps, fusion_mb=FUSION_MB):
    """The same training run with ``size`` ranks simulated in this process (one model: the simulated
    ranks' averaged gradients must agree, and are applied once): weights after every step."""
    model = make_model()
    variables = model.trainable_variables
    world = SimulatedWorld(size, ranks_per_node)
    reducers = [Reducer(tensor_infos(variables), resolve(spec), TFOps(), world.transport(r),
                        world.links(r, hierarchical), fusion_bytes=int(fusion_mb * 2**20), average=True,
                        name="sim") for r in range(size)]
    history = []
    for step in range(steps):
        grads = [local_gradients(model, r, step) for r in range(size)]

        def exchange(rank):
            reducer = reducers[rank]
            mine = grads[rank]
            for b in reducer.buckets:
                reducer.launch(b.index, [mine[s.index] for s in b.slots])
            results, _ = reducer.finish(lambda index: [mine[s.index] for s in reducer.buckets[index].slots])
            out = [None] * len(variables)
            for index, tensors in results.items():
                for s, t in zip(reducer.buckets[index].slots, tensors):
                    out[s.index] = t.numpy()
            return out

        averaged = world.run(exchange)
        for other in averaged[1:]:
            assert all(np.array_equal(a, b) for a, b in zip(averaged[0], other)), "simulated ranks disagree"
        sgd(model, averaged[0])
        history.append(snapshot(model))
    return history


def assert_same_on_every_rank(hvd, arrays, name="same"):
    """Every rank holds bit-identical arrays (compared with rank 0's, all in one broadcast)."""
    mine = np.concatenate([np.asarray(a, np.float32).reshape(-1) for a in arrays])
    root = hvd.broadcast(tf.constant(mine), root_rank=0, name=name).numpy()
    differ = np.flatnonzero(~((mine == root) | (np.isnan(mine) & np.isnan(root))))
    assert differ.size == 0, f"{differ.size} values differ from rank 0's, the first at flat index {differ[0]}"
