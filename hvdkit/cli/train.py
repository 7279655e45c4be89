"""Train a model on several ranks with hvdkit: the main job.

Outside a launcher, ``hvdkit train -np N ...`` checks every flag, then starts
itself on N ranks through ``hvdkit run``; inside one (mpirun, horovodrun, or
that relaunch) each rank trains. With no flags it trains an MLP on the
bundled digits data on 2 ranks. With ``--mode ps`` the relaunching process
also runs the job's parameter servers, from before the ranks start until
they all ended (:mod:`hvdkit.training.ps_loop`).
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


def relaunch_with_servers(config):
    """``relaunch`` with the job's parameter servers running beside it on this host, their addresses and the
    job's secret in the ranks' environment; they are stopped when the job ends, whatever its exit."""
    from hvdkit.runtime.launcher import parse_hosts
    from hvdkit.training import ps_loop

    hosts = [name for name, _ in parse_hosts(config.hosts, config.np)]
    try:
        group = ps_loop.start_servers(config, config.np, hosts)
    except ValueError as err:
        raise UsageError(f"--mode ps: {err}") from None
    saved = {name: os.environ.get(name) for name in group.env}
    try:
        os.environ.update(group.env)  # hvdkit run passes HVDKIT_* variables on to every rank
        return relaunch(config)
    finally:
        ps_loop.stop_servers(group, config.log_dir)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def main(args):
    if args.elastic:  # its own launch (horovodrun's elastic mode) and loop
        if args.mode == "ps":
            raise UsageError("--mode ps with --elastic: elastic training reshapes Horovod's allreduce ring, which "
                             "a parameter-server job does not train through; drop --elastic")
        return elastic_loop.main(args)
    config = train_config.from_args(args)
    if inside_launcher():
        train_config.check(config, launcher_world_size())
        return run_worker(config)
    train_config.check(config, config.np)
    if config.mode == "ps":
        return relaunch_with_servers(config)
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
