"""Checks that every rank exchanges the same tensors with the same settings, naming the culprit when not.

Ranks whose parameters differ in names, shapes or dtypes, or whose optimizers
differ in compression or bucketing, would otherwise fail deep inside Horovod
with a message about tensor shapes, pair up the wrong buffers, or hang. Two
checks keep that from happening:

* ``require_same``, once before an optimizer's first collective (and in
  ``broadcast_state``): every rank gathers every rank's description and
  settings and reaches the same verdict, so all of them raise together.
* ``tensor_changes`` and ``require_unchanged``, every step, for tensors that
  change after that first check (a ``.half()`` or a resized parameter on one
  rank). Gathering descriptions every step would cost a collective per step,
  so the check is local and cheap; a rank that finds a change sends a
  poisoned bucket of the planned size instead (nobody waits on a mismatched
  collective), every rank then sees a non-finite result, and only then do
  the ranks gather what changed, so all of them raise the same error.

Messages name the parameter (or setting), every distinct value and the
ranks holding each, e.g. ``shape (16, 32) on ranks 0-2 but shape (17, 32)
on rank 3``.
"""

__all__ = ["first_difference", "ranks_text", "require_same", "require_unchanged", "setting_difference",
           "tensor_changes"]

_MISSING = object()  # a rank that does not have the parameter or setting
_SHOWN = 160  # characters of a setting's value shown in a message
_GROUPS = 4  # distinct values a message lists one by one


def ranks_text(ranks):
    """``[0, 1, 2, 5]`` -> ``"ranks 0-2, 5"``; ``[3]`` -> ``"rank 3"``."""
    ranks = sorted(ranks)
    runs, start = [], 0
    for i in range(1, len(ranks) + 1):
        if i == len(ranks) or ranks[i] != ranks[i - 1] + 1:
            first, last = ranks[start], ranks[i - 1]
            runs.append(str(first) if first == last else
                        f"{first}, {last}" if last == first + 1 else f"{first}-{last}")
            start = i
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(runs)


def _holders(values, fmt):
    """``"A on ranks 0, 1 but B on rank 2"``: every distinct value of ``values[r]`` (rank r's) with
    the ranks holding it, in order of the lowest such rank (past ``_GROUPS`` values, the rest summed up)."""
    groups = []  # [value, ranks]
    for rank, value in enumerate(values):
        for group in groups:
            if group[0] == value:
                group[1].append(rank)
                break
        else:
            groups.append([value, [rank]])
    parts = [f"{fmt(value)} on {ranks_text(ranks)}" for value, ranks in groups[:_GROUPS]]
    if len(groups) > _GROUPS:
        rest = [rank for _, ranks in groups[_GROUPS:] for rank in ranks]
        parts.append(f"{len(groups) - _GROUPS} other values on {ranks_text(rest)}")
    if len(parts) <= 2:
        return " but ".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _fmt_tensor(entry):
    shape, dtype = entry
    return f"shape {tuple(shape)}, dtype {dtype}"


def first_difference(descriptions):
    """A sentence naming the first parameter where ranks disagree, or None.

    ``descriptions[r]`` is rank r's list of (name, shape, dtype) in registration order.
    """
    per_rank = [{entry[0]: (tuple(entry[1]), entry[2]) for entry in entries} for entries in descriptions]
    names = list(dict.fromkeys(entry[0] for entries in descriptions for entry in entries))
    for name in names:
        values = [mine.get(name, _MISSING) for mine in per_rank]
        if any(v is _MISSING for v in values):
            have = [r for r, v in enumerate(values) if v is not _MISSING]
            lack = [r for r, v in enumerate(values) if v is _MISSING]
            return f"parameter {name!r} exists on {ranks_text(have)} but not on {ranks_text(lack)}"
        if any(v != values[0] for v in values):
            return f"parameter {name!r} has {_holders(values, _fmt_tensor)}"
    orders = [tuple(entry[0] for entry in entries) for entries in descriptions]
    if any(order != orders[0] for order in orders):
        position = next(i for i in range(len(orders[0])) if any(order[i] != orders[0][i] for order in orders))
        return (f"parameters are registered in a different order: position {position} holds "
                f"{_holders([order[position] for order in orders], repr)}")
    return None


