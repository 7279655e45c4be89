"""The TensorFlow / Keras 3 side of ``hvdkit train --mode ps`` (:mod:`hvdkit.training.ps_loop` drives it).

The allreduce job's model, data shards, evaluation and records
(:mod:`hvdkit.training.tf_loop`), trained by a custom loop instead of
``model.fit``: the loss and gradients of a batch in one ``tf.function``,
then ``hvdkit.ps.keras_worker.KerasWorker`` steps Keras's own SGD through the
servers (in sync mode on the servers' mean gradient: what ``fit`` with
hvdkit's ``DistributedOptimizer`` computes).
"""
import time

import keras
import tensorflow as tf

from hvdkit.data import sharding
from hvdkit.data import tf_datasets as sharding_tf
from hvdkit.ps.keras_worker import KerasWorker
from hvdkit.training import data as datasets
from hvdkit.training import metrics, ps_loop, tf_loop, tf_models

__all__ = ["Part"]


class Part(ps_loop.FrameworkPart):
    loop = tf_loop
    framework = "tensorflow"

    def __init__(self, config):
        import hvdkit.tensorflow as hvd

        tf_loop.limit_threads()
        self.hvd, self.config, self.place = hvd, config, ps_loop.place(hvd.init())
        self.rank, self.size = self.place.rank, self.place.size
        keras.utils.set_random_seed(config.seed)
        self.dataset = datasets.load(config.dataset, config.seed)
        self.x_train, self.x_test = (tf_loop._channels_last(self.dataset.x_train),
                                     tf_loop._channels_last(self.dataset.x_test))
        self.y_test = self.dataset.y_test
        self.model = tf_models.build(config.model, self.dataset.input_shape, self.dataset.num_classes)
        self.optimizer = keras.optimizers.SGD(learning_rate=config.lr, momentum=config.momentum)
        self.optimizer.build(self.model.trainable_variables)
        hvd.broadcast_variables(self.model.variables, root_rank=0)  # as the allreduce job starts
        self.numel = tf_models.parameter_count(self.model)
        self.dense_bytes = tf_loop.model_bytes(self.model)
        self.worker = None
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        @tf.function
        def gradients(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, self.model(x, training=True))
            return loss, tape.gradient(loss, self.model.trainable_variables)

        self._gradients = gradients

    def shim(self, ps):
        self.worker = KerasWorker(self.model.trainable_variables, self.optimizer, ps)
        return self.worker

    def train_epoch(self, epoch, totals, meter):
        y_train, config = self.dataset.y_train, self.config
        shard = sharding_tf.slices_dataset((self.x_train, y_train), self.rank, self.size, epoch=epoch,
                                           seed=config.seed, remainder="pad")
        samples = sharding.shard_size(len(y_train), self.rank, self.size, remainder="pad")
        steps = -(-samples // config.batch_size)
        batches = shard.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)
        weighted = 0.0  # the epoch's loss as Keras's fit reports it: the mean over samples, not over steps
        for x, y in metrics.progress(batches, steps, self.rank, f"epoch {epoch}"):
            started = time.perf_counter()
            loss, grads = self._gradients(x, y)
            self.worker.step(grads)
            totals.add_step(int(y.shape[0]), time.perf_counter() - started, meter.step())
            weighted += float(loss) * int(y.shape[0])
            totals.set_mean_loss(weighted / totals.samples)
