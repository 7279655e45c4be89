"""``hvdkit train``'s flag checks, which run before any rank starts."""
import argparse
import os

import pytest

from hvdkit.errors import UsageError
from hvdkit.training import config as train_config

DIGITS_TRAIN = 1438


def make(**overrides):
    return train_config.TrainConfig(**overrides)


def validate(config, world_size=2, train_samples=DIGITS_TRAIN, environ=None):
    train_config.validate(config, world_size, train_samples, environ={} if environ is None else environ)


def test_defaults_are_valid(tmp_path):
    validate(make(log_dir=str(tmp_path)))


@pytest.mark.parametrize("overrides, world, message", [
    ({"batch_size": 720}, 2, "--batch-size 720 is larger than a rank's shard"),
    ({"ranks_per_node": 3}, 4, "--ranks-per-node 3 does not divide -np 4"),
    ({"epochs": 0}, 2, "--epochs must be >= 1"),
    ({"lr": -0.1}, 2, "--lr must be a finite number > 0, got -0.1"),
    ({"lr": float("inf")}, 2, "--lr must be a finite number > 0, got inf"),
    ({"lr": float("nan")}, 2, "--lr must be a finite number > 0, got nan"),
    ({"seed": -1}, 2, r"--seed must be an integer in \[0, 2\*\*63\), got -1"),
    ({"momentum": 1.0}, 2, r"--momentum must be in \[0, 1\), got 1.0"),
    ({"average_every": 0}, 2, "--average-every must be >= 1"),
    ({"compression": "zip"}, 2, "--compression: .*zip"),
    ({"compression": "topk:2"}, 2, "--compression: .*topk"),
    ({"framework": "tensorflow", "average_warmup": 8}, 2, "--average-warmup 8 needs --average-every"),
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


def test_the_shard_check_can_wait_for_the_dataset(tmp_path):
    config = make(log_dir=str(tmp_path), batch_size=720)
    train_config.validate(config, 2, environ={})  # no dataset size yet: every other check
    with pytest.raises(UsageError, match="--batch-size 720 is larger than a rank's shard \\(719 of 1438"):
        train_config.check_shard(config, 2, DIGITS_TRAIN)


@pytest.mark.parametrize("overrides, message", [
    ({"average_warmup": 10}, "--average-warmup 10 needs --average-every H"),
    ({"average_every": 4, "compression": "topk:0.01"},
     "--compression topk:0.01 would never run: with --average-every 4 gradients are exchanged only in the "
     "--average-warmup 0 synchronous steps; use --compression none, or a longer --average-warmup"),
    ({"average_every": 4, "average_warmup": 30, "compression": "topk:0.01,warmup=30"},
     "--compression topk:0.01,warmup=30 would never run: .* all inside the compression's own warmup=30"),
])
def test_contradictory_local_sgd_flags_are_refused(tmp_path, overrides, message):
    with pytest.raises(UsageError, match=message):
        validate(make(log_dir=str(tmp_path), **overrides))


def test_compression_of_the_post_local_sgd_warmup_is_accepted(tmp_path):
    validate(make(log_dir=str(tmp_path), average_every=4, average_warmup=30, compression="topk:0.1,warmup=10"))
    validate(make(log_dir=str(tmp_path), average_every=4, compression="none"))


LAUNCHED = {"OMPI_COMM_WORLD_SIZE": "4"}


@pytest.mark.parametrize("overrides, world, environ, message", [
    ({}, 4, {}, "--hierarchical: hvdkit train starts every rank on this host, which is one node; add "
                "--ranks-per-node K"),
    ({"ranks_per_node": 4}, 4, {}, "--hierarchical needs several nodes of several ranks, but 4 ranks per node at "
                                   "-np 4 make 1 node\\(s\\) of 4"),
    ({"ranks_per_node": 1}, 4, {}, "but 1 ranks per node at -np 4 make 4 node\\(s\\) of 1"),
    ({}, 4, {"HVDKIT_RANKS_PER_NODE": "4"}, "but 4 ranks per node at -np 4"),
])
def test_hierarchical_without_several_nodes_of_several_ranks_is_refused(tmp_path, overrides, world, environ,
                                                                         message):
    with pytest.raises(UsageError, match=message):
        validate(make(log_dir=str(tmp_path), hierarchical=True, **overrides), world_size=world, environ=environ)


@pytest.mark.parametrize("overrides, environ", [
    ({"ranks_per_node": 2}, {}),
    ({}, {"HVDKIT_RANKS_PER_NODE": "2"}),
    ({"ranks_per_node": 2}, {"HVDKIT_RANKS_PER_NODE": "4"}),  # the flag replaces the variable
    ({}, LAUNCHED),  # inside mpirun the hosts decide the nodes
])
def test_hierarchical_with_several_nodes_is_accepted(tmp_path, overrides, environ):
    validate(make(log_dir=str(tmp_path), hierarchical=True, **overrides), world_size=4, environ=environ)


@pytest.mark.parametrize("overrides, environ, message", [
    ({}, {"HOROVOD_CYCLE_TIME": "fast"}, "^HOROVOD_CYCLE_TIME='fast': expected a number of milliseconds >= 0$"),
    ({}, {"HVDKIT_RANKS_PER_NODE": "3"}, "^HVDKIT_RANKS_PER_NODE='3' does not divide the 4 ranks"),
    ({}, {"HOROVOD_STALL_CHECK_TIME_SECONDS": "20", "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "5"},
     "^HOROVOD_STALL_SHUTDOWN_TIME_SECONDS=5 is less than HOROVOD_STALL_CHECK_TIME_SECONDS=20"),
])
def test_bad_environment_variables_are_named(tmp_path, overrides, environ, message):
    with pytest.raises(UsageError, match=message):
        validate(make(log_dir=str(tmp_path), **overrides), world_size=4, environ=environ)


def test_a_ranks_per_node_flag_replaces_a_bad_variable(tmp_path):
    validate(make(log_dir=str(tmp_path), ranks_per_node=2), world_size=4, environ={"HVDKIT_RANKS_PER_NODE": "3"})
