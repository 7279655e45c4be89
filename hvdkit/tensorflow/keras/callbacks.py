"""Horovod's Keras callbacks, for Keras 3.

Same names, arguments and semantics as ``horovod.tensorflow.keras.callbacks``,
adapted to what changed in Keras 3: ``optimizer.variables`` is a property,
the learning rate is a variable set through ``optimizer.learning_rate``, and
an optimizer's ``momentum`` is a Python float baked into the compiled train
step (so momentum correction rescales the velocity slots instead of changing
``momentum`` for one batch: the same arithmetic).
"""
import numbers

import horovod.tensorflow as hvd
import keras
import numpy as np
import tensorflow as tf

__all__ = ["BroadcastGlobalVariablesCallback", "MetricAverageCallback", "LearningRateScheduleCallback",
           "LearningRateWarmupCallback"]


class BroadcastGlobalVariablesCallback(keras.callbacks.Callback):
    """Broadcast the model's and the optimizer's variables from ``root_rank`` when training starts.

    Keras 3 builds the optimizer while tracing the first step; this callback builds it at
    ``on_train_begin`` instead (on the model's trainable variables, as Keras would) and broadcasts
    there, so the first step already starts from the root's state. A model not yet built then (a
    subclassed model never called) is broadcast after the first batch, as Horovod does.
    Random-generator states (dropout seeds) stay per rank, and so do the ``local_variables``.
    Once per callback instance.
    """

    def __init__(self, root_rank, device="", local_variables=None):
        super().__init__()
        if isinstance(root_rank, bool) or not isinstance(root_rank, numbers.Integral) or root_rank < 0:
            raise ValueError(f"root_rank must be a rank number (an integer >= 0), got {root_rank!r}")
        if local_variables is None:
            local_variables = []
        elif isinstance(local_variables, (tf.Variable, keras.Variable)):
            local_variables = [local_variables]
        for var in local_variables:
            if not isinstance(var, (tf.Variable, keras.Variable)):
                raise ValueError(f"local_variables must be variables, got {var!r}")
        self.root_rank = int(root_rank)
        self.device = device  # accepted for Horovod compatibility; broadcasts run where the variables live
        self.broadcast_done = False
        self._local = {id(_unwrap(v)) for v in local_variables}

    def _variables(self):
        seeds = {id(_unwrap(g.state)) for layer in self.model._flatten_layers()
                 for g in getattr(layer, "_seed_generators", ())}
        skip = self._local | seeds
        model_vars = [v for v in self.model.variables if id(_unwrap(v)) not in skip]
        return model_vars + list(self.model.optimizer.variables)

    def _broadcast(self):
        from hvdkit.tensorflow import broadcast_variables

        if self.root_rank >= hvd.size():
            raise ValueError(f"root_rank {self.root_rank} is not a rank of this job (size {hvd.size()})")
        broadcast_variables(self._variables(), root_rank=self.root_rank)
        self.broadcast_done = True

    def on_train_begin(self, logs=None):
        model, optimizer = self.model, self.model.optimizer
        if self.broadcast_done:
            return
        if optimizer is not None and not optimizer.built and model.built:
            optimizer.build(model.trainable_variables)  # as Keras's own symbolic build does, only earlier
        if optimizer is None or optimizer.built:
            self._broadcast()

    def on_train_batch_end(self, batch, logs=None):
        if not self.broadcast_done:
            self._broadcast()


