"""The TensorFlow / Keras 3 training loop behind ``hvdkit train --framework tensorflow``.

The same job as :mod:`hvdkit.training.torch_loop`, written the way a Keras
user writes it: every rank builds the same model from the seed, reads its own
shard of the data (:mod:`hvdkit.data.tf_datasets`), and runs ``model.fit`` with
hvdkit's Keras ``DistributedOptimizer`` (gradients averaged every step, with
the chosen compression and hierarchy) and its initial broadcast. With
``--average-every H`` each rank steps with a plain optimizer and the model is
averaged every H steps (local SGD); with ``--average-warmup W`` too, the first
W steps average gradients as above (post-local SGD). The schedule, the
averaging, the epoch's totals and records are the framework-neutral ones the
torch loop uses (:mod:`hvdkit.averaging`, :mod:`hvdkit.training.metrics`), fed
by thin Keras callbacks (:mod:`hvdkit.training.tf_callbacks`). Rank 0 prints and
logs the same records as the torch path, TensorBoard events through
``tf.summary``.

With ``--checkpoint DIR`` every rank saves its state at each epoch's end
(:mod:`hvdkit.training.tf_state` says what goes where) through
``tf.train.Checkpoint``, and a rerun resumes after the newest save, computing
what a run that never stopped computes. The job never imports torch.
"""
import os

import keras
import numpy as np
import tensorflow as tf

from hvdkit import averaging
from hvdkit.data import sharding
from hvdkit.data import tf_datasets as sharding_tf
from hvdkit.state.tf_codec import CODEC
from hvdkit.training import data as datasets
from hvdkit.training import local_sgd, metrics, resume, tf_callbacks, tf_models, tf_state
from hvdkit.training.resume import Position

EVAL_BATCH = 256


def model_bytes(model):
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.trainable_variables)


def make_optimizer(config, hvd_keras):
    """hvdkit's DistributedOptimizer around SGD; plain SGD for local SGD (the averaging callback
    then does all the communication)."""
    base = keras.optimizers.SGD(learning_rate=config.lr, momentum=config.momentum)
    if config.average_every and not config.average_warmup:
        return base
    return hvd_keras.DistributedOptimizer(base, compression=config.compression, hierarchical=config.hierarchical)


def traffic_counter(optimizer, averager, nbytes):
    """() -> (payload bytes this rank sent, bytes of the dense gradients they replaced) in the last step
    (:func:`metrics.step_traffic`; the averaging callback runs before the one that asks)."""
    def last_step():
        exchange = getattr(optimizer, "exchange", None)  # plain SGD (local SGD, no warm-up) has none
        return metrics.step_traffic(averager, exchange.last_step_stats if exchange is not None else None, nbytes)

    return last_step


def correct(model, x, y):
    """How many of the samples ``x`` the model classifies as ``y`` says."""
    if not len(y):
        return 0
    return int((model.predict(x, batch_size=EVAL_BATCH, verbose=0).argmax(axis=1) == y).sum())


def evaluate(model, x, y, hvd, topology):
    """Test accuracy over the whole test set, each rank scoring its own part."""
    mine = sharding.shard_indices(len(y), topology.rank, topology.size, shuffle=False, remainder="uneven")
    totals = hvd.allreduce(tf.constant([correct(model, x[mine], y[mine]), len(mine)], dtype=tf.float64),
                           op=hvd.Sum, name="hvdkit.cli.train.eval").numpy()
    return float(totals[0] / totals[1])


def epoch_record(epoch, totals, accuracy, hvd, topology):
    def sum_over_ranks(values):
        return hvd.allreduce(tf.constant(values, dtype=tf.float64), op=hvd.Sum,
                             name="hvdkit.cli.train.epoch").numpy().tolist()

    return metrics.epoch_record(epoch, totals, accuracy, sum_over_ranks, topology.size)


def restore(config, model, optimizer, averager, hvd, topology):
    """Every rank loads its state from the newest checkpoint; the Position to resume at, or None."""
    found = resume.load(config, CODEC, hvd, topology)
    return None if found is None else tf_state.restore(*found, config, model, optimizer, averager)


def save(config, position, model, optimizer, averager, hvd, topology):
    """Collective: every rank writes its file of the checkpoint at ``position``."""
    shared, local = tf_state.capture(config, model, optimizer, averager, position)
    resume.save(config, position, shared, local, CODEC, hvd, topology)


