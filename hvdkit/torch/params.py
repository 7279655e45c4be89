"""Names for an optimizer's parameters, checked the way Horovod checks them (with clearer messages)."""
import collections

import torch

from hvdkit.exchange.buckets import TensorInfo

__all__ = ["named_trainable", "tensor_infos"]


def _where(param_groups, p):
    for i, group in enumerate(param_groups):
        for j, q in enumerate(group["params"]):
            if q is p:
                return f"param_groups[{i}]['params'][{j}] (shape {tuple(p.shape)})"
    return f"a tensor of shape {tuple(p.shape)}"


def named_trainable(param_groups, named_parameters=None):
    """[(name, parameter)] of the optimizer's parameters that require grad, in registration order.

    Registration order is ``named_parameters``' order (usually the model's), else the optimizer's.
    Raises ValueError for: no parameters, entries that are not (str, tensor) pairs, duplicate names,
    one parameter under two names, and optimizer parameters missing from ``named_parameters``.
    """
    params = [p for group in param_groups for p in group["params"]]
    if not params:
        raise ValueError("DistributedOptimizer: the optimizer has no parameters (its param_groups are empty)")
    if named_parameters is None:
        named = [(f"param.{i}.{j}", p) for i, group in enumerate(param_groups) for j, p in enumerate(group["params"])]
    else:
        named = _checked(list(named_parameters), param_groups, params)
    trainable = [(name, p) for name, p in named if p.requires_grad]
    if not trainable:
        raise ValueError("DistributedOptimizer: none of the optimizer's parameters requires grad")
    return trainable


def _checked(named, param_groups, params):
    """``named`` validated against the optimizer's ``params``, restricted to them."""
    for entry in named:
        if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], torch.Tensor)):
            raise ValueError("named_parameters must be a sequence of (name, parameter) tuples, usually "
                             f"model.named_parameters(); got an entry {entry!r:.80}")
    counts = collections.Counter(name for name, _ in named)
    dups = sorted(name for name, count in counts.items() if count > 1)
    if dups:
        raise ValueError(f"named_parameters: parameter names must be unique; duplicates: {', '.join(dups)}")
    name_of = {}
    for name, p in named:
        if id(p) in name_of:
            raise ValueError(f"named_parameters: one parameter appears under two names, {name_of[id(p)]!r} "
                             f"and {name!r}")
        name_of[id(p)] = name
    missing = [p for p in params if id(p) not in name_of]
    if missing:
        where = "; ".join(_where(param_groups, p) for p in missing[:5])
        raise ValueError(f"named_parameters: {len(missing)} of the optimizer's parameters are not named: {where}")
    in_optimizer = {id(p) for p in params}
    return [(name, p) for name, p in named if id(p) in in_optimizer]


def tensor_infos(named):
    """fusion.TensorInfo per (name, parameter)."""
    return [TensorInfo(name, tuple(p.shape), str(p.dtype).replace("torch.", ""), p.element_size())
            for name, p in named]
