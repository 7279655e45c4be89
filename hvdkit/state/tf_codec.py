"""TensorFlow checkpoint files: payloads through ``tf.train.Checkpoint``, with no torch anywhere.

A payload is nested dicts (string keys), lists and tuples of tensors (TensorFlow tensors and
variables, Keras variables, numpy arrays) and JSON values (None, bool, int, float, str). Its tensors
become the variables of one ``tf.train.Checkpoint``, and its structure (where each tensor goes, and
its dtype and shape) a JSON string variable beside them. The checkpoint is written to TensorFlow's
in-memory ``ram://`` file system, and its files (an index and a data shard) are packed into one
uncompressed zip archive: the bytes :mod:`hvdkit.state.checkpoint` writes atomically and checksums,
as it does a torch file. Loading unpacks them into ``ram://`` again, reads the structure, then every
tensor (``assert_consumed``: nothing in the file left over, nothing missing). Tensors come back as
TensorFlow tensors of the saved dtype and shape, bit for bit; tuples as tuples. Nothing is unpickled.
"""
import io
import itertools
import json
import os
import zipfile

import numpy as np
import tensorflow as tf

from hvdkit.state.checkpoint import Codec

__all__ = ["CODEC", "TFCheckpointCodec"]

PREFIX = "payload"  # the tf.train.Checkpoint's file prefix, inside the archive
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so that one payload always gives the same bytes
_scratch = itertools.count()  # names this process's ram:// scratch directories
_VALID = "tensors, numpy arrays, dicts with string keys, lists, tuples, None, bool, int, float and str"


def _encode(value, tensors, where):
    """``value`` as JSON, every container tagged (``{"dict": ...}``, ``{"list": ...}``, ``{"tuple": ...}``)
    and every tensor replaced by ``{"tensor": index}`` into ``tensors``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        keys = [key for key in value if not isinstance(key, str)]
        if keys:
            raise TypeError(f"{where}: a TensorFlow checkpoint needs string dict keys, got {keys[0]!r}")
        return {"dict": {key: _encode(item, tensors, f"{where}[{key!r}]") for key, item in value.items()}}
    if isinstance(value, (list, tuple)):
        items = [_encode(item, tensors, f"{where}[{i}]") for i, item in enumerate(value)]
        return {"tuple" if isinstance(value, tuple) else "list": items}
    if tf.is_tensor(value) or isinstance(value, (tf.Variable, np.ndarray)):
        tensors.append(tf.convert_to_tensor(value))
        return {"tensor": len(tensors) - 1}
    raise TypeError(f"{where}: a TensorFlow checkpoint holds {_VALID}; got {type(value).__name__}")


def _decode(encoded, tensors):
    if not isinstance(encoded, dict):
        return encoded
    (tag, body), = encoded.items()
    if tag == "tensor":
        return tensors[body]
    if tag == "dict":
        return {key: _decode(item, tensors) for key, item in body.items()}
    items = [_decode(item, tensors) for item in body]
    return tuple(items) if tag == "tuple" else items


def _scratch_directory():
    return f"ram://hvdkit-checkpoint/{os.getpid()}-{next(_scratch)}"


def _pack(directory):
    """The files of ``directory`` as one uncompressed zip archive."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name in sorted(tf.io.gfile.listdir(directory)):
            with tf.io.gfile.GFile(f"{directory}/{name}", "rb") as f:
                archive.writestr(zipfile.ZipInfo(name, _ZIP_TIME), f.read())
    return buffer.getvalue()


def _unpack(data, directory):
    """Write the archive's checkpoint files into ``directory``; ValueError for anything else."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as err:
        raise ValueError(f"not a TensorFlow checkpoint archive ({err})") from None
    with archive:
        names = archive.namelist()
        if f"{PREFIX}.index" not in names or any(
                name != f"{PREFIX}.index" and not name.startswith(f"{PREFIX}.data-") or "/" in name for name in names):
            raise ValueError(f"not a TensorFlow checkpoint archive: it holds {names}, expected {PREFIX}.index and "
                             f"{PREFIX}.data-* files")
        tf.io.gfile.makedirs(directory)
        for name in names:
            with tf.io.gfile.GFile(f"{directory}/{name}", "wb") as f:
                f.write(archive.read(name))


class TFCheckpointCodec(Codec):
    extension = "tfckpt"
    name = "tf.train.Checkpoint"

    def dumps(self, payload):
        tensors = []
        structure = {"payload": _encode(payload, tensors, "payload"),
                     "tensors": [[t.dtype.name, t.shape.as_list()] for t in tensors]}
        checkpoint = tf.train.Checkpoint(structure=tf.Variable(json.dumps(structure)),
                                         tensors=[tf.Variable(t, trainable=False) for t in tensors])
        directory = _scratch_directory()
        try:
            checkpoint.write(f"{directory}/{PREFIX}")
            return _pack(directory)
        finally:
            tf.io.gfile.rmtree(directory)

    def loads(self, data):
        directory = _scratch_directory()
        try:
            _unpack(data, directory)
            prefix = f"{directory}/{PREFIX}"
            text = tf.Variable("", dtype=tf.string)
            tf.train.Checkpoint(structure=text).read(prefix).expect_partial()
            structure = json.loads(text.numpy().decode())
            variables = [tf.Variable(tf.zeros(shape, tf.as_dtype(dtype)), trainable=False)
                         for dtype, shape in structure["tensors"]]
            tf.train.Checkpoint(structure=text, tensors=variables).read(prefix).assert_consumed()
            return _decode(structure["payload"], [tf.convert_to_tensor(v) for v in variables])
        finally:
            if tf.io.gfile.exists(directory):
                tf.io.gfile.rmtree(directory)


CODEC = TFCheckpointCodec()
