"""Run one of the benchmarks in ``benchmarks/`` by name.

``hvdkit bench kernels --json out.json`` runs ``benchmarks/kernels.py`` with
the given arguments in this Python; ``hvdkit bench`` with no name lists them.
Multi-rank benchmarks launch their own ranks (see each script's ``--help``).
"""
import ast
import os
import subprocess
import sys

from hvdkit.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # hvdkit/cli/bench.py
BENCHMARKS_DIR = os.path.join(REPO, "benchmarks")


def available():
    if not os.path.isdir(BENCHMARKS_DIR):
        return []
    return sorted(name[:-3] for name in os.listdir(BENCHMARKS_DIR)
                  if name.endswith(".py") and not name.startswith("_"))


def summary(name):
    """The first line of a benchmark's docstring, read without running the script (its imports are slow)."""
    with open(os.path.join(BENCHMARKS_DIR, name + ".py")) as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


def add_arguments(parser):
    parser.add_argument("name", nargs="?", help="benchmark to run (omit to list them)")
    parser.add_argument("args", nargs="...", help="arguments passed to the benchmark script")


def main(args):
    names = available()
    if args.name is None:
        if not names:
            print(f"benchmarks: none found in {BENCHMARKS_DIR}")
            return 0
        print("benchmarks (hvdkit bench NAME --help for each one's flags):")
        for name in names:
            print(f"  {name:<11} {summary(name)}")
        return 0
    if args.name not in names:
        raise UsageError(f"unknown benchmark {args.name!r}; choose one of {', '.join(names) or '(none found)'}")
    script = os.path.join(BENCHMARKS_DIR, args.name + ".py")
    return subprocess.call([sys.executable, script, *args.args])
