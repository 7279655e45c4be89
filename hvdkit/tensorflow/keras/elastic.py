"""Elastic Keras 3 training: ``hvd.elastic`` of ``horovod.tensorflow.keras``, for Keras 3 models.

Horovod's ``KerasState`` snapshots with ``optimizer.variables()`` (a list
property in Keras 3), broadcasts with ``v.ref()`` keys (absent on Keras 3
variables) and its callbacks shorten a resumed epoch through
``params["steps"]``, which Keras 3's ``fit`` never reads again. This module
keeps Horovod's names and call pattern on Horovod's own elastic driver
(``horovod.common.elastic.run_fn``, as ``horovod.tensorflow.elastic.run``)::

    import hvdkit.tensorflow.keras as hvd
    from hvdkit.tensorflow.keras import elastic

    elastic.init()                                  # not hvd.init(): see init()
    model.compile(hvd.DistributedOptimizer(keras.optimizers.SGD(0.01)), loss)
    state = elastic.KerasState(model, epoch=0, batch=0)
    callbacks = [elastic.CommitStateCallback(state, batches_per_commit=50),
                 elastic.UpdateBatchStateCallback(state), elastic.UpdateEpochStateCallback(state)]

    @elastic.run
    def train(state):                               # re-run after every reset: shard for hvd.size() here
        model.fit(dataset_for(hvd.rank(), hvd.size()), initial_epoch=state.epoch, epochs=EPOCHS,
                  callbacks=callbacks)

    train(state)

When a worker dies, a collective fails on the others; ``run`` rolls the state
back to its last commit (weights and optimizer variables restored in place,
so the compiled train step keeps working), restarts Horovod over the workers
that remain, and every rank takes rank 0's state before ``train`` runs again.
hvdkit's gradient exchanges (``DistributedOptimizer``'s, and
``DistributedGradientTape``'s kept on the model's variables) are re-cut for
the new world size at the reset: flat exchange only (Horovod's restart drops
hvdkit's node process sets), and error-feedback residuals are kept only when
the size did not change (each holds a share divided by the old size).
"""
import functools

import horovod.tensorflow as hvd
import keras
import numpy as np
import tensorflow as tf
from horovod.common.elastic import ObjectState, run_fn
from horovod.common.exceptions import HorovodInternalError

from hvdkit.tensorflow.state_sync import broadcast_variables
from hvdkit.tensorflow.tape import exchanges_on

__all__ = ["CommitStateCallback", "KerasState", "TensorFlowKerasState", "UpdateBatchStateCallback",
           "UpdateEpochStateCallback", "init", "run"]


def init():
    """Start Horovod for an elastic job (in place of ``hvdkit.tensorflow.keras.init()``): plain Horovod,
    because hvdkit's topology and node process sets do not survive an elastic restart."""
    hvd.init()


def run(func):
    """Decorator: Horovod's elastic driver around ``func(state, ...)``. A Horovod op that failed inside a
    TensorFlow function (Keras' train step) arrives as a ``tf.errors.OpError`` naming it: it becomes
    Horovod's ``HorovodInternalError``, so the state rolls back and Horovod restarts (as Horovod's
    ``horovod.tensorflow.elastic.run`` does)."""
    @functools.wraps(func)
    def attempt(state, *args, **kwargs):
        try:
            return func(state, *args, **kwargs)
        except tf.errors.OpError as err:
            if "Horovod" in (err.message or ""):
                raise HorovodInternalError(err) from err
            raise

    return run_fn(attempt, _reset)


def _reset():
    hvd.shutdown()
    hvd.init()


