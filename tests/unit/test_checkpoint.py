"""Atomic checkpoints: the newest complete save loads; damage is detected."""
import os

import pytest
import torch

from hvdkit import checkpoint


def test_round_trip_and_latest_pointer(tmp_path):
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, {"step": step, "w": torch.full((3,), float(step))})
    loaded = checkpoint.load_latest(tmp_path)
    assert loaded["step"] == 3 and torch.equal(loaded["w"], torch.full((3,), 3.0))
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.pt")) == ["ckpt-00000002.pt", "ckpt-00000003.pt"]


def test_empty_directory_has_no_checkpoint(tmp_path):
    assert checkpoint.load_latest(tmp_path) is None


def test_corrupt_file_is_refused(tmp_path):
    path = checkpoint.save(tmp_path, 7, {"w": torch.ones(100)})
    with open(path, "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"garbage!")
    with pytest.raises(checkpoint.CheckpointError, match="does not match the checksum"):
        checkpoint.load_latest(tmp_path)


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".tmp-ckpt-00000009.pt").write_bytes(b"half a checkpoint")
    checkpoint.clean_stale(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_directory_fails_loudly(tmp_path):
    target = tmp_path / "file-not-dir"
    target.write_text("x")
    with pytest.raises((checkpoint.CheckpointError, OSError)):
        checkpoint.save(target / "sub", 1, {"w": torch.ones(1)})
