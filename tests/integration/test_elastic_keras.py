"""Elastic Keras 3 training: a worker killed mid-epoch, the job rolls back to its last commit and finishes on two.

``horovodrun --gloo -np 3 --min-np 2 --max-np 3`` with a host-discovery script reading a file:
``localhost:2`` and ``127.0.0.1:1`` act as two hosts. The workers train with ``model.fit``, hvdkit's
``DistributedOptimizer`` and ``hvdkit.tensorflow.keras.elastic`` (KerasState and its callbacks, committing at
every epoch end). The test SIGKILLs the worker on 127.0.0.1 during epoch 1 and drops that host from the file.
The survivors must roll back to the end of epoch 0, redo epoch 1 and finish epoch 2 on 2 ranks, agree bit for
bit, and match one process replaying the schedule (epoch 0 on 3 shards, the rest on 2) with plain Keras.
This file is also the workers' program (``python test_elastic_keras.py worker OUT_DIR``).
"""
import glob
import json
import os
import sys
import time

import numpy as np

from test_elastic import read_progress, run_and_kill_one

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCHS = 3
SAMPLES = 192  # divisible by 2 and 3 ranks times BATCH: every shard has whole batches
BATCH = 8  # 8 steps per epoch on 3 ranks, 12 on 2
FEATURES, CLASSES = 6, 3
LR, MOMENTUM = 0.1, 0.9
STEP_DELAY = 0.05  # seconds each worker sleeps after a step, so the kill lands mid-epoch
KILL_AT_STEP = 3  # a step of epoch 1 on the worker to kill (steps counted inside the epoch)
JOB_TIMEOUT = 180


def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((SAMPLES, FEATURES)).astype(np.float32)
    y = (x[:, :CLASSES] @ rng.standard_normal((CLASSES, CLASSES)) > 0).argmax(axis=1).astype(np.int64)
    return x, y


def make_model():
    import keras

    keras.utils.set_random_seed(1)  # the same initial weights in every process
    return keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(16, activation="tanh"),
                             keras.layers.Dense(CLASSES)])


def loss_fn():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# --- the workers' side ----------------------------------------------------------------------------
def worker(out_dir):
    import keras

    import hvdkit.tensorflow.keras as hvd
    from hvdkit.tensorflow.keras import elastic

    elastic.init()
    model = make_model()
    model.compile(hvd.DistributedOptimizer(keras.optimizers.SGD(LR, momentum=MOMENTUM)), loss_fn())
    state = elastic.KerasState(model, epoch=0, batch=0)
    pid = os.getpid()
    progress = open(os.path.join(out_dir, f"progress.{pid}"), "a", buffering=1)

    class Progress(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            progress.write(json.dumps({"time": time.time(), "host": os.environ["HOROVOD_HOSTNAME"], "pid": pid,
                                       "rank": hvd.rank(), "size": hvd.size(), "epoch": state.epoch,
                                       "step": batch}) + "\n")
            time.sleep(STEP_DELAY)

    callbacks = [elastic.UpdateEpochStateCallback(state), elastic.UpdateBatchStateCallback(state),
                 elastic.CommitStateCallback(state, batches_per_commit=10**6), Progress()]
    x, y = data()

    @elastic.run
    def train(state):
        shard = slice(hvd.rank(), None, hvd.size())  # re-cut for this attempt's world
        model.fit(x[shard], y[shard], batch_size=BATCH, shuffle=False, initial_epoch=state.epoch, epochs=EPOCHS,
                  callbacks=callbacks, verbose=0)

    train(state)
    np.savez(os.path.join(out_dir, f"final.{pid}.npz"), *[v.numpy() for v in model.trainable_variables],
             rank=hvd.rank(), size=hvd.size(), epoch=state.epoch)


# --- the reference --------------------------------------------------------------------------------
def reference(sizes):
    """One process: epoch e's step k uses the mean of every rank's gradient on its k-th batch, the world
    being sizes[e] ranks; plain Keras SGD with momentum applies it."""
    import keras
    import tensorflow as tf

    x, y = data()
    model = make_model()
    optimizer = keras.optimizers.SGD(LR, momentum=MOMENTUM)
    loss = loss_fn()
    for size in sizes:
        shards = [(x[r::size], y[r::size]) for r in range(size)]
        for k in range(len(shards[0][0]) // BATCH):
            grads = []
            for xs, ys in shards:
                with tf.GradientTape() as tape:
                    value = loss(ys[k * BATCH:(k + 1) * BATCH], model(xs[k * BATCH:(k + 1) * BATCH]))
                grads.append(tape.gradient(value, model.trainable_variables))
            mean = [sum(g[i] for g in grads) / size for i in range(len(grads[0]))]
            optimizer.apply(mean, model.trainable_variables)
    return [v.numpy() for v in model.trainable_variables]


def environment():
    # Gloo's wait for a dead peer bounds the recovery: 10 s as hvdkit.torch.elastic sets for torch jobs.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO, HOROVOD_GLOO_TIMEOUT_SECONDS="10")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


# --- the test --------------------------------------------------------------------------------------
def test_killed_keras_worker_rolls_back_to_the_epoch_commit_and_training_finishes_on_two(tmp_path):
    out_dir = tmp_path / "out"
    victim, _, _ = run_and_kill_one(tmp_path, [sys.executable, os.path.abspath(__file__), "worker", str(out_dir)],
                                    environment(), JOB_TIMEOUT,
                                    lambda last: last["epoch"] == 1 and last["step"] >= KILL_AT_STEP)
    progress = read_progress(out_dir)
    survivors = [pid for pid in progress if pid != victim]
    assert len(survivors) == 2
    for pid in survivors:
        on_two = [r for r in progress[pid] if r["size"] == 2]
        assert on_two[0]["epoch"] == 1 and on_two[0]["step"] == 0, on_two[0]  # rolled back to the epoch-0 commit
        assert [r["epoch"] for r in progress[pid] if r["size"] == 3][-1] == 1  # the kill was inside epoch 1
    finals = [np.load(path) for path in glob.glob(str(out_dir / "final.*.npz"))]
    assert len(finals) == 2 and sorted(int(f["rank"]) for f in finals) == [0, 1]
    assert all(int(f["size"]) == 2 and int(f["epoch"]) == EPOCHS for f in finals)
    expected = reference([3] + [2] * (EPOCHS - 1))
    for final in finals:
        for i, want in enumerate(expected):
            got = final[f"arr_{i}"]
            assert np.array_equal(got, finals[0][f"arr_{i}"]), f"variable {i} differs between the survivors"
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_reference_tells_the_rollback_apart():
    """Without the rollback (epoch 1 kept on 3 ranks) the reference moves by far more than the tolerance."""
    right, wrong = reference([3, 2, 2]), reference([3, 3, 2])
    assert max(np.abs(a - b).max() for a, b in zip(right, wrong)) > 1e-3


if __name__ == "__main__" and sys.argv[1] == "worker":
    worker(*sys.argv[2:])
