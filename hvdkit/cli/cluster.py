"""An emulated multi-node cluster on this machine: ``hvdkit cluster up|status|down``.

    hvdkit cluster up --nodes 2 --slots 2 --bandwidth 1gbit
    hvdkit run -np 4 -H node1:2,node2:2 -- hvdkit train ...
    hvdkit cluster down

Nodes are network namespaces with their own hostname and sshd, joined by
links shaped to the given rate (:mod:`hvdkit.runtime.cluster`). Needs root,
iproute2 and openssh-server.
"""
import sys

import psutil

from hvdkit.errors import UsageError
from hvdkit.runtime import cluster
from hvdkit.runtime.cluster import net, probe
from hvdkit.runtime.cluster.layout import DEFAULT_DIR, Layout, parse_rate


def add_arguments(parser):
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    up = actions.add_parser("up", help="make the nodes, links, sshd and the hostfile")
    up.add_argument("--nodes", type=int, required=True, help="number of emulated hosts (node1..nodeN)")
    up.add_argument("--slots", type=int, default=1, help="ranks each node runs (the hostfile's slots; default 1)")
    up.add_argument("--bandwidth", required=True, help="each node's link rate, e.g. 100mbit, 1gbit, 10gbit")
    up.add_argument("--latency", type=float, default=None, metavar="MS",
                    help="added one-way delay; needs the kernel's netem, which this kernel lacks")
    for sub in (up, actions.add_parser("status", help="nodes, reachability and a measured link rate"),
                actions.add_parser("down", help="remove everything 'up' made, also after a crash")):
        sub.add_argument("--dir", default=DEFAULT_DIR, help=f"the cluster's directory (default {DEFAULT_DIR})")


def _alive(pid):
    return pid is not None and psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


def _up(args):
    if args.latency is not None:
        raise UsageError(f"--latency {args.latency:g}: adding delay needs tc's netem, which this kernel does not "
                         "have ('tc qdisc add ... netem' fails); links are shaped in rate only")
    layout = Layout(args.nodes, args.slots, parse_rate(args.bandwidth), args.dir)
    net.check_tools()
    cluster.up(layout)
    print(f"hvdkit cluster: {layout.nodes} nodes up ({layout.host_list()}), links at {layout.rate_mbit:g} Mbit/s")
    print(f"  hostfile {layout.path('hostfile')}; ssh config {layout.path('ssh/ssh_config')} (included by ~/.ssh/config)")
    print(f"  hvdkit run -np {layout.nodes * layout.slots} -H {layout.host_list()} -- python train.py")
    print(f"  plain mpirun: source {layout.path('env')}; mpirun --hostfile {layout.path('hostfile')} ...")
    return 0


def _status(args):
    record = cluster.load(args.dir)
    if record is None:
        print(f"hvdkit cluster: no cluster is up in {args.dir}")
        return 1
    lines, healthy = probe.report(record["layout"], record, _alive)
    print("\n".join(lines))
    return 0 if healthy else 1


def _down(args):
    net.check_tools()
    removed = cluster.down(args.dir)
    print(f"hvdkit cluster: removed {len(removed)} namespaces and links" if removed
          else "hvdkit cluster: nothing to remove")
    return 0


def main(args):
    try:
        return {"up": _up, "status": _status, "down": _down}[args.action](args)
    except net.CommandFailed as err:
        print(f"hvdkit cluster {args.action}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    from hvdkit.cli.main import main as cli_main

    sys.exit(cli_main(["cluster"] + sys.argv[1:]))
