"""Allreduce latency and bandwidth: raw MPI, Horovod, hvdkit flat and hierarchical.

    mpirun -np 2 python benchmarks/allreduce.py [--json out.json]

Prints one nccl-tests-style table per implementation (size, count, type,
time in us, algbw, busbw = algbw * 2(p-1)/p, all in GB/s = 1e9 B/s) and a
summary of the ratios hvdkit's targets are stated in.

Raw ``MPI_Allreduce`` (mpi4py) runs first, before Horovod is initialised:
Horovod's background thread negotiates every cycle even when idle and, on a
small machine, slows everything running beside it. Then Horovod starts
through ``hvdkit.topology.init`` and the three Horovod paths run on torch CPU
tensors. Every path reduces in place by default (``MPI_IN_PLACE``,
``hvd.allreduce_``, hvdkit's ``inplace=True``), as an optimizer reduces its
gradient buffers; ``--out-of-place`` measures the allocating forms. Each op
has a fixed name, as gradients do, so Horovod's response cache is used.
All reductions are sums; a time is the slowest rank's mean over a timed loop
(with ``--repeat R``, the fastest such mean of R sweeps over all sizes: on a
shared machine other work only ever adds time). Horovod cannot be restarted
in-process with its cycle time or fusion threshold set (0.28.1 crashes in its
parameter manager), so raw MPI's sweeps all come first.

hvdkit's settings (``hvdkit.runtime.horovod_env``, including the launch-time ones)
are applied before MPI and torch start, so all four paths run under the same
MPI settings; ``--horovod-defaults`` instead runs everything with Horovod's,
Open MPI's and PyTorch's shipped values.
"""
import argparse
import datetime
import functools
import json
import os
import platform
import sys
import time

import numpy as np

