"""Torch checkpoint files: payloads through ``torch.save`` / ``torch.load``.

``torch.save`` stores tensors as raw bytes and pickles the rest, so any payload
of tensors, numpy arrays and Python values round-trips bit for bit. Loading
unpickles: a checkpoint directory is trusted input.
"""
import io

import torch

from hvdkit.state.checkpoint import Codec

__all__ = ["CODEC", "TorchCodec"]


class TorchCodec(Codec):
    extension = "pt"
    name = "torch.save"

    def dumps(self, payload):
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return buffer.getvalue()

    def loads(self, data):
        return torch.load(io.BytesIO(data), weights_only=False)


CODEC = TorchCodec()
