"""One message as ZeroMQ frames: a JSON header, then each numpy array as its own frame.

Arrays go out as frames that point at the arrays' own memory (pyzmq's
``copy=False``) and come back as read-only ``np.frombuffer`` views of the
received frames, so a shard is never copied by the framing. The header lists
each array's dtype and shape. With a job secret, a last frame carries an
HMAC-SHA256 of every other frame: a message without a valid one is refused
(``WireError``) and never applied.
"""
import hashlib
import hmac
import json

import numpy as np

__all__ = ["WireError", "decode", "encode", "nbytes"]

MAC_BYTES = 32


class WireError(ValueError):
    """A message that is malformed or not signed with the job's secret."""


def _buffer(frame):
    return frame.buffer if hasattr(frame, "buffer") else memoryview(frame)


def _mac(key, frames):
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for frame in frames:
        mac.update(_buffer(frame))
    return mac.digest()


def encode(header, arrays=(), key=None):
    """Frames of one message: header bytes, each array (C-contiguous, sent without a copy), MAC."""
    arrays = [np.ascontiguousarray(a) for a in arrays]
    header = dict(header, arrays=[[a.dtype.str, list(a.shape)] for a in arrays])
    frames = [json.dumps(header, separators=(",", ":")).encode(), *arrays]
    if key:
        frames.append(_mac(key, frames))
    return frames


def decode(frames, key=None):
    """(header dict, list of read-only arrays) of a message ``encode`` made; WireError when its MAC does
    not match ``key`` or its frames do not match its header."""
    if key:
        if len(frames) < 2 or len(_buffer(frames[-1])) != MAC_BYTES:
            raise WireError("message has no MAC frame")
        if not hmac.compare_digest(bytes(_buffer(frames[-1])), _mac(key, frames[:-1])):
            raise WireError("message MAC does not match the job secret")
        frames = frames[:-1]
    try:
        header = json.loads(bytes(_buffer(frames[0])))
        specs = header.pop("arrays")
    except (IndexError, ValueError, KeyError, TypeError) as err:
        raise WireError(f"malformed message header: {err}") from err
    if len(specs) != len(frames) - 1:
        raise WireError(f"header names {len(specs)} arrays, message has {len(frames) - 1}")
    arrays = []
    for (dtype, shape), frame in zip(specs, frames[1:]):
        try:
            arrays.append(np.frombuffer(_buffer(frame), dtype=np.dtype(dtype)).reshape(shape))
        except (TypeError, ValueError) as err:
            raise WireError(f"array frame does not match {dtype} {shape}: {err}") from err
    return header, arrays


def nbytes(frames):
    """Bytes of a message's frames (what the wire carries, before ZeroMQ's few bytes of framing)."""
    return sum(len(_buffer(f)) if not isinstance(f, np.ndarray) else f.nbytes for f in frames)
