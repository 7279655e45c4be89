"""The Keras callbacks of ``hvdkit train --framework tensorflow``: thin adapters from ``model.fit``'s
batch hooks to the framework-neutral pieces the torch loop uses too: :class:`hvdkit.training.metrics.EpochTotals`
(what an epoch adds up), :class:`hvdkit.averaging.PeriodicAverager` (local SGD's schedule and
averaging) and the progress bar."""
import sys
import time

import keras

from hvdkit.training import metrics

__all__ = ["EpochTotalsCallback", "ModelAveraging", "ProgressBar", "progress_bar"]


class EpochTotalsCallback(keras.callbacks.Callback):
    """Feeds this rank's steps into :attr:`totals`, a fresh ``metrics.EpochTotals`` per :meth:`start_epoch`.

    Runs after the optimizer stepped (``on_train_batch_end``), when the exchange's statistics and
    the averager describe that step: put it after :class:`ModelAveraging`."""

    def __init__(self, traffic, batch_size):
        super().__init__()
        self._traffic = traffic  # () -> (bytes sent, dense bytes they replaced) for the last step
        self._batch_size = batch_size  # samples per step, the epoch's last step excepted
        self._left = 0  # samples of the epoch not yet stepped on
        self._started = 0.0  # perf_counter at the start of the step in progress
        self.totals = metrics.EpochTotals()

    def start_epoch(self, samples):
        """Before ``fit`` runs an epoch of ``samples`` training samples on this rank."""
        self.totals = metrics.EpochTotals()
        self._left = samples

    def on_train_batch_begin(self, batch, logs=None):
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        seconds = time.perf_counter() - self._started
        samples = min(self._batch_size, self._left)
        self._left -= samples
        self.totals.add_step(samples, seconds, self._traffic())
        self.totals.set_mean_loss(float(logs["loss"]))  # Keras's running mean over the epoch's steps


class ModelAveraging(keras.callbacks.Callback):
    """Local SGD for ``model.fit``: after every step, ``averager`` (a ``hvdkit.averaging.PeriodicAverager``)
    counts it and, when its schedule says so, averages the model's trainable variables.

    Post-local SGD (the averager's ``warmup_steps`` > 0): ``optimizer`` is hvdkit's Keras
    DistributedOptimizer, which averages gradients during the warm-up; from its end on (also after a
    resume, :meth:`follow_phase`) its exchange stays local."""

    def __init__(self, averager, optimizer):
        super().__init__()
        self.averager = averager
        self._optimizer = optimizer

    def on_train_batch_end(self, batch, logs=None):
        self.averager.step(self.model.trainable_variables)
        self.follow_phase()

    def follow_phase(self):
        """Gradients stay local from the end of the warm-up on."""
        if self.averager.warmup_steps and not self.averager.in_warmup:
            self._optimizer.build_exchange().local = True


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