def _unwrap(variable):
    """The tf.Variable behind a Keras variable (Keras variables are recreated wrappers)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


class MetricAverageCallback(keras.callbacks.Callback):
    """Average the epoch's logs (every scalar) over all ranks, in place, at the end of each epoch.

    Put it before callbacks that read the logs (ReduceLROnPlateau, TensorBoard, checkpoints).
    One allreduce per epoch carries every value, in sorted name order (the same on every rank).
    """

    def __init__(self, device=""):
        super().__init__()
        self.device = device  # accepted for Horovod compatibility

    def on_epoch_end(self, epoch, logs=None):
        if not logs:
            return
        names = sorted(name for name, value in logs.items() if np.ndim(value) == 0)
        values = tf.constant([float(logs[name]) for name in names], tf.float64)
        averaged = hvd.allreduce(values, op=hvd.Average, name="hvdkit.MetricAverageCallback").numpy()
        for name, value in zip(names, averaged):
            logs[name] = float(value)


class LearningRateScheduleCallback(keras.callbacks.Callback):
    """Set the learning rate to ``initial_lr * multiplier(epoch)`` for ``start_epoch <= epoch < end_epoch``.

    ``multiplier`` is a number (``multiplier ** (epoch - start_epoch)``) or a function of the epoch.
    With ``staircase`` it is applied at the start of each epoch (integer epochs); without, at the start
    of each batch with ``epoch + batch / steps_per_epoch`` (from ``fit``'s step count when not given).
    ``momentum_correction`` rescales an SGD/RMSprop velocity by ``new_lr / old_lr`` whenever the rate
    changes (Goyal et al., 2017), as Horovod does by scaling ``momentum`` for one batch.
    """

    def __init__(self, initial_lr, multiplier, start_epoch=0, end_epoch=None, staircase=True,
                 momentum_correction=True, steps_per_epoch=None):
        super().__init__()
        if isinstance(initial_lr, bool) or not isinstance(initial_lr, numbers.Real) or not initial_lr > 0:
            raise ValueError(f"initial_lr must be a number > 0, got {initial_lr!r}")
        if not callable(multiplier) and (isinstance(multiplier, bool) or not isinstance(multiplier, numbers.Real)):
            raise ValueError(f"multiplier must be a number or a function of the epoch, got {multiplier!r}")
        _check_int("start_epoch", start_epoch, 0)
        if end_epoch is not None:
            _check_int("end_epoch", end_epoch, start_epoch)
        if steps_per_epoch is not None:
            _check_int("steps_per_epoch", steps_per_epoch, 1)
        self.initial_lr = float(initial_lr)
        self.multiplier = multiplier if callable(multiplier) else (lambda epoch: multiplier ** (epoch - start_epoch))
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        self.staircase = staircase
        self.momentum_correction = momentum_correction
        self.steps_per_epoch = steps_per_epoch
        self.current_epoch = None
        self._velocities = None  # the optimizer's momentum slots to rescale, found once it is built

    def _optimizer(self):
        optimizer = self.model.optimizer
        if not isinstance(optimizer.learning_rate, keras.Variable):
            raise ValueError(f"{type(self).__name__} sets optimizer.learning_rate, but this optimizer's learning "
                             f"rate is a {type(optimizer.learning_rate).__name__}; create the optimizer with a "
                             f"float learning_rate")
        return optimizer

    def on_train_begin(self, logs=None):
        self._optimizer()
        if not self.staircase and not self.steps_per_epoch:
            steps = (self.params or {}).get("steps")
            if not steps:
                raise ValueError(f"{type(self).__name__} could not find the number of steps per epoch (fit() was "
                                 f"given a dataset of unknown length); pass steps_per_epoch")
            self.steps_per_epoch = int(steps)
        self._velocities = None

    def on_epoch_begin(self, epoch, logs=None):
        self.current_epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        epoch = self.current_epoch
        if epoch < self.start_epoch or (self.end_epoch is not None and epoch >= self.end_epoch):
            return
        if self.staircase:
            if batch == 0:
                self._set(epoch)
        else:
            self._set(epoch + batch / self.steps_per_epoch)

    def _set(self, epoch):
        optimizer = self.model.optimizer
        old = float(optimizer.learning_rate.numpy())
        new = self.initial_lr * self.multiplier(epoch)
        optimizer.learning_rate = new
        if not (self.momentum_correction and optimizer.built and old > 0 and new != old):
            return  # an optimizer not built yet (Keras builds it in the first step) has no velocity yet
        if self._velocities is None:
            self._velocities = _velocities(optimizer)
        for velocity in self._velocities:
            velocity.assign(velocity * (new / old))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(self.model.optimizer.learning_rate.numpy())


class LearningRateWarmupCallback(LearningRateScheduleCallback):
    """Gradual warm-up from ``initial_lr / size`` to ``initial_lr`` over ``warmup_epochs`` (Goyal et al., 2017).

    ``lr(epoch) = initial_lr / size * (epoch * (size - 1) / warmup_epochs + 1)`` with
    ``epoch = full epochs + (batch + 1) / steps_per_epoch``, set before every batch of the warm-up,
    so the last warm-up batch runs at ``initial_lr``.
    """

    def __init__(self, initial_lr, warmup_epochs=5, momentum_correction=True, steps_per_epoch=None, verbose=0):
        _check_int("warmup_epochs", warmup_epochs, 1)

        def multiplier(epoch):
            epoch += 1.0 / self.steps_per_epoch
            size = hvd.size()
            return 1.0 / size * (epoch * (size - 1) / warmup_epochs + 1)

        super().__init__(initial_lr, multiplier, start_epoch=0, end_epoch=warmup_epochs, staircase=False,
                         momentum_correction=momentum_correction, steps_per_epoch=steps_per_epoch)
        self.warmup_epochs = warmup_epochs
        self.verbose = verbose

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if epoch == self.end_epoch - 1 and self.verbose > 0 and hvd.rank() == 0:
            lr = float(self.model.optimizer.learning_rate.numpy())
            print(f"\nEpoch {epoch + 1}: finished gradual learning rate warmup to {lr:g}.")


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _velocities(optimizer):
    """The momentum slots that hold a learning-rate-scaled velocity (SGD: ``momentums``, RMSprop:
    ``_momentums``); [] when the optimizer has no momentum (Adam's moments carry no learning rate)."""
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is not None:
        return _velocities(inner)
    if not getattr(optimizer, "momentum", 0):
        return []
    for attribute in ("momentums", "_momentums"):
        slots = getattr(optimizer, attribute, None)
        if slots:
            return [s for s in slots if s is not None]
    raise ValueError(f"momentum_correction: {type(optimizer).__name__} has momentum={optimizer.momentum!r} but "
                     f"no momentum slots this callback knows how to rescale; pass momentum_correction=False")
