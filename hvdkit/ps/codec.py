"""Compression of pushes and pulls with hvdkit's own compressors, as numpy frames.

A payload is the compressor's tuple of tensors, moved as numpy frames
(bfloat16 travels as its int16 bits). Compressors run through hvdkit's torch
``TensorOps`` on ``torch.from_numpy`` views, so ``none`` needs no framework
and the others import torch on first use. Error feedback: a pushing worker
keeps its residual in a ``BucketState`` per shard (the spec's ``ef=1``); the
server compresses a sync step's mean once with its own residual, and sends
each worker parameters as the compressed difference from what that worker
already holds (the server's copy of its view), so what a pull leaves out is
sent with the next one.
"""
import numpy as np

from hvdkit.compression import registry
from hvdkit.compression import spec as spec_mod
from hvdkit.compression.state import BucketState

__all__ = ["WIRE_SPECS", "WireCodec"]

# Compressors whose payload is one round of plain tensors (PowerSGD needs two rounds and matrix shapes).
WIRE_SPECS = ("none", "fp16", "bf16", "int8", "topk", "randomk", "onebit")


class WireCodec:
    """Encodes flat float32 numpy arrays as frames with one compressor spec."""

    __slots__ = ("spec", "dense", "_compressor", "_torch")

    def __init__(self, spec="none"):
        parsed = spec_mod.parse(spec, registry.ALGORITHMS)
        if parsed.name not in WIRE_SPECS:
            raise ValueError(f"compression {spec!r} cannot compress parameter-server messages; "
                             f"choose one of {', '.join(WIRE_SPECS)}")
        self.spec = parsed
        self.dense = parsed.name == "none"  # no framework, no copies: the array itself is the payload
        self._compressor = None
        self._torch = None

    def prepare(self):
        """Import the framework now (seconds), not in the middle of answering a request."""
        if not self.dense:
            self._setup()

    def _setup(self):
        if self._compressor is None:
            import torch

            from hvdkit.compression.torch_ops import TorchOps

            self._torch = torch
            self._compressor = registry.create(self.spec, TorchOps())
        return self._compressor, self._torch

    def state(self, numel, peer=0):
        """A fresh error-feedback state for one stream of ``numel`` elements."""
        return BucketState(numel, peer=peer)

    def encode(self, array, state):
        """(frames, meta) of ``array`` (flat float32); ``state`` carries this stream's residual."""
        if self.dense:
            return [array], None
        compressor, torch = self._setup()
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        compressor.prepare(state, tensor)
        work = state.attempt()
        payload, ctx = compressor.compress(tensor, work)
        work.steps += 1
        state.settle(False, None)
        frames, kinds = [], []
        for part in payload:
            kinds.append(str(part.dtype).replace("torch.", ""))
            part = part.view(torch.int16) if part.dtype == torch.bfloat16 else part
            frames.append(part.detach().contiguous().numpy())
        return frames, {"kinds": kinds, "ctx": ctx, "spec": str(self.spec)}

    def decode(self, frames, meta):
        """The dense float32 numpy array of ``encode``'s frames."""
        sent = "none" if meta is None else meta["spec"]
        if sent != ("none" if self.dense else str(self.spec)):
            mine = "none" if self.dense else str(self.spec)
            raise ValueError(f"a message compressed with {sent!r} reached a peer configured for {mine!r}: give "
                             f"servers and workers the same compression")
        if meta is None:
            return frames[0]
        compressor, torch = self._setup()
        payload = []
        for frame, kind in zip(frames, meta["kinds"]):
            tensor = torch.from_numpy(np.array(frame))
            payload.append(tensor.view(torch.bfloat16) if kind == "bfloat16" else tensor)
        return np.asarray(compressor.decompress(tuple(payload), meta["ctx"]).numpy(), dtype=np.float32)
