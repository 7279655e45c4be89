"""The TensorFlow / Keras 3 training loop behind ``hvdkit train --framework tensorflow``.

The same job as :mod:`hvdkit.training.torch_loop`, written the way a Keras
user writes it: every rank builds the same model from the seed, reads its own
shard of the data (:mod:`hvdkit.data.tf_datasets`), and runs ``model.fit`` with
hvdkit's Keras ``DistributedOptimizer`` (gradients averaged every step, with
the chosen compression and hierarchy) and its callbacks (initial broadcast,
metric averaging). With ``--average-every H`` each rank steps with a plain
optimizer and the model is averaged every H steps (local SGD); with
``--average-warmup W`` too, the first W steps average gradients as above
(post-local SGD, :class:`ModelAverager`). Rank 0 prints and logs the same
records as the torch path.

With ``--checkpoint DIR`` every rank saves its state at each epoch's end
(:func:`capture` says what goes where), and a rerun resumes after the newest
save, computing what a run that never stopped computes.
"""
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from hvdkit.state import checkpoint
from hvdkit.exchange import collectives
from hvdkit.data import sharding
from hvdkit.data import tf_datasets as sharding_tf
from hvdkit.training import data as datasets
from hvdkit.training import metrics, tf_models

EVAL_BATCH = 256
FORMAT = 1  # of the checkpoint payloads below


class EpochTotals(keras.callbacks.Callback):
    """Times this rank's training steps and counts what they sent, one epoch at a time.

    Runs after the optimizer stepped (``on_train_batch_end``), when the exchange's
    statistics describe that step."""

    def __init__(self, traffic):
        super().__init__()
        self._traffic = traffic  # () -> (bytes sent, dense bytes they replaced) for the last step
        self._started = 0.0  # perf_counter at the start of the step in progress
        self.reset()

    def reset(self):
        self.steps = 0
        self.samples = 0  # training samples this rank processed
        self.seconds = 0.0  # wall time in training steps (evaluation excluded)
        self.bytes_sent = 0  # payload bytes this rank put on the wire
        self.dense_bytes = 0  # bytes an uncompressed exchange would have sent
        self.loss = float("nan")  # the epoch's mean loss, averaged across ranks by MetricAverageCallback

    def on_train_batch_begin(self, batch, logs=None):
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds += time.perf_counter() - self._started
        self.steps += 1
        sent, dense = self._traffic()
        self.bytes_sent += sent
        self.dense_bytes += dense

    def on_epoch_end(self, epoch, logs=None):
        self.loss = float(logs["loss"])


class ModelAverager(keras.callbacks.Callback):
    """Local SGD: every ``period`` steps replace the trainable variables with their
    mean over all ranks (node first, then across nodes, where there are nodes).

    Post-local SGD (``warmup`` > 0): the first ``warmup`` steps average gradients
    through ``optimizer`` (hvdkit's DistributedOptimizer); then its exchange turns
    local and the model is averaged every ``period`` steps counted from there, as
    :class:`hvdkit.averaging.PeriodicAverager` does for torch."""

    def __init__(self, period, hvd, topology, warmup=0, optimizer=None):
        super().__init__()
        self.period = period
        self.warmup = warmup
        self.steps = 0  # optimizer steps so far (saved in checkpoints: averaging stays on the same steps)
        self.averaged = False  # whether the last step averaged, for traffic accounting
        self._optimizer = optimizer
        self._hvd = hvd
        self._topology = topology

    @property
    def in_warmup(self):
        return self.steps < self.warmup

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        self.averaged = self.steps > self.warmup and (self.steps - self.warmup) % self.period == 0
        if self.averaged:
            self.average()
        self.follow_phase()

    def follow_phase(self):
        """Gradients stay local from the end of the warm-up on (also after a resume)."""
        if self.warmup and not self.in_warmup:
            self._optimizer.build_exchange().local = True

    def average(self):
        variables = self.model.trainable_variables
        flat = tf.concat([tf.reshape(v, [-1]) for v in variables], axis=0)
        mean = collectives.hierarchical_allreduce(flat, self._hvd, self._topology, "average",
                                                  name="hvdkit.cli.train.average")
        for variable, part in zip(variables, tf.split(mean, [int(np.prod(v.shape)) for v in variables])):
            variable.assign(tf.reshape(part, variable.shape))


class ProgressBar(keras.callbacks.Callback):
    """The torch path's per-epoch progress bar (:func:`metrics.progress`) driven by Keras's batch hooks."""

    def __init__(self, total, description):
        super().__init__()
        self._bar = metrics.progress(None, total, 0, description)

    def on_train_batch_end(self, batch, logs=None):
        self._bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        self._bar.close()


