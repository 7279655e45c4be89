"""Counts the operations that make the host wait for the device, from PyTorch's dispatcher.

On CUDA these are what ``torch.cuda.set_sync_debug_mode`` reports: reading a
value on the host (``.item()``, ``bool()``, ``float()``: ``_local_scalar_dense``),
ops whose output size depends on the data (``nonzero``, ``masked_select``,
``unique``), and ``tolist`` (which never reaches the dispatcher, so it is
counted by wrapping the method). On CPU nothing waits, but the same calls are
made: counting them on CPU shows what a GPU step would wait for. Ops run
inside a custom C++ kernel are not seen; hvdkit's kernels are checked for
syncs on the GPU (benchmarks/gpu_step.py).
"""
import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNCING_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim",
               "unique_consecutive")


class HostSyncCounter(TorchDispatchMode):
    """``with HostSyncCounter() as counter: ...`` then ``counter.count`` and ``counter.calls``."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self._stack = contextlib.ExitStack()

    @property
    def count(self):
        return len(self.calls)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNCING_OPS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        original = torch.Tensor.tolist

        def tolist(tensor):
            self.calls.append("tolist")
            return original(tensor)

        torch.Tensor.tolist = tolist
        self._stack.callback(setattr, torch.Tensor, "tolist", original)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._stack.close()
