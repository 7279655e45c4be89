"""Scale model: bytes and modelled time per rank of one gradient exchange, 2 to 1,024 ranks.

    python benchmarks/scale.py [--json scale.json] [--png scale.png]     (or: hvdkit bench scale)

For each compression and route (``hvdkit.exchange.scale``: ring, allreduce,
allgather, two_phase, hierarchical) and each world size, one rank's exchange
of a ResNet-50-sized bucket runs through the real strategies and compressors
in this process (every other rank mirrored), its hops' bytes are counted, and
an alpha-beta model prices them: ``--link-gbit`` and ``--latency-us``
between nodes, ``hvdkit.exchange.scale.INTRA_NODE`` inside a node, nodes of
``--ranks-per-node`` ranks sharing one network interface. Kernel time is the
compressors' time measured here (the fastest of ``--repeats`` runs), on this
machine's CPU. ``--json`` writes one record per (compression, route, ranks).
"""
import argparse
import json
import math
import sys

import torch

from hvdkit.compression import registry
from hvdkit.exchange import cost, scale
from hvdkit.kernels.torch_reference import resnet50_shapes

SPECS = ("none", "fp16", "bf16", "int8", "onebit", "topk:0.01", "randomk:0.01", "powersgd:4")
# 25 x 2^20 values (~ResNet-50's 25.6 M): chunks and shares stay equal at every power-of-two world size.
NUMEL = 25 * 2**20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", default="2,4,8,16,32,64,128,256,512,1024", help="world sizes (comma-separated)")
    p.add_argument("--ranks-per-node", type=int, default=8, help="ranks per node (default 8)")
    p.add_argument("--link-gbit", type=float, default=10.0, help="bandwidth between nodes, Gbit/s (default 10)")
    p.add_argument("--latency-us", type=float, default=50.0, help="message latency between nodes, us (default 50)")
    p.add_argument("--specs", default=",".join(SPECS), help="compression specs (comma-separated)")
    p.add_argument("--numel", type=int, default=NUMEL, help=f"bucket size in float32 values (default {NUMEL})")
    p.add_argument("--repeats", type=int, default=2, help="runs per case; the fastest kernel time counts")
    p.add_argument("--json", help="write the records to this file")
    p.add_argument("--png", help="write a plot of bytes and time per rank to this file")
    args = p.parse_args(argv)
    try:
        args.ranks = [int(r) for r in args.ranks.split(",")]
    except ValueError:
        p.error(f"--ranks must be comma-separated integers, got {args.ranks!r}")
    if any(r < 2 for r in args.ranks):
        p.error(f"--ranks must all be >= 2, got {args.ranks}")
    for name in ("ranks_per_node", "repeats", "numel"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.link_gbit <= 0 or args.latency_us < 0:
        p.error(f"--link-gbit must be > 0 and --latency-us >= 0, got {args.link_gbit} and {args.latency_us}")
    args.specs = args.specs.split(",")
    return args


def bucket(spec, numel):
    """The bucket and its layout: PowerSGD gets ResNet-50's matrices (those it compresses)."""
    if not spec.startswith("powersgd"):
        return torch.randn(numel) * 0.01, ()
    compressor = registry.create(spec, None)
    layout, offset = [], 0
    for shape in resnet50_shapes():
        if compressor.accepts(shape):
            layout.append((offset, tuple(shape)))
            offset += math.prod(shape)
    return torch.randn(offset) * 0.01, tuple(layout)


def records(args):
    network = cost.Network(latency_s=args.latency_us * 1e-6, gbit=args.link_gbit)
    for spec in args.specs:
        tensor, layout = bucket(spec, args.numel)
        for route in scale.routes_for(spec):
            for ranks in args.ranks:
                runs = [scale.traffic(spec, route, ranks, args.ranks_per_node, tensor, layout)
                        for _ in range(args.repeats)]
                traffic = min(runs, key=lambda t: t.kernel_s)
                comm = scale.predict(scale.Traffic(traffic.hops, 0.0), args.ranks_per_node, network)
                yield {"compression": spec, "route": route, "ranks": ranks,
                       "ranks_per_node": min(args.ranks_per_node, ranks), "numel": int(tensor.numel()),
                       "bytes_per_rank": round(traffic.bytes_per_rank),
                       "cross_node_bytes_per_rank": round(traffic.cross_node_bytes_per_rank),
                       "link_gbit": args.link_gbit, "latency_us": args.latency_us,
                       "comm_ms": 1e3 * comm, "kernel_ms": 1e3 * traffic.kernel_s,
                       "predicted_ms": 1e3 * (comm + traffic.kernel_s)}


HEADER = ("| compression | route | ranks | MB/rank | cross-node MB/rank | comm ms | kernel ms | predicted ms |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|")


def row_line(r):
    return (f"| {r['compression']} | {r['route']} | {r['ranks']} | {r['bytes_per_rank'] / 1e6:.2f} | "
            f"{r['cross_node_bytes_per_rank'] / 1e6:.2f} | {r['comm_ms']:.1f} | {r['kernel_ms']:.1f} | "
            f"{r['predicted_ms']:.1f} |")


ROUTE_STYLES = {"ring": "-", "allreduce": "-", "allgather": "--", "two_phase": "-.", "hierarchical": ":"}


def plot(rows, path, ranks_per_node):
    """Bytes (left) and modelled communication time (right) per rank: colour by compression, line by route."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    series, colours = {}, {}
    for r in rows:
        series.setdefault((r["compression"], r["route"]), []).append(r)
        colours.setdefault(r["compression"], f"C{len(colours)}")
    for (spec, route), points in series.items():
        ranks = [p["ranks"] for p in points]
        style = dict(linestyle=ROUTE_STYLES[route], color=colours[spec], marker=".", label=f"{spec} {route}")
        left.plot(ranks, [p["bytes_per_rank"] / 1e6 for p in points], **style)
        right.plot(ranks, [p["comm_ms"] for p in points], **style)
    for axis, label in ((left, "MB sent + received per rank"), (right, "modelled communication ms")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("ranks")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=6, ncol=2, loc="upper left")
    fig.suptitle(f"one exchange of {rows[0]['numel']:,} float32 values; nodes of {ranks_per_node} ranks, "
                 f"{rows[0]['link_gbit']:g} Gbit/s and {rows[0]['latency_us']:g} us between them "
                 "(line: - ring/allreduce, -- allgather, -. two-phase, : hierarchical)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    args = parse_args(argv)
    rows = []
    print(HEADER, flush=True)
    for row in records(args):
        rows.append(row)
        print(row_line(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.png:
        plot(rows, args.png, args.ranks_per_node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
