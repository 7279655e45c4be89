"""Run parameter servers: one (``hvdkit ps server``) or a local group for a job (``hvdkit ps serve``).

``hvdkit ps serve --servers 2 --mode ssp:2 --workers 4`` starts two servers on
loopback, prints the ``HVDKIT_PS_*`` variables the workers need (the job's
secret among them), and keeps them running until interrupted. Workers are
then the job: ``hvdkit run -np 4 python train.py`` with those variables set,
each wrapping its model in ``hvdkit.ps.torch_worker.TorchWorker`` or
``hvdkit.ps.keras_worker.KerasWorker``.
"""
import os
import shlex
import signal
import time

from hvdkit.errors import UsageError
from hvdkit.ps import launch, modes
from hvdkit.ps.codec import WireCodec
from hvdkit.ps import server as server_mod


def add_arguments(parser):
    sub = parser.add_subparsers(dest="ps_command", metavar="ACTION")
    sub.required = True
    one = sub.add_parser("server", help="run one server (addresses of all of them given)")
    server_mod.add_arguments(one)
    group = sub.add_parser("serve", help="start a group of servers on this host and print the workers' variables")
    group.add_argument("--servers", type=int, default=1, help="number of servers (shards)")
    group.add_argument("--workers", type=int, required=True, help="workers the job starts with")
    group.add_argument("--mode", default="sync", help=f"update mode: {modes.CHOICES}")
    group.add_argument("--host", default="127.0.0.1", help="the address the servers listen on")
    group.add_argument("--no-replicate", action="store_true", help="no replica of each shard")
    group.add_argument("--checkpoint", default=None, help="directory of the servers' checkpoints")
    group.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint every K updates (0: never)")
    group.add_argument("--compression", default="none", help="compression spec of pushes and pulls")


def _check(args):
    try:
        mode = modes.parse(args.mode)
    except ValueError as err:
        raise UsageError(f"--mode: {err}") from None
    if getattr(args, "servers", 1) < 1:
        raise UsageError(f"--servers must be >= 1, got {args.servers}")
    workers = getattr(args, "workers", 1)
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    if mode.name == "backup" and mode.backups >= workers:
        raise UsageError(f"--mode {mode}: B must be less than --workers ({workers})")
    if args.checkpoint_every < 0:
        raise UsageError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    try:
        WireCodec(args.compression)
    except ValueError as err:
        raise UsageError(f"--compression: {err}") from None


def main(args):
    _check(args)
    if args.ps_command == "server":
        return server_mod.run(args)
    group = launch.start_servers(args.servers, args.mode, args.workers, host=args.host,
                                 replicate=not args.no_replicate, checkpoint=args.checkpoint,
                                 checkpoint_every=args.checkpoint_every, compression=args.compression,
                                 exit_with=os.getpid())  # killed, this process takes its servers along
    for name, value in group.env.items():
        print(f"export {name}={shlex.quote(value)}", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop and all(p.poll() is None for p in group.processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        group.stop()
    return 0
