"""Atomic checkpoints: a killed writer never leaves a half-written file that
a resume would load.

Layout of a checkpoint directory::

    ckpt-00000120.pt      one file per save, named by step
    latest                "ckpt-00000120.pt <sha256>": the newest complete save

A save writes to a temporary file in the same directory, fsyncs it,
``os.replace``-s it into place, then replaces ``latest`` the same way; a
load checks the checksum. Only one rank (rank 0) writes. The payload is any
object ``torch.save`` accepts (tensors, state dicts, numpy RNG state).
"""
import glob
import hashlib
import io
import os

LATEST = "latest"
TEMP_PREFIX = ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or trusted."""


def _atomic_write(path, data):
    directory = os.path.dirname(path) or "."
    temp = os.path.join(directory, TEMP_PREFIX + os.path.basename(path))
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        if os.path.exists(temp):
            os.unlink(temp)
        raise CheckpointError(f"could not write checkpoint {path!r}: {err.strerror or err}") from err


def clean_stale(directory):
    """Remove temporaries left by a writer that was killed mid-save."""
    for path in glob.glob(os.path.join(directory, TEMP_PREFIX + "*")):
        os.unlink(path)


def save(directory, step, payload, keep=2):
    """Write ``payload`` as the checkpoint of ``step``; keep the newest ``keep`` files."""
    import torch

    os.makedirs(directory, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    name = f"ckpt-{step:08d}.pt"
    _atomic_write(os.path.join(directory, name), data)
    _atomic_write(os.path.join(directory, LATEST), f"{name} {hashlib.sha256(data).hexdigest()}\n".encode())
    for old in sorted(glob.glob(os.path.join(directory, "ckpt-*.pt")))[:-keep]:
        os.unlink(old)
    return os.path.join(directory, name)


def load_latest(directory):
    """The newest checkpoint's payload, or None when the directory has none."""
    import torch

    pointer = os.path.join(directory, LATEST)
    if not os.path.exists(pointer):
        return None
    with open(pointer) as f:
        name, _, digest = f.read().strip().partition(" ")
    path = os.path.join(directory, name)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise CheckpointError(f"{pointer!r} names {name!r}, which cannot be read: {err.strerror or err}") from err
    if hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(f"checkpoint {path!r} does not match the checksum in {pointer!r}: it is corrupt")
    return torch.load(io.BytesIO(data), weights_only=False)