def progress_bar(steps, rank, epoch):
    """A one-element callback list on rank 0 on a terminal, else empty."""
    return [ProgressBar(steps, f"epoch {epoch}")] if rank == 0 and sys.stderr.isatty() else []


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
    """() -> (payload bytes this rank sent, bytes of the dense gradients they replaced) in the last step.

    A local-SGD step sends nothing, or the fp32 model when it averaged; either way it stands in
    for one dense gradient exchange. (The averager's callback runs before the one that asks.)"""
    def last_step():
        if averager is not None and averager.steps > averager.warmup:
            return (nbytes if averager.averaged else 0), nbytes
        stats = optimizer.exchange.last_step_stats if optimizer.exchange is not None else None
        return (stats.bytes_sent, stats.dense_bytes) if stats is not None else (0, 0)

    return last_step


def evaluate(model, x, y, hvd, topology):
    """Test accuracy over the whole test set, each rank scoring its own part."""
    mine = sharding.shard_indices(len(y), topology.rank, topology.size, shuffle=False, remainder="uneven")
    correct = 0
    if len(mine):
        logits = model.predict(x[mine], batch_size=EVAL_BATCH, verbose=0)
        correct = int((logits.argmax(axis=1) == y[mine]).sum())
    totals = hvd.allreduce(tf.constant([correct, len(mine)], dtype=tf.float64), op=hvd.Sum,
                           name="hvdkit.cli.train.eval").numpy()
    return float(totals[0] / totals[1])


def epoch_record(epoch, totals, accuracy, hvd, topology):
    summed = hvd.allreduce(tf.constant([totals.samples, totals.seconds, totals.bytes_sent, totals.dense_bytes],
                                       dtype=tf.float64), op=hvd.Sum, name="hvdkit.cli.train.epoch").numpy()
    return metrics.epoch_record(epoch, totals.loss, accuracy, summed.tolist(), topology.size, totals.steps)


# ------------------------------------------------------------- checkpoints ----
def _storable(value):
    """``value`` (nested dicts, lists, tuples) with every TensorFlow tensor, Keras variable and numpy
    array as a torch tensor: ``torch.save`` (hvdkit.state.checkpoint) stores those as raw bytes, while it
    pickles numpy arrays as latin-1 text, half as large again."""
    import torch

    if isinstance(value, dict):
        return {k: _storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_storable(v) for v in value)
    if tf.is_tensor(value) or isinstance(value, (tf.Variable, keras.Variable)):
        value = value.numpy()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))  # a writable copy, as torch requires
    return value


