"""``hvdkit`` on the command line: one sub-command per module.

Each sub-command lives in its own module with ``add_arguments(parser)`` and
``main(args) -> int``; this file only wires them together, so adding a command
never touches the others. Before any of them is imported it sets hvdkit's
default ``TF_CPP_MIN_LOG_LEVEL`` (:mod:`hvdkit.runtime.tf_log`), so neither
this process nor the ranks it starts print TensorFlow's start-up logs.
"""
import argparse
import importlib
import sys

from hvdkit.errors import UsageError
from hvdkit.runtime import tf_log

# name -> (module, one-line help)
COMMANDS = {
    "train": ("hvdkit.cli.train", "train a model on N ranks (the main job)"),
    "run": ("hvdkit.cli.run", "launch a script on N ranks under mpirun or horovodrun"),
    "bench": ("hvdkit.cli.bench", "run a benchmark from benchmarks/ by name"),
    "ps": ("hvdkit.cli.ps", "run parameter servers (servers as a service, workers as the job)"),
    "cluster": ("hvdkit.cli.cluster", "an emulated multi-node cluster on this machine (network namespaces)"),
    "doctor": ("hvdkit.cli.doctor", "report versions and what Horovod and hvdkit were built with"),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad flags print one line naming the flag (``--help`` has the usage), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser():
    parser = OneLineErrorParser(prog="hvdkit", description="Data-parallel training on Horovod.")
    from hvdkit import __version__

    parser.add_argument("--version", action="version", version=f"hvdkit {__version__}")
    subparsers = parser.add_subparsers(dest="subcommand", metavar="COMMAND")
    subparsers.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_text, description=module.__doc__.strip().splitlines()[0])
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


def main(argv=None):
    tf_log.apply_default()  # before a sub-command imports TensorFlow; the user's own value wins
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args._module.main(args)
    except UsageError as err:
        print(f"hvdkit {args.subcommand}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
