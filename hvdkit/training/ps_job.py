"""``hvdkit train -np N --mode ps`` from outside a launcher: the servers, then one launch per worker.

An MPI job ends when any of its processes dies, and the parameter-server job
must not: so each worker is ``hvdkit run -np 1`` of its own (on its host of
``-H``), told its index and the job's size through ``HVDKIT_PS_WORKER`` and
``HVDKIT_PS_WORKERS``, and the workers meet only through the servers
(:mod:`hvdkit.training.ps_loop`). This process starts the servers, the
workers, and watches them: a worker that fails is reported and the job goes
on without it (the servers drop it after their member timeout); when worker 0,
the chief that scores the model and writes the records, fails, the others are
stopped and the job ends with its exit code. The servers are stopped when the
job ends, however it ends, and end by themselves should this process die.
"""
import os
import signal
import subprocess
import sys
import time

from hvdkit.errors import UsageError
from hvdkit.runtime import launcher, parent_watch
from hvdkit.training import config as train_config
from hvdkit.training import ps_loop

__all__ = ["run", "worker_command", "worker_hosts"]

POLL_SECONDS = 0.2  # how often the workers' launches are looked at
STOP_GRACE_SECONDS = 20.0  # after SIGTERM, how long a worker's launch may take before it is killed


def worker_hosts(config):
    """One host name per worker, filling the ``-H`` hosts' slots in order (as mpirun's ``--map-by slot``);
    ``localhost`` for every worker without ``-H``."""
    names = [name for name, slots in launcher.parse_hosts(config.hosts, config.np) for _ in range(slots)]
    return names[:config.np]


def worker_command(config, host):
    """The launch of one worker: ``hvdkit run -np 1`` of this same training command."""
    command = [sys.executable, "-m", "hvdkit", "run", "-np", "1"]
    if config.launcher:
        command.append(f"--{config.launcher}")
    if config.hosts:
        command += ["-H", f"{host}:1"]
    return command + ["--", sys.executable, "-m", "hvdkit", "train", *train_config.to_argv(config)]


def _worker_env(group, index, hosts):
    """A worker's environment: the servers' variables, its place in the job, and one thread per process where a
    host holds more workers than cores (as ``hvdkit run -np N`` sets for its ranks)."""
    crowded = max(hosts.count(h) for h in hosts)
    return dict(os.environ, **group.env, **launcher.rank_environment(crowded, os.cpu_count() or 1, os.environ),
                HVDKIT_PS_WORKER=str(index), **{ps_loop.WORKERS_ENV: str(len(hosts)),
                                                ps_loop.NODES_ENV: str(len(set(hosts)))})


def _signal(workers, signum):
    """Pass ``signum`` to every worker launch still running (each in its process group)."""
    for proc in workers:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:
                pass


def _stop(workers):
    """SIGTERM to every worker launch still running, then wait for them, killing what outstays
    ``STOP_GRACE_SECONDS``."""
    _signal(workers, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for proc in workers:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _watch(workers, timeout, stopped):
    """Wait for the workers' launches; the job's exit code. A failed worker other than 0 is reported and left
    behind; a failed worker 0 stops the others. Once ``stopped`` (the signals passed on) is not empty, the
    workers are ending on purpose: nobody is reported."""
    failed = set()
    while True:
        for index, proc in enumerate(workers):
            code = proc.poll()
            if code is None or code == 0 or index in failed or stopped:
                continue
            failed.add(index)
            code = launcher.exit_code(code)
            if index == 0:
                print(f"hvdkit train: worker 0 (the chief: it scores the model and writes the records) ended with "
                      f"exit code {code}; stopping the other workers", file=sys.stderr, flush=True)
                _stop(workers)
                return code
            alive = sum(p.poll() is None for p in workers)
            print(f"hvdkit train: worker {index} ended with exit code {code}; the parameter servers drop it "
                  f"after {timeout:g} s of silence and training goes on with {alive} worker(s)",
                  file=sys.stderr, flush=True)
        if all(p.poll() is not None for p in workers):
            return 0
        time.sleep(POLL_SECONDS)


def run(config):
    """Servers, one launch per worker, their supervision; the job's exit code."""
    hosts = worker_hosts(config)
    ps_loop.check_checkpoint(config)
    try:
        group = ps_loop.start_servers(config, config.np, sorted(set(hosts)))
    except ValueError as err:
        raise UsageError(f"--mode ps: {err}") from None
    me, workers, stopped = os.getpid(), [], []

    def forward(signum, _frame):
        stopped.append(signum)
        _signal(workers, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for index, host in enumerate(hosts):
            if stopped:  # a stop signal came while the workers were starting: start no more
                break
            workers.append(subprocess.Popen(
                worker_command(config, host), env=_worker_env(group, index, hosts), start_new_session=True,
                preexec_fn=lambda: parent_watch.die_with_parent(me, signal.SIGTERM)))
        if stopped:  # and pass it to those started after it came
            _signal(workers, stopped[0])
        code = _watch(workers, ps_loop.member_timeout(), stopped)
        if stopped:
            print(f"hvdkit train: stopped by {signal.Signals(stopped[0]).name}; the job was ended", file=sys.stderr)
            return 128 + stopped[0]
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop(workers)
        ps_loop.stop_servers(group, config.log_dir)
