"""TensorFlow checkpoint files: payloads go through ``tf.train.Checkpoint`` and the same atomic,
checksummed mechanism as torch's, come back bit for bit (compared with numpy), never import torch,
and a directory one framework wrote is refused by the other, naming the file."""
import re
import subprocess
import sys
import threading
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from hvdkit.state import checkpoint
from hvdkit.state.tf_codec import CODEC as TF


def payload():
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((4, 3)).astype(np.float32)
    return {
        "format": 1,
        "config": {"lr": 0.05, "checkpoint": "ckpt", "ranks_per_node": None, "hierarchical": False,
                   "nan": float("nan")},
        "trainable": [keras.Variable(weights), tf.Variable(rng.standard_normal(3))],
        "exchange": {"steps": 7, "buckets": {"0:flat": {"residual": tf.constant(rng.standard_normal(5), tf.float32),
                                                        "memory": None, "numel": 5}}},
        "half": tf.constant([1.5, -0.0, 65504.0], tf.float16),
        "brain": tf.constant([3.0, -1e-3], tf.bfloat16),
        "ints": np.array([[1, -2], [3, 2 ** 40]], np.int64),
        "flags": np.array([True, False]),
        "scalar": tf.constant(2.5),
        "empty": np.zeros((0, 3), np.float32),
        "schedule": [[4, "world"]],
        "pair": (1, "two"),
        "nothing": {},
    }


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_a_payload_round_trips_bit_for_bit(tmp_path):
    original = payload()
    checkpoint.save(tmp_path, 12, original, codec=TF)
    assert [name for name, _ in checkpoint.read_pointer(tmp_path)] == ["ckpt-00000012.tfckpt"]
    loaded = checkpoint.load_latest(tmp_path, codec=TF)
    assert loaded.keys() == original.keys()
    for key in ("half", "brain", "ints", "flags", "scalar", "empty"):
        assert tf.is_tensor(loaded[key]) and same_bits(loaded[key], original[key]), key
    for got, want in zip(loaded["trainable"], original["trainable"]):
        assert same_bits(got, want.numpy())
    residual = loaded["exchange"]["buckets"]["0:flat"]
    assert same_bits(residual["residual"], original["exchange"]["buckets"]["0:flat"]["residual"])
    assert residual["memory"] is None and residual["numel"] == 5 and loaded["exchange"]["steps"] == 7
    assert np.isnan(loaded["config"].pop("nan")) and original["config"].pop("nan") is not None
    assert loaded["config"] == original["config"]
    assert loaded["schedule"] == [[4, "world"]] and loaded["pair"] == (1, "two") and loaded["nothing"] == {}
    assert np.abs(loaded["trainable"][0].numpy()).sum() > 0  # not an all-zero placeholder


def test_the_file_is_a_tf_train_checkpoint_that_tensorflow_reads_itself(tmp_path):
    """The archive holds a plain tf.train.Checkpoint: TensorFlow's own reader finds the tensors in it."""
    original = payload()
    path = checkpoint.save(tmp_path, 1, original, codec=TF)
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["payload.data-00000-of-00001", "payload.index"]
        archive.extractall(tmp_path / "plain")
    reader = tf.train.load_checkpoint(str(tmp_path / "plain" / "payload"))
    values = [reader.get_tensor(key) for key in reader.get_variable_to_shape_map() if key.startswith("tensors/")]
    assert any(same_bits(value, original["ints"]) for value in values)
    assert any(same_bits(value, original["trainable"][0].numpy()) for value in values)


def test_the_same_payload_gives_the_same_bytes():
    assert TF.dumps(payload()) == TF.dumps(payload())