# ------------------------------------------------------------------- train ----
def _channels_last(x):
    """A batch of channels-first samples as the models take them: (N, C, H, W) -> (N, H, W, C),
    (N, C, L) -> (N, L, C)."""
    if x.ndim in (3, 4):
        return np.ascontiguousarray(np.moveaxis(x, 1, -1))
    return x


def limit_threads(environ=os.environ):
    """Honour the launcher's per-rank thread budget: ``hvdkit run`` sets OMP_NUM_THREADS when ranks
    outnumber cores, which TensorFlow's own thread pools ignore. Call before TensorFlow runs an op."""
    threads = environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(int(threads))


def train(config):
    import hvdkit.tensorflow as hvd
    from hvdkit.tensorflow import keras as hvd_keras

    limit_threads()
    topology = hvd.init()
    keras.utils.set_random_seed(config.seed)
    dataset = datasets.load(config.dataset, config.seed)
    x_train, x_test = _channels_last(dataset.x_train), _channels_last(dataset.x_test)
    y_train, y_test = dataset.y_train, dataset.y_test
    model = tf_models.build(config.model, dataset.input_shape, dataset.num_classes)
    optimizer = make_optimizer(config, hvd_keras)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=False)  # Horovod's CPU ops cannot be XLA-compiled
    optimizer.build(model.trainable_variables)
    averager = local_sgd.averager(config, hvd, topology)
    position = restore(config, model, optimizer, averager, hvd, topology)
    callbacks = []
    if position is None:  # a fresh start: every rank takes rank 0's initial weights
        position = Position()
        callbacks.append(hvd_keras.callbacks.BroadcastGlobalVariablesCallback(0))
    if averager is not None:
        averaging_callback = tf_callbacks.ModelAveraging(averager, optimizer)
        averaging_callback.follow_phase()  # a resume after the warm-up goes on locally
        callbacks.append(averaging_callback)
    totals = tf_callbacks.EpochTotalsCallback(traffic_counter(optimizer, averager, model_bytes(model)),
                                              config.batch_size)
    callbacks.append(totals)
    writer = metrics.MetricsWriter(config.log_dir, "tensorflow") if topology.rank == 0 else None
    if topology.rank == 0:
        print(f"hvdkit train: {config.model} on {config.dataset} ({dataset.describe()}), "
              f"{topology.size} ranks on {topology.num_nodes} node(s), compression {config.compression}"
              + (f", model averaged every {config.average_every} steps" if config.average_every else "")
              + (f" after {config.average_warmup} synchronous steps" if config.average_warmup else ""),
              flush=True)
        if position.epoch:
            print(f"hvdkit train: resuming from {config.checkpoint} at step {position.global_step} "
                  f"(epoch {position.epoch}, step 0)", flush=True)
    record = None
    for epoch in range(position.epoch, config.epochs):
        shard = sharding_tf.slices_dataset((x_train, y_train), topology.rank, topology.size, epoch=epoch,
                                           seed=config.seed, remainder="pad")
        samples = sharding.shard_size(len(y_train), topology.rank, topology.size, remainder="pad")
        totals.start_epoch(samples)
        steps = -(-samples // config.batch_size)
        model.fit(shard.batch(config.batch_size).prefetch(tf.data.AUTOTUNE), epochs=epoch + 1, initial_epoch=epoch,
                  shuffle=False, verbose=0,
                  callbacks=callbacks + tf_callbacks.progress_bar(steps, topology.rank, epoch))
        if averager is not None and not averager.in_warmup:  # evaluate (and checkpoint) one model
            averaging.average_parameters(model.trainable_variables, "world", hvd, topology)
        accuracy = evaluate(model, x_test, y_test, hvd, topology)
        record = epoch_record(epoch, totals.totals, accuracy, hvd, topology)
        position = Position(epoch + 1, 0, position.global_step + totals.totals.steps)
        if config.checkpoint:
            save(config, position, model, optimizer, averager, hvd, topology)
        if writer is not None:
            writer.write(record)
            print(metrics.format_epoch(record), flush=True)
    if writer is not None:
        metrics.finish(writer, record)
    return 0
