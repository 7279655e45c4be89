"""Server checkpoints through hvdkit's atomic checkpoint mechanism, in numpy's ``.npz`` format.

Servers import no framework, so they get their own codec: arrays as
``.npz`` members, everything else as one JSON member. Each shard has its
own directory (``DIR/shard-00000``); whichever server is a shard's primary
writes it, so a replica that took over keeps checkpointing.
"""
import io
import json
import os

import numpy as np

from hvdkit.state import checkpoint

__all__ = ["CODEC", "NumpyCodec", "load", "save", "shard_directory"]


class NumpyCodec(checkpoint.Codec):
    extension = "npz"
    name = "numpy.savez"

    def dumps(self, payload):
        arrays = {k: v for k, v in payload.items() if isinstance(v, np.ndarray)}
        meta = {k: v for k, v in payload.items() if not isinstance(v, np.ndarray)}
        buffer = io.BytesIO()
        np.savez(buffer, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        return buffer.getvalue()

    def loads(self, data):
        with np.load(io.BytesIO(data)) as archive:
            payload = json.loads(archive["__meta__"].tobytes())
            payload.update({k: archive[k] for k in archive.files if k != "__meta__"})
        return payload


CODEC = NumpyCodec()


def shard_directory(root, shard):
    return os.path.join(os.fspath(root), f"shard-{shard:05d}")


def save(root, shard, updates, payload, keep=2):
    return checkpoint.save(shard_directory(root, shard), updates, payload, keep=keep, codec=CODEC)


def load(root, shard):
    """The newest checkpoint of ``shard`` under ``root``, or None."""
    return checkpoint.load_latest(shard_directory(root, shard), codec=CODEC)