class KerasState(ObjectState):
    """Horovod elastic state of a built Keras 3 ``model`` and its ``optimizer`` (default: the compiled one),
    plus any small picklable values given as keywords (``epoch=0, batch=0``), exposed as attributes.

    ``commit()`` copies every model variable (weights and non-trainable statistics) and optimizer variable
    (iterations, momenta, ...) to host memory; ``restore()`` assigns them back in place; ``sync()`` gives
    every rank rank 0's values (a collective, run by ``run`` at each start)."""

    def __init__(self, model, optimizer=None, **kwargs):
        if not isinstance(model, keras.Model):
            raise ValueError(f"KerasState: model must be a keras.Model, got {type(model).__name__}")
        if not model.built:
            raise ValueError("KerasState: the model must be built first (call it on data or model.build(shape)): "
                             "its variables are what the state holds")
        optimizer = optimizer if optimizer is not None else getattr(model, "optimizer", None)
        if optimizer is None:
            raise ValueError("KerasState: no optimizer: pass optimizer=... or compile the model first")
        reserved = {"model", "optimizer", "world_size"} & set(kwargs)
        if reserved:
            raise ValueError(f"KerasState: attribute names {sorted(reserved)} are taken by the state itself")
        if not optimizer.built:  # its variables must exist on every rank before they can be broadcast
            optimizer.build(model.trainable_variables)
        self.model = model  # the variables restored and broadcast in place
        self.optimizer = optimizer  # its variables too (iterations, momenta, accumulators)
        self.world_size = hvd.size()  # the size hvdkit's exchanges are cut for
        self._saved_variables = None  # numpy copies of model then optimizer variables at the last commit
        self._save_variables()
        super().__init__(bcast_object=hvd.broadcast_object, get_rank=hvd.rank, **kwargs)

    def _variables(self):
        return list(self.model.variables) + list(self.optimizer.variables)

    def _save_variables(self):
        self._saved_variables = [np.array(v.numpy(), copy=True) for v in self._variables()]

    # --- Horovod's State interface ------------------------------------------------
    def save(self):
        self._save_variables()
        super().save()

    def restore(self):
        for v, value in zip(self._variables(), self._saved_variables):
            v.assign(value)
        super().restore()

    def sync(self):
        broadcast_variables(self._variables(), root_rank=0)
        self._save_variables()
        super().sync()

    def reset(self):
        """Horovod restarted, maybe with another number of workers: re-cut hvdkit's exchanges for it."""
        new = hvd.size()
        keep = new == self.world_size
        exchanges = exchanges_on(self.model.trainable_variables)
        own = getattr(self.optimizer, "exchange", None)
        if own is not None and all(own is not e for e in exchanges):
            exchanges.append(own)
        for exchange in exchanges:
            exchange.world_changed(keep_residuals=keep)
        self.world_size = new


TensorFlowKerasState = KerasState  # horovod.tensorflow.elastic's name for the same state


class CommitStateCallback(keras.callbacks.Callback):
    """Commits ``state`` every ``batches_per_commit`` batches and at the end of every epoch."""

    def __init__(self, state, batches_per_commit=1):
        super().__init__()
        if isinstance(batches_per_commit, bool) or not isinstance(batches_per_commit, int) or batches_per_commit < 1:
            raise ValueError(f"CommitStateCallback: batches_per_commit must be an integer >= 1, got "
                             f"{batches_per_commit!r}")
        self.state = state
        self.batches_per_commit = batches_per_commit
        self.batches_remaining = batches_per_commit  # reset at each (re)start: every rank counts alike

    def on_train_begin(self, logs=None):
        self.batches_remaining = self.batches_per_commit

    def on_train_batch_end(self, batch, logs=None):
        self.batches_remaining -= 1
        if self.batches_remaining == 0:
            self.state.commit()
            self.batches_remaining = self.batches_per_commit

    def on_epoch_end(self, epoch, logs=None):
        self.state.commit()


class UpdateBatchStateCallback(keras.callbacks.Callback):
    """Keeps ``state.batch`` at the number of batches done in the current epoch (0 at its end); list it
    before ``CommitStateCallback``.

    Keras 3's ``fit`` cannot shorten a running epoch as Horovod's Keras 2 callback did, so after a
    rollback to a mid-epoch commit the training function resumes the epoch itself: it skips
    ``state.batch`` batches of its data and fits the rest of that epoch, then the later epochs."""

    def __init__(self, state):
        super().__init__()
        self.state = state

    def on_train_batch_end(self, batch, logs=None):
        self.state.batch += 1

    def on_epoch_end(self, epoch, logs=None):
        self.state.batch = 0


class UpdateEpochStateCallback(keras.callbacks.Callback):
    """Adds one to ``state.epoch`` at the end of every epoch, so it counts the epochs done across resets
    whether the training function calls ``fit(epochs=EPOCHS - state.epoch)`` (Horovod's examples) or
    ``fit(initial_epoch=state.epoch, epochs=EPOCHS)``. List it before ``CommitStateCallback``, whose epoch-end
    commit must see the new count."""

    def __init__(self, state):
        super().__init__()
        self.state = state

    def on_epoch_end(self, epoch, logs=None):
        self.state.epoch += 1
