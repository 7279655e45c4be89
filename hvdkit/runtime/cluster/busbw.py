"""Bus bandwidth of Horovod's allreduce across the job, under any launcher.

    hvdkit run -H node1:1,node2:1 [--gloo] -- python -m hvdkit.runtime.cluster.busbw --bytes 64M

Each rank allreduces one float32 tensor of the given size (Horovod's own
``allreduce_``, through MPI or Gloo, whichever the launcher set up) and rank 0
prints one JSON line: seconds per allreduce (the slowest rank's mean) and the
bus bandwidth ``bytes * 2 (n - 1) / n / seconds`` in Mbit/s, the rate each
rank's link carried, comparable with the link's configured rate.
"""
import argparse
import json
import time


def parse_bytes(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1:] in units else int(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=parse_bytes, default=64 << 20)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args(argv)

    import torch
    import horovod.torch as hvd

    hvd.init()
    tensor = torch.ones(args.bytes // 4)
    hvd.allreduce_(tensor, op=hvd.Sum, name="busbw")  # warm-up: connections, buffers
    if tensor[0].item() != hvd.size():
        raise SystemExit(f"allreduce gave {tensor[0].item()}, expected {hvd.size()}")
    hvd.allreduce_(torch.zeros(1), name="sync")
    start = time.perf_counter()
    for _ in range(args.iters):
        hvd.allreduce_(tensor, op=hvd.Sum, name="busbw")
    seconds = (time.perf_counter() - start) / args.iters
    seconds = hvd.allreduce(torch.tensor([seconds], dtype=torch.float64), op=hvd.Max, name="slowest").item()
    n = hvd.size()
    busbw_mbit = args.bytes * 8 * 2 * (n - 1) / n / seconds / 1e6 if n > 1 else float("inf")
    if hvd.rank() == 0:
        print(json.dumps({"ranks": n, "bytes": args.bytes, "seconds": seconds, "busbw_mbit": busbw_mbit,
                          "cross_size": hvd.cross_size(), "local_size": hvd.local_size()}), flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    main()