IMPLS = ("mpi", "horovod", "hvdkit", "hvdkit-hier")
DTYPES = {"float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64}
# Horovod 0.28.1's and Open MPI 4.1's own values, to measure them as they ship.
SHIPPED = {"HOROVOD_CYCLE_TIME": "1", "HOROVOD_FUSION_THRESHOLD": str(128 * 1024 * 1024),
           "HOROVOD_STALL_CHECK_TIME_SECONDS": "60", "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "0",
           "OMPI_MCA_mpi_yield_when_idle": "0"}


def parse_bytes(text):
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    suffix = text[-1] if text and text[-1] in units else ""
    return int(float(text[: len(text) - len(suffix)]) * units[suffix])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--min-bytes", type=parse_bytes, default=4, help="smallest message (default 4)")
    p.add_argument("--max-bytes", type=parse_bytes, default=64 << 20, help="largest message (default 64M)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated subset of {','.join(IMPLS)}")
    p.add_argument("--seconds", type=float, default=0.25, help="timed seconds per size and impl (default 0.25)")
    p.add_argument("--min-iters", type=int, default=5)
    p.add_argument("--max-iters", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=1,
                   help="sweep all sizes this many times and keep each cell's fastest time (default 1)")
    p.add_argument("--horovod-defaults", action="store_true",
                   help="run with Horovod's and Open MPI's shipped settings, not hvdkit's")
    p.add_argument("--out-of-place", action="store_true",
                   help="reduce into a new buffer instead of in place")
    p.add_argument("--split", type=int, default=1,
                   help="Horovod paths: reduce each message as this many tensors started together, "
                        "as an optimizer's buckets are (exercises Horovod's tensor fusion; default 1)")
    p.add_argument("--json", dest="json_path", default=None, help="write the records to this JSON file")
    args = p.parse_args(argv)
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    unknown = sorted(set(impls) - set(IMPLS))
    if unknown:
        p.error(f"--impls: unknown {unknown}; choose from {', '.join(IMPLS)}")
    if args.split < 1:
        p.error(f"--split must be >= 1, got {args.split}")
    if not 0 < args.min_bytes <= args.max_bytes:
        p.error(f"need 0 < --min-bytes <= --max-bytes, got {args.min_bytes} and {args.max_bytes}")
    args.impls = impls
    return args


def message_sizes(min_bytes, max_bytes, itemsize):
    """Powers of two from min to max bytes, rounded to whole elements."""
    sizes, size = [], min_bytes
    while size <= max_bytes:
        sizes.append(max(size // itemsize, 1))
        size *= 2
    return sorted(set(sizes))


def time_loop(run_once, comm, args):
    """Mean seconds per call, agreed on by all ranks (the slowest rank's)."""
    from mpi4py import MPI

    for _ in range(args.warmup):
        run_once()
    comm.Barrier()
    t0 = time.perf_counter()
    run_once()
    estimate = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    iters = int(min(args.max_iters, max(args.min_iters, args.seconds / max(estimate, 1e-9))))
    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        run_once()
    elapsed = time.perf_counter() - t0
    return comm.allreduce(elapsed, op=MPI.MAX) / iters


def record(impl, np_, count, dtype, seconds):
    nbytes = count * np.dtype(DTYPES[dtype]).itemsize
    algbw = nbytes / seconds / 1e9
    factor = 2 * (np_ - 1) / np_
    return {"impl": impl, "np": np_, "bytes": nbytes, "count": count, "dtype": dtype,
            "time_us": seconds * 1e6, "algbw_gbps": algbw, "busbw_gbps": algbw * factor}


def bench_mpi(comm, counts, args):
    """{("mpi", count): seconds} for raw MPI_Allreduce."""
    from mpi4py import MPI

    times = {}
    for count in counts:
        send = np.ones(count, dtype=DTYPES[args.dtype])
        recv = np.empty_like(send)
        if args.out_of_place:
            times["mpi", count] = time_loop(lambda: comm.Allreduce(send, recv, op=MPI.SUM), comm, args)
        else:
            times["mpi", count] = time_loop(lambda: comm.Allreduce(MPI.IN_PLACE, recv, op=MPI.SUM), comm, args)
        recv[:] = 1
        comm.Allreduce(MPI.IN_PLACE, recv, op=MPI.SUM)
        assert recv[0] == comm.Get_size()
    return times


def horovod_starts(hvd, topo, inplace):
    """impl -> start(tensor, name): starts one sum allreduce, returns the function that waits for it."""
    from hvdkit.exchange import collectives

    start_horovod = hvd.allreduce_async_ if inplace else hvd.allreduce_async
    return {
        "horovod": lambda t, name: functools.partial(hvd.synchronize, start_horovod(t, name=name, op=hvd.Sum)),
        "hvdkit": lambda t, name: collectives.allreduce_async(t, hvd, op="sum", name=name, inplace=inplace).wait,
        "hvdkit-hier": lambda t, name: collectives.hierarchical_allreduce_async(
            t, hvd, topo, op="sum", name=name, inplace=inplace).wait,
    }


def reduce_parts(start, parts, names):
    """Start every part's allreduce, then wait for all (as an optimizer does with its buckets)."""
    waits = [start(part, name) for part, name in zip(parts, names)]
    return [wait() for wait in waits]


def bench_horovod(comm, counts, args, impls, starts):
    """{(impl, count): seconds}, the implementations interleaved at each size."""
    import torch

    times = {}
    for count in counts:
        tensor = torch.ones(count, dtype=getattr(torch, args.dtype))
        parts = list(tensor.chunk(min(args.split, count)))
        for impl in impls:
            names = [f"bench.{impl}.{count}.{i}" for i in range(len(parts))]
            fresh = [torch.ones_like(p) for p in parts]
            check = reduce_parts(starts[impl], fresh, names)
            assert all(c[0].item() == comm.Get_size() for c in check), (impl, count)
            times[impl, count] = time_loop(lambda: reduce_parts(starts[impl], parts, names), comm, args)
    return times


def merge_best(best, times):
    """Keep each cell's fastest time: on a shared machine other work only adds time."""
    for key, seconds in times.items():
        best[key] = min(seconds, best.get(key, seconds))


def format_size(nbytes):
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale}{unit}"
    return str(nbytes)


def print_table(impl, rows):
    print(f"\n# {impl}")
    print(f"{'size':>10} {'count':>12} {'type':>8} {'time(us)':>11} {'algbw':>8} {'busbw':>8}")
    for r in rows:
        print(f"{format_size(r['bytes']):>10} {r['count']:>12} {r['dtype']:>8} {r['time_us']:>11.1f} "
              f"{r['algbw_gbps']:>8.3f} {r['busbw_gbps']:>8.3f}")


def print_summary(by_impl):
    """The ratios the targets are stated in, per size present in both implementations."""
    pairs = [("hvdkit", "horovod", "time"), ("hvdkit-hier", "hvdkit", "time"),
             ("horovod", "mpi", "busbw"), ("hvdkit", "mpi", "busbw")]
    print("\n# summary: time ratio (>1 slower) or busbw ratio (<1 slower)")
    for a, b, what in pairs:
        if a not in by_impl or b not in by_impl:
            continue
        ref = {r["bytes"]: r for r in by_impl[b]}
        key = "time_us" if what == "time" else "busbw_gbps"
        ratios = [(r["bytes"], r[key] / ref[r["bytes"]][key]) for r in by_impl[a]
                  if r["bytes"] in ref and ref[r["bytes"]][key] > 0]
        if ratios:
            text = " ".join(f"{format_size(n)}:{x:.2f}" for n, x in ratios)
            print(f"{a}/{b} {what}: {text}")


def apply_settings(args):
    """hvdkit's settings (or the shipped ones) into the environment, before MPI starts."""
    from hvdkit.runtime import horovod_env

    if args.horovod_defaults:
        os.environ.update({k: v for k, v in SHIPPED.items() if k not in os.environ})
    else:
        for name, value in horovod_env.LAUNCH_DEFAULTS.items():
            os.environ.setdefault(name, value)  # before torch is imported: it reads them once
    horovod_env.apply_defaults()


def main(argv=None):
    args = parse_args(argv)
    apply_settings(args)
    import torch
    from mpi4py import MPI

    import horovod.torch as hvd
    from hvdkit import topology
    from hvdkit.runtime import horovod_env

    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    counts = message_sizes(args.min_bytes, args.max_bytes, np.dtype(DTYPES[args.dtype]).itemsize)
    times, topo = {}, None
    if "mpi" in args.impls:
        for _ in range(args.repeat):
            merge_best(times, bench_mpi(comm, counts, args))
    horovod_impls = [i for i in args.impls if i != "mpi"]
    if horovod_impls:
        topo = topology.init(hvd)  # Horovod starts only now: raw MPI ran without its thread
        starts = horovod_starts(hvd, topo, inplace=not args.out_of_place)
        for _ in range(args.repeat):
            merge_best(times, bench_horovod(comm, counts, args, horovod_impls, starts))
    rows = [record(impl, comm.Get_size(), count, args.dtype, times[impl, count])
            for impl in args.impls for count in counts]
    if comm.Get_rank() != 0:
        return 0
    by_impl = {}
    for r in rows:
        by_impl.setdefault(r["impl"], []).append(r)
    chosen = set(horovod_env.DEFAULTS) | set(horovod_env.LAUNCH_DEFAULTS) | {"HVDKIT_RANKS_PER_NODE"}
    settings = {k: os.environ[k] for k in sorted(chosen) if k in os.environ}
    mode = ("out-of-place" if args.out_of_place else "in-place") + (f" split={args.split}" if args.split > 1 else "")
    print(f"# allreduce {mode} np={comm.Get_size()} dtype={args.dtype} host={platform.node()} cpus={os.cpu_count()} "
          f"date={datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# settings {settings}")
    if topo is not None:
        print(f"# topology nodes={topo.num_nodes} local_size={topo.local_size} emulated={topo.emulated} "
              f"hierarchical_path={topo.hierarchical}")
    for impl, impl_rows in by_impl.items():
        print_table(impl, impl_rows)
    print_summary(by_impl)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if repo not in sys.path:
        sys.path.insert(0, repo)  # run from a checkout without installing hvdkit
    sys.exit(main())
