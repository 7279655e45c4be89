"""What a ``hvdkit train`` (torch) checkpoint holds, and putting it back exactly.

State that is the same on every rank is written once, by rank 0 (the shared file): the parameters
and optimizer state (momentum) of synchronous training, the local-SGD step count, the position in
the data and the configuration. State that differs between ranks goes in each rank's own file: the
error-feedback residuals and PowerSGD factors, the RNG states, buffers such as BatchNorm statistics
(computed from each rank's own batches), the running totals of the epoch in progress, and, once
post-local SGD steps locally, the parameters and optimizer state too. Restoring all of it makes the
resumed run compute the same bits as one that never stopped (same world size and thread count).
The format, position and flag checks are :mod:`hvdkit.training.resume`'s, shared with TensorFlow.
"""
import dataclasses
import random

import numpy as np
import torch

from hvdkit.state.checkpoint import CheckpointError
from hvdkit.training.resume import FORMAT, check_saved


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rng_state():
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def capture(config, model, optimizer, position, totals, world_size):
    """(shared payload, this rank's payload) of the current training state at ``position`` (a
    :class:`hvdkit.training.resume.Position`). ``totals``: a dict of the epoch in progress (None at an
    epoch boundary). Tensors are the live ones: serialise at once."""
    state = model.state_dict()
    parameter_names = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    optimizer_state = optimizer.state_dict()
    exchange = optimizer_state.pop("hvdkit", None)
    shared = {"format": FORMAT, "position": dataclasses.asdict(position), "world_size": world_size,
              "config": dict(vars(config))}
    local = {"exchange": exchange, "rng": rng_state(), "totals": totals,
             "buffers": {k: v for k, v in state.items() if k not in parameter_names}}
    per_rank = optimizer.local_phase  # local steps: every rank's parameters and momentum differ
    holder = local if per_rank else shared
    holder["parameters"] = {k: v for k, v in state.items() if k in parameter_names}
    holder["optimizer"] = optimizer_state
    return shared, local


def restore(shared, local, config, model, optimizer):
    """Put a checkpoint's state back; returns (Position, totals dict of the epoch in progress or None)."""
    position = check_saved(shared, config)
    holder = local if "parameters" in local else shared
    try:
        model.load_state_dict({**holder["parameters"], **local["buffers"]})
    except RuntimeError as err:
        raise CheckpointError(f"the checkpoint in {config.checkpoint!r} does not fit this model: {err}") from None
    optimizer_state = dict(holder["optimizer"])
    if local["exchange"] is not None:
        optimizer_state["hvdkit"] = local["exchange"]
    optimizer.load_state_dict(optimizer_state)
    set_rng_state(local["rng"])
    return position, local["totals"]