def _restored(value, tensors=False):
    """The inverse of :func:`_storable`: numpy arrays, or TensorFlow tensors with ``tensors``."""
    if isinstance(value, dict):
        return {k: _restored(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_restored(v, tensors) for v in value)
    if type(value).__module__.startswith("torch"):
        value = value.numpy()
        return tf.constant(value) if tensors else value
    return value


def _assign_all(what, variables, values, directory):
    if len(variables) != len(values):
        raise checkpoint.CheckpointError(f"the checkpoint in {directory!r} holds {len(values)} {what} variables, "
                                         f"this run has {len(variables)}: it was saved for another model")
    for variable, value in zip(variables, values):
        if tuple(variable.shape) != tuple(np.shape(value)):
            raise checkpoint.CheckpointError(f"the checkpoint in {directory!r} has shape {tuple(np.shape(value))} "
                                             f"for {variable.path}, this run's is {tuple(variable.shape)}")
        variable.assign(value)


def _non_trainable(model):
    return [v for v in model.weights if not v.trainable]


def capture(config, model, optimizer, averager, position):
    """(shared payload, this rank's payload), split as :mod:`hvdkit.training.torch_state` splits them:
    the trainable weights (the same on every rank at an epoch's end) and, in synchronous training, the
    optimizer's slots are shared; what each rank computed from its own batches is its own: batch-norm
    statistics, error-feedback residuals and PowerSGD factors, and in local SGD the optimizer slots."""
    exchange = getattr(optimizer, "exchange", None)
    shared = {"format": FORMAT, "position": dict(position), "config": dict(vars(config)),
              "trainable": _storable(model.trainable_variables)}
    local = {"non_trainable": _storable(_non_trainable(model)),
             "exchange": _storable(exchange.state_dict()) if exchange is not None else None,
             "averager_steps": averager.steps if averager is not None else None}
    (local if averager is not None else shared)["optimizer"] = _storable(optimizer.variables)
    return shared, local


def restore(config, model, optimizer, averager, hvd, topology):
    """Every rank loads its state from the newest checkpoint; the position to resume at, or None."""
    if not config.checkpoint:
        return None
    found = checkpoint.load_sharded(config.checkpoint, topology.rank, topology.size, _allgather(hvd, "load"))
    if found is None:
        return None
    _, shared, local = found
    if shared.get("format") != FORMAT or shared["config"].get("framework") != "tensorflow":
        raise checkpoint.CheckpointError(
            f"the checkpoint in {config.checkpoint!r} was not written by hvdkit train --framework tensorflow "
            f"(format {FORMAT}): resume it with the framework that wrote it, or use a new --checkpoint directory")
    from hvdkit.training import torch_state  # its flag check is framework-neutral (checkpoints need torch anyway)

    torch_state.check_config(shared["config"], config, config.checkpoint)
    _assign_all("trainable", model.trainable_variables, _restored(shared["trainable"]), config.checkpoint)
    _assign_all("non-trainable", _non_trainable(model), _restored(local["non_trainable"]), config.checkpoint)
    _assign_all("optimizer", optimizer.variables,
                _restored((local if averager is not None else shared)["optimizer"]), config.checkpoint)
    if averager is not None:
        averager.steps = local["averager_steps"]
    if local["exchange"] is not None:
        # The first apply makes the exchange; the residuals must be in place before it runs. Every rank
        # gets here (one checkpoint for all), as the exchange's cross-rank check needs.
        optimizer.build_exchange().load_state_dict(_restored(local["exchange"], tensors=True))
    return shared["position"]


def save(config, position, model, optimizer, averager, hvd, topology):
    """Collective: every rank writes its file of the checkpoint at ``position``."""
    shared, local = capture(config, model, optimizer, averager, position)
    checkpoint.save_sharded(config.checkpoint, position["global_step"], topology.rank, local,
                            _allgather(hvd, "save"), shared=shared if topology.rank == 0 else None)


def _allgather(hvd, what):
    return lambda obj: hvd.allgather_object(obj, name=f"hvdkit.state.checkpoint.{what}")


# ------------------------------------------------------------------- train ----
def _channels_last(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x


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
    averager = ModelAverager(config.average_every, hvd, topology, config.average_warmup,
                             optimizer) if config.average_every else None
    position = restore(config, model, optimizer, averager, hvd, topology)
    if averager is not None:
        averager.follow_phase()
    totals = EpochTotals(traffic_counter(optimizer, averager, model_bytes(model)))
    callbacks = [hvd_keras.callbacks.MetricAverageCallback()] + ([averager] if averager is not None else []) + [totals]
    if position is None:  # a fresh start: every rank takes rank 0's initial weights
        position = {"epoch": 0, "global_step": 0}
        callbacks.insert(0, hvd_keras.callbacks.BroadcastGlobalVariablesCallback(0))
    writer = metrics.MetricsWriter(config.log_dir) if topology.rank == 0 else None
    if topology.rank == 0:
        print(f"hvdkit train: {config.model} on {config.dataset} ({dataset.describe()}), "
              f"{topology.size} ranks on {topology.num_nodes} node(s), compression {config.compression}"
              + (f", model averaged every {config.average_every} steps" if config.average_every else "")
              + (f" after {config.average_warmup} synchronous steps" if config.average_warmup else ""),
              flush=True)
        if position["epoch"]:
            print(f"hvdkit train: resuming from {config.checkpoint} at step {position['global_step']} "
                  f"(epoch {position['epoch']}, step 0)", flush=True)
    record = None
    for epoch in range(position["epoch"], config.epochs):
        shard = sharding_tf.slices_dataset((x_train, y_train), topology.rank, topology.size, epoch=epoch,
                                           seed=config.seed, remainder="pad")
        totals.reset()
        totals.samples = sharding.shard_size(len(y_train), topology.rank, topology.size, remainder="pad")
        steps = -(-totals.samples // config.batch_size)
        model.fit(shard.batch(config.batch_size).prefetch(tf.data.AUTOTUNE), epochs=epoch + 1, initial_epoch=epoch,
                  shuffle=False, verbose=0, callbacks=callbacks + progress_bar(steps, topology.rank, epoch))
        if averager is not None:  # evaluate (and checkpoint) one model, the same on every rank
            averager.average()
        accuracy = evaluate(model, x_test, y_test, hvd, topology)
        record = epoch_record(epoch, totals, accuracy, hvd, topology)
        position = {"epoch": epoch + 1, "global_step": position["global_step"] + totals.steps}
        if config.checkpoint:
            save(config, position, model, optimizer, averager, hvd, topology)
        if writer is not None:
            writer.write(record)
            print(metrics.format_epoch(record), flush=True)
    if writer is not None:
        metrics.finish(writer, record)
    return 0
