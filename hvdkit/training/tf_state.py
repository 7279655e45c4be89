"""What a ``hvdkit train --framework tensorflow`` checkpoint holds, and putting it back exactly.

Split as :mod:`hvdkit.training.torch_state` splits it: the trainable weights (the same on every
rank at an epoch's end) and, in synchronous training, the optimizer's slots are shared; what each
rank computed from its own batches is its own: batch-norm statistics, error-feedback residuals and
PowerSGD factors, and with local SGD the optimizer slots and the averager's step count. The files
go through ``tf.train.Checkpoint`` (:mod:`hvdkit.state.tf_codec`); the format, position and flag
checks are :mod:`hvdkit.training.resume`'s, shared with torch.
"""
import dataclasses

from hvdkit.state.checkpoint import CheckpointError
from hvdkit.training.resume import FORMAT, check_saved

__all__ = ["capture", "restore"]


def _non_trainable(model):
    return [v for v in model.weights if not v.trainable]


def capture(config, model, optimizer, averager, position):
    """(shared payload, this rank's payload) at ``position`` (a ``resume.Position``). The variables
    are the live ones: serialise at once. ``averager``: the PeriodicAverager of local SGD, or None."""
    exchange = getattr(optimizer, "exchange", None)
    shared = {"format": FORMAT, "position": dataclasses.asdict(position), "config": dict(vars(config)),
              "trainable": list(model.trainable_variables)}
    local = {"non_trainable": _non_trainable(model),
             "exchange": exchange.state_dict() if exchange is not None else None,
             "averager": averager.state_dict() if averager is not None else None}
    (local if averager is not None else shared)["optimizer"] = list(optimizer.variables)
    return shared, local


def _assign_all(what, variables, values, directory):
    if len(variables) != len(values):
        raise CheckpointError(f"the checkpoint in {directory!r} holds {len(values)} {what} variables, "
                              f"this run has {len(variables)}: it was saved for another model")
    for variable, value in zip(variables, values):
        if tuple(variable.shape) != tuple(value.shape):
            raise CheckpointError(f"the checkpoint in {directory!r} has shape {tuple(value.shape)} for "
                                  f"{variable.path}, this run's is {tuple(variable.shape)}")
        variable.assign(value)


def restore(shared, local, config, model, optimizer, averager):
    """Put a checkpoint's state back (the optimizer built, its exchange not yet run); returns the Position."""
    position = check_saved(shared, config)
    directory = config.checkpoint
    _assign_all("trainable", model.trainable_variables, shared["trainable"], directory)
    _assign_all("non-trainable", _non_trainable(model), local["non_trainable"], directory)
    _assign_all("optimizer", optimizer.variables, (local if averager is not None else shared)["optimizer"],
                directory)
    try:
        if averager is not None:
            averager.load_state_dict(local["averager"])
        if local["exchange"] is not None:
            # The first apply makes the exchange; the residuals must be in place before it runs. Every
            # rank gets here (one checkpoint for all), as the exchange's cross-rank check needs.
            optimizer.build_exchange().load_state_dict(local["exchange"])
    except ValueError as err:
        raise CheckpointError(f"the checkpoint in {directory!r} does not fit this run: {err}") from None
    return position
