"""Accuracy of every compressor against dense training, with the defaults a user gets.

    python benchmarks/accuracy.py [--np 4 --ranks-per-node 2 --hierarchical] [--json accuracy.json]

Runs ``hvdkit train`` once per compression spec (same seed, data, model and
flags) and prints each run's final test accuracy next to the dense run's,
with the difference in points. Every flag not listed is ``hvdkit train``'s
default; ``--train-args`` passes more.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

SPECS = ("none", "fp16", "bf16", "int8", "onebit", "topk:0.01", "randomk:0.01", "powersgd:4")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--np", type=int, default=4, help="ranks (default 4)")
    p.add_argument("--ranks-per-node", type=int, default=2, help="emulated ranks per node (default 2)")
    p.add_argument("--hierarchical", action=argparse.BooleanOptionalAction, default=True,
                   help="hierarchical exchange (default on)")
    p.add_argument("--specs", default=",".join(SPECS), help="compression specs (comma-separated; 'none' first)")
    p.add_argument("--train-args", default="", help="more hvdkit train flags, e.g. '--epochs 20 --model cnn'")
    p.add_argument("--json", help="write the records to this file")
    args = p.parse_args(argv)
    if args.np < 1 or args.ranks_per_node < 1 or args.np % args.ranks_per_node:
        p.error(f"--ranks-per-node {args.ranks_per_node} must divide --np {args.np} (both >= 1)")
    args.specs = args.specs.split(",")
    if args.specs[0] != "none":
        args.specs.insert(0, "none")
    return args


def final_record(log_dir):
    with open(os.path.join(log_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()][-1]


def train(args, spec):
    """(final test accuracy, seconds) of one ``hvdkit train`` run."""
    with tempfile.TemporaryDirectory(prefix="hvdkit-accuracy-") as log_dir:
        cmd = [sys.executable, "-m", "hvdkit", "train", "-np", str(args.np), "--ranks-per-node",
               str(args.ranks_per_node), "--compression", spec, "--log-dir", log_dir,
               *(["--hierarchical"] if args.hierarchical else []), *shlex.split(args.train_args)]
        started = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return final_record(log_dir)["test_accuracy"], time.perf_counter() - started


def main(argv=None):
    args = parse_args(argv)
    rows, dense = [], None
    print("| compression | test accuracy | vs dense (points) | seconds |\n|---|---:|---:|---:|", flush=True)
    for spec in args.specs:
        accuracy, seconds = train(args, spec)
        dense = accuracy if dense is None else dense
        rows.append({"compression": spec, "test_accuracy": accuracy, "points_vs_dense": 100 * (accuracy - dense),
                     "seconds": seconds, "np": args.np, "ranks_per_node": args.ranks_per_node,
                     "hierarchical": args.hierarchical, "train_args": args.train_args})
        print(f"| {spec} | {100 * accuracy:.2f} % | {100 * (accuracy - dense):+.2f} | {seconds:.0f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
