"""Checks that every rank describes the same model before they exchange anything.

Ranks whose parameters differ in names, shapes or dtypes would otherwise fail
deep inside Horovod with a message about tensor shapes, or hang. Every rank
gathers every rank's description and reaches the same verdict, so all of them
raise the same error together.
"""

__all__ = ["first_difference", "require_same"]


def _fmt(entry):
    return f"shape {tuple(entry[1])}, dtype {entry[2]}"


def first_difference(descriptions):
    """A sentence naming the first parameter where ranks disagree, or None.

    ``descriptions[r]`` is rank r's list of (name, shape, dtype) in registration order.
    """
    reference = descriptions[0]
    ref_by_name = {entry[0]: entry for entry in reference}
    for rank, entries in enumerate(descriptions[1:], start=1):
        by_name = {entry[0]: entry for entry in entries}
        for entry in reference:
            other = by_name.get(entry[0])
            if other is None:
                return f"parameter {entry[0]!r} exists on rank 0 but not on rank {rank}"
            if tuple(other[1]) != tuple(entry[1]) or other[2] != entry[2]:
                return (f"parameter {entry[0]!r} has {_fmt(entry)} on rank 0 but {_fmt(other)} "
                        f"on rank {rank}")
        for entry in entries:
            if entry[0] not in ref_by_name:
                return f"parameter {entry[0]!r} exists on rank {rank} but not on rank 0"
        if [e[0] for e in entries] != [e[0] for e in reference]:
            return f"parameters are registered in a different order on rank {rank} than on rank 0"
    return None


def require_same(description, allgather_object, settings=None, where="hvdkit"):
    """Raise ValueError on every rank if any rank's ``description`` or ``settings`` differ.

    ``allgather_object(obj)`` returns every rank's ``obj`` in rank order (Horovod's).
    """
    gathered = allgather_object((list(description), settings))
    problem = first_difference([d for d, _ in gathered])
    if problem is None:
        for rank, (_, other) in enumerate(gathered):
            if other != gathered[0][1]:
                problem = f"settings differ: rank 0 has {gathered[0][1]!r}, rank {rank} has {other!r}"
                break
    if problem is not None:
        raise ValueError(f"{where}: the model differs across ranks: {problem}")