def _fmt_setting(value):
    if value is _MISSING:
        return "nothing"
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def setting_difference(settings):
    """A sentence naming the first setting where ranks disagree, or None.

    ``settings[r]`` is rank r's settings: a dict (compared key by key, in rank 0's key order) or any
    comparable value.
    """
    if all(s == settings[0] for s in settings):
        return None
    if not all(isinstance(s, dict) for s in settings):
        return f"settings are {_holders(settings, _fmt_setting)}"
    keys = list(dict.fromkeys(key for s in settings for key in s))
    for key in keys:
        values = [s.get(key, _MISSING) for s in settings]
        if any(v != values[0] for v in values):
            return f"{key} is {_holders(values, _fmt_setting)}"
    return None


def require_same(description, allgather_object, settings=None, where="hvdkit"):
    """Raise ValueError on every rank if any rank's ``description`` or ``settings`` differ.

    ``allgather_object(obj)`` returns every rank's ``obj`` in rank order (Horovod's).
    """
    gathered = allgather_object((list(description), settings))
    problem = first_difference([d for d, _ in gathered])
    if problem is not None:
        raise ValueError(f"{where}: the model differs across ranks: {problem}")
    problem = setting_difference([s for _, s in gathered])
    if problem is not None:
        raise ValueError(f"{where}: the settings differ across ranks: {problem}")


_DTYPE_NAMES = {}  # framework dtype object -> "float32", ...: this check runs for every tensor every step


def _dtype_name(dtype):
    """``torch.float32`` / ``tf.float32`` / numpy's -> ``"float32"``."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = getattr(dtype, "name", None)
        name = _DTYPE_NAMES[dtype] = name if isinstance(name, str) else str(dtype).replace("torch.", "")
    return name


def tensor_changes(slots, dtype, tensors):
    """[(name, planned (shape, dtype), now (shape, dtype))] for each of ``tensors`` whose shape or dtype
    differs from its ``fusion.Slot`` in a bucket of ``dtype``; [] normally. Unknown dimensions (None,
    TensorFlow while tracing) are not compared."""
    changes = []
    for slot, tensor in zip(slots, tensors):
        now_dtype = _dtype_name(tensor.dtype)
        if now_dtype != dtype or tensor.shape != slot.shape:
            shape = tuple(tensor.shape)
            if now_dtype != dtype or (shape != slot.shape and None not in shape):
                changes.append((slot.name, (slot.shape, dtype), (shape, now_dtype)))
    return changes


def require_unchanged(changes, allgather_object, where="hvdkit"):
    """Collective: raise ValueError on every rank if any rank's ``changes`` (from ``tensor_changes``)
    is not empty, naming the first changed parameter, its value on every rank and what it was planned
    as. Every rank must call it at the same point (hvdkit: after a non-finite exchange)."""
    gathered = allgather_object(list(changes))
    first = next((entries[0] for entries in gathered if entries), None)
    if first is None:
        return
    name, planned = first[0], first[1]
    values = []
    for entries in gathered:
        mine = {entry[0]: entry[2] for entry in entries}
        values.append(mine.get(name, planned))
    others = len({entry[0] for entries in gathered for entry in entries}) - 1
    more = f" ({others} more parameter{'s' * (others > 1)} changed too)" if others else ""
    if all(v == values[0] for v in values):
        raise ValueError(
            f"{where}: the gradient of parameter {name!r} has {_fmt_tensor(values[0])} on every rank, but the "
            f"optimizer was built for {_fmt_tensor(planned)}{more}; build the DistributedOptimizer after changing "
            f"the model's shapes or dtypes (e.g. after .half() or .to(dtype))")
    raise ValueError(
        f"{where}: a gradient changed shape or dtype on some ranks after the optimizer was built: parameter "
        f"{name!r} has {_holders(values, _fmt_tensor)} (planned: {_fmt_tensor(planned)}){more}")
