"""Train a model on several ranks with hvdkit: the main job.

Outside a launcher, ``hvdkit train -np N ...`` checks every flag, then starts
itself on N ranks through ``hvdkit run``; inside one (mpirun, horovodrun, or
that relaunch) each rank trains. With no flags it trains an MLP on the
bundled digits data on 2 ranks.
"""
import os
import sys

from hvdkit import launch
from hvdkit.training import config as train_config


def add_arguments(parser):
    train_config.add_arguments(parser)


def inside_launcher(environ=os.environ):
    """True in a rank started by mpirun or horovodrun."""
    return any(name in environ for name in ("OMPI_COMM_WORLD_SIZE", "HOROVOD_RANK", "PMI_SIZE"))


def launcher_world_size(environ=os.environ):
    for name in ("OMPI_COMM_WORLD_SIZE", "HOROVOD_SIZE", "PMI_SIZE"):
        if name in environ:
            return int(environ[name])
    return 1


def check(config, world_size):
    from hvdkit.training import data

    dataset = data.load(config.dataset, config.seed)
    train_config.validate(config, world_size, len(dataset.x_train))


def relaunch(config):
    """Start this same command on ``config.np`` ranks and return its exit code."""
    run_argv = ["-np", str(config.np)]
    if config.launcher:
        run_argv.append(f"--{config.launcher}")
    if config.ranks_per_node:
        run_argv += ["--ranks-per-node", str(config.ranks_per_node)]
    run_argv += ["--", sys.executable, "-m", "hvdkit", "train", *train_config.to_argv(config)]
    import argparse

    parser = argparse.ArgumentParser()
    launch.add_arguments(parser)
    return launch.main(parser.parse_args(run_argv))


def main(args):
    config = train_config.from_args(args)
    if inside_launcher():
        check(config, launcher_world_size())
        return run_worker(config)
    check(config, config.np)
    return relaunch(config)


def run_worker(config):
    from hvdkit.training import torch_loop

    return torch_loop.train(config)
