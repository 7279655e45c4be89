"""``hvdkit train``'s flag checks, which run before any rank starts."""
import argparse
import os

import pytest

from hvdkit.errors import UsageError
from hvdkit.training import config as train_config

DIGITS_TRAIN = 1438


def make(**overrides):
    return train_config.TrainConfig(**overrides)


def validate(config, world_size=2, train_samples=DIGITS_TRAIN):
    train_config.validate(config, world_size, train_samples)


def test_defaults_are_valid(tmp_path):
    validate(make(log_dir=str(tmp_path)))


@pytest.mark.parametrize("overrides, world, message", [
    ({"batch_size": 720}, 2, "--batch-size 720 is larger than a rank's shard"),
    ({"ranks_per_node": 3}, 4, "--ranks-per-node 3 does not divide -np 4"),
    ({"epochs": 0}, 2, "--epochs must be >= 1"),
    ({"lr": -0.1}, 2, "--lr must be > 0"),
    ({"average_every": 0}, 2, "--average-every must be >= 1"),
    ({"compression": "zip"}, 2, "--compression: .*zip"),
    ({"compression": "topk:2"}, 2, "--compression: .*topk"),
    ({"framework": "tensorflow"}, 2, "--framework tensorflow"),
    ({}, 0, "-np must be >= 1"),
])
def test_bad_flags_are_named(tmp_path, overrides, world, message):
    with pytest.raises(UsageError, match=message):
        validate(make(log_dir=str(tmp_path), **overrides), world_size=world)


def test_batch_that_exactly_fills_a_shard_is_accepted(tmp_path):
    validate(make(log_dir=str(tmp_path), batch_size=DIGITS_TRAIN // 2))


def test_unwritable_checkpoint_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            target = "/proc/hvdkit-not-writable"  # root ignores mode bits; /proc refuses everyone
        else:
            target = str(locked)
        with pytest.raises(UsageError, match="--checkpoint .* is not a writable directory"):
            validate(make(log_dir=str(tmp_path), checkpoint=target))
    finally:
        locked.chmod(0o700)


def test_worker_argv_round_trips_through_the_parser(tmp_path):
    config = make(model="cnn", epochs=3, compression="topk:0.01", hierarchical=True, ranks_per_node=2,
                  log_dir=str(tmp_path), np=4, launcher="gloo")
    parser = argparse.ArgumentParser()
    train_config.add_arguments(parser)
    back = train_config.from_args(parser.parse_args(train_config.to_argv(config)))
    expected = make(model="cnn", epochs=3, compression="topk:0.01", hierarchical=True, ranks_per_node=2,
                    log_dir=str(tmp_path))
    assert back == expected
