"""``allgather_object`` over a Horovod process set (Horovod 0.28's own gathers over every rank)."""
import itertools
import pickle

import horovod.torch as hvd
import torch

__all__ = ["gatherer"]


def gatherer(process_set, prefix):
    """``allgather_object(obj)`` among the ranks of ``process_set``: pickled, then two Horovod allgathers
    (the lengths, the bytes); op names ``prefix.objN`` numbered per call, the same on every member."""
    calls = itertools.count()

    def allgather_object(obj):
        name = f"{prefix}.obj{next(calls)}"
        data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
        sizes = hvd.allgather(torch.tensor([data.numel()]), name=f"{name}.sizes", process_set=process_set)
        gathered = hvd.allgather(data, name=f"{name}.data", process_set=process_set)
        out, start = [], 0
        for size in sizes.tolist():
            out.append(pickle.loads(gathered[start:start + size].numpy().tobytes()))
            start += size
        return out

    return allgather_object