def test_sharded_saves_go_through_the_same_protocol(tmp_path):
    """Two ranks (threads) save and load their own files; each gets its own tensors back."""
    size, results = 2, [None, None]
    barrier, slots = threading.Barrier(size, timeout=60), [None] * size

    def gather(rank):
        def allgather(obj):
            slots[rank] = obj
            barrier.wait()
            gathered = list(slots)
            barrier.wait()
            return gathered
        return allgather

    def rank_body(rank):
        local = {"residual": tf.fill([3], float(rank + 1))}
        shared = {"weights": tf.range(4.0)} if rank == 0 else None
        checkpoint.save_sharded(tmp_path, 5, rank, local, gather(rank), shared=shared, codec=TF)
        results[rank] = checkpoint.load_sharded(tmp_path, rank, size, gather(rank), codec=TF)

    threads = [threading.Thread(target=rank_body, args=(rank,)) for rank in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a rank hung"
    assert [name for name, _ in checkpoint.read_pointer(tmp_path)] == [
        "ckpt-00000005.tfckpt", "ckpt-00000005.rank-00000.tfckpt", "ckpt-00000005.rank-00001.tfckpt"]
    for rank, (step, shared, local) in enumerate(results):
        assert step == 5 and same_bits(shared["weights"], np.arange(4, dtype=np.float32))
        assert same_bits(local["residual"], np.full(3, rank + 1, np.float32))


def test_a_directory_the_other_framework_wrote_is_refused_by_name(tmp_path):
    from hvdkit.state.torch_codec import CODEC as TORCH

    checkpoint.save(tmp_path / "torch", 3, {"w": 1}, codec=TORCH)
    with pytest.raises(checkpoint.CheckpointError, match=r"names 'ckpt-00000003.pt', a .pt checkpoint; this job reads "
                                                         r".tfckpt checkpoints \(tf.train.Checkpoint\): resume with "
                                                         r"the framework that wrote it"):
        checkpoint.load_latest(tmp_path / "torch", codec=TF)
    checkpoint.save(tmp_path / "tf", 3, {"w": tf.ones(2)}, codec=TF)
    with pytest.raises(checkpoint.CheckpointError, match=r"a .tfckpt checkpoint; this job reads .pt checkpoints"):
        checkpoint.load_latest(tmp_path / "tf", codec=TORCH)


def test_a_file_that_is_no_tensorflow_archive_is_named(tmp_path):
    class NotAnArchive(type(TF)):
        def dumps(self, payload):
            return b"not a zip file"

    checkpoint.save(tmp_path, 2, {}, codec=NotAnArchive())
    with pytest.raises(checkpoint.CheckpointError, match=r"ckpt-00000002.tfckpt' matches its checksum but "
                                                         r"tf.train.Checkpoint cannot read it: ValueError: not a "
                                                         r"TensorFlow checkpoint archive"):
        checkpoint.load_latest(tmp_path, codec=TF)


@pytest.mark.parametrize("bad, message", [
    ({"w": object()}, r"payload\['w'\]: a TensorFlow checkpoint holds tensors, numpy arrays, .*; got object"),
    ({"steps": [np.int64(3)]}, r"payload\['steps'\]\[0\]: .*; got int64"),
    ({3: tf.ones(1)}, r"payload: a TensorFlow checkpoint needs string dict keys, got 3"),
])
def test_values_a_tf_checkpoint_cannot_hold_are_named(tmp_path, bad, message):
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.save_sharded(tmp_path, 1, 0, bad, lambda obj: [obj], shared={}, codec=TF)
    assert f"saving checkpoint step 1 in '{tmp_path}' failed on rank 0: TypeError: " in str(info.value)
    assert re.search(message, str(info.value)), str(info.value)
    assert checkpoint.read_pointer(tmp_path) is None


def test_the_tf_codec_imports_no_torch(tmp_path):
    script = ("import sys\n"
              "import tensorflow as tf\n"
              "from hvdkit.state import checkpoint\n"
              "from hvdkit.state.tf_codec import CODEC\n"
              "checkpoint.save(sys.argv[1], 1, {'w': tf.ones(3)}, codec=CODEC)\n"
              "assert checkpoint.load_latest(sys.argv[1], codec=CODEC)['w'].numpy().sum() == 3\n"
              "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
