"""Train a model on several ranks with hvdkit: the main job.

Outside a launcher, ``hvdkit train -np N ...`` checks every flag, then starts
itself on N ranks through ``hvdkit run``; inside one (mpirun, horovodrun, or
that relaunch) each rank trains. With no flags it trains an MLP on the
bundled digits data on 2 ranks. With ``--mode ps`` this process runs the
job's parameter servers and starts each worker as a launch of its own
(:mod:`hvdkit.training.ps_job`).
"""
import os
import sys

from hvdkit.cli import run as run_command
from hvdkit.errors import UsageError
from hvdkit.runtime.launcher import inside_launcher, launcher_world_size
from hvdkit.training import config as train_config
from hvdkit.training import elastic_loop


def add_arguments(parser):
    train_config.add_arguments(parser)
    elastic_loop.add_arguments(parser)  # --elastic, --min-np, --max-np, --host-discovery-script, --commit-every


def relaunch(config):
    """Start this same command on ``config.np`` ranks and return its exit code (the ranks inherit
    the command line's TF_CPP_MIN_LOG_LEVEL: hvdkit.runtime.tf_log)."""
    run_argv = ["-np", str(config.np)]
    if config.launcher:
        run_argv.append(f"--{config.launcher}")
    if config.hosts:
        run_argv += ["-H", config.hosts]
    if config.ranks_per_node:
        run_argv += ["--ranks-per-node", str(config.ranks_per_node)]
    run_argv += ["--", sys.executable, "-m", "hvdkit", "train", *train_config.to_argv(config)]
    import argparse

    parser = argparse.ArgumentParser()
    run_command.add_arguments(parser)
    return run_command.main(parser.parse_args(run_argv))


def main(args):
    if args.elastic:  # its own launch (horovodrun's elastic mode) and loop
        if args.mode == "ps":
            raise UsageError("--mode ps with --elastic: elastic training reshapes Horovod's allreduce ring, which "
                             "a parameter-server job does not train through; drop --elastic")
        return elastic_loop.main(args)
    config = train_config.from_args(args)
    if inside_launcher():
        from hvdkit.training import ps_loop

        workers = os.environ.get(ps_loop.WORKERS_ENV) if config.mode == "ps" else None  # one launch per worker
        train_config.check(config, int(workers) if workers else launcher_world_size())
        return run_worker(config)
    train_config.check(config, config.np)
    if config.mode == "ps":
        from hvdkit.training import ps_job

        return ps_job.run(config)
    return relaunch(config)


def run_worker(config):
    if config.mode == "ps":
        from hvdkit.training import ps_loop

        return ps_loop.train(config)
    if config.framework == "tensorflow":
        from hvdkit.training import tf_loop

        return tf_loop.train(config)
    from hvdkit.training import torch_loop

    return torch_loop.train(config)
