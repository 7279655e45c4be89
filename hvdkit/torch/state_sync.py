"""Start every rank from the same model and optimizer state, after checking the models agree."""
import horovod.torch as hvd
import torch

from hvdkit.exchange import consistency

__all__ = ["broadcast_state", "broadcast_optimizer_state", "check_model"]


def _description(model):
    return ([(name, tuple(p.shape), str(p.dtype)) for name, p in model.named_parameters()]
            + [(f"buffer:{name}", tuple(b.shape), str(b.dtype)) for name, b in model.named_buffers()])


def check_model(model):
    """Raise ValueError on every rank, naming the parameter, if ranks' models differ in names, shapes or dtypes."""
    consistency.require_same(_description(model), hvd.allgather_object, where="broadcast_state")


def broadcast_optimizer_state(optimizer, root_rank=0, model=None):
    """Horovod's ``broadcast_optimizer_state``, also for hvdkit's DistributedOptimizer (whose state
    initialisation must not run a distributed step)."""
    local_step = getattr(optimizer, "_local_step", None)
    if local_step is None:
        return hvd.broadcast_optimizer_state(optimizer, root_rank, model=model)
    with local_step():
        return hvd.broadcast_optimizer_state(optimizer, root_rank, model=model)


def broadcast_state(model, optimizer=None, root_rank=0):
    """Check that every rank has the same model, then broadcast ``root_rank``'s parameters, buffers and
    (if given) optimizer state. Error-feedback residuals stay per rank."""
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"broadcast_state: model must be a torch.nn.Module, got {type(model).__name__}")
    if not 0 <= root_rank < hvd.size():
        raise ValueError(f"broadcast_state: root_rank must be in [0, {hvd.size()}), got {root_rank}")
    check_model(model)
    hvd.broadcast_parameters(model.state_dict(), root_rank=root_rank)
    if optimizer is not None:
        broadcast_optimizer_state(optimizer, root_rank, model=model)
