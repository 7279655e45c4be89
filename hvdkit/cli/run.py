"""Launch a command on N ranks under mpirun or horovodrun (``hvdkit run``).

``hvdkit run -np 4 -- python train.py`` picks the launcher and its flags, runs
the job, and returns its exit code, naming the first rank that failed
(:mod:`hvdkit.runtime.launcher` does the work).
"""
import argparse
import sys

from hvdkit.runtime.launcher import launch


def add_arguments(parser):
    parser.add_argument("-np", "--num-proc", dest="np", type=int, default=2, help="number of ranks (default 2)")
    parser.add_argument("-H", "--hosts", default=None,
                        help="comma-separated host:slots list (default localhost:NP)")
    parser.add_argument("-p", "--ssh-port", type=int, default=None, metavar="PORT",
                        help="the port sshd listens on at the -H hosts (as horovodrun -p; default: ssh's own, "
                             "usually 22), e.g. workers in containers started with 'sshd -p 2222'")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--mpi", dest="launcher", action="store_const", const="mpi",
                       help="launch with mpirun (default when Open MPI is installed)")
    which.add_argument("--gloo", dest="launcher", action="store_const", const="gloo",
                       help="launch with horovodrun's Gloo controller")
    parser.add_argument("--ranks-per-node", type=int, default=None,
                        help="emulate nodes of K ranks on one host (sets HVDKIT_RANKS_PER_NODE)")
    parser.add_argument("--dry-run", action="store_true", help="print the launcher command instead of running it")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command each rank runs, after --")


def main(args):
    return launch(args)


if __name__ == "__main__":
    from hvdkit.cli.main import main as cli_main

    sys.exit(cli_main(["run"] + sys.argv[1:]))
