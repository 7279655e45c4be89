"""Checkpoint save and load time of ``hvdkit train`` (torch), through the loop's own save/restore.

    mpirun -np 2 python benchmarks/checkpoint.py [--models mlp,resnet18] [--compression topk:0.01]

For each model: build it as ``hvdkit train`` does, take one training step (so the momentum buffers
and the error-feedback residuals exist), then save ``--repeat`` times and load ``--repeat`` times
into ``--dir`` (default: a temporary directory on the same disk as /tmp). A save is the whole
protocol: serialise, write and fsync each rank's file, gather, move ``latest``; a load reads and
checksums the shared file and this rank's file and puts the state back. Times are the slowest
rank's, median and minimum over the repeats; sizes are of the newest checkpoint's files.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mlp,resnet18", help="comma-separated: mlp (digits), cnn, resnet18")
    p.add_argument("--compression", default="topk:0.01", help="spec; its error-feedback residuals are saved")
    p.add_argument("--repeat", type=int, default=5, help="saves and loads timed per model (default 5)")
    p.add_argument("--dir", default=None, help="where to write (default: a new temporary directory)")
    p.add_argument("--json", default=None, help="also write the results here (rank 0)")
    return p.parse_args(argv)


def slowest(hvd, seconds):
    return hvd.allreduce(torch.tensor([seconds], dtype=torch.float64), op=hvd.Max, name="bench.max").item()


def measure(name, args, hvd, topology, directory):
    from hvdkit.training import config as train_config
    from hvdkit.training import metrics, torch_loop, torch_models
    from hvdkit.training.resume import Position

    dataset = "digits" if name == "mlp" else "synthetic"
    config = train_config.TrainConfig(model=name, dataset=dataset, compression=args.compression,
                                      checkpoint=os.path.join(directory, name))
    shape, classes = ((1, 8, 8), 10) if dataset == "digits" else ((3, 32, 32), 10)
    torch.manual_seed(0)
    model = torch_models.build(name, shape, classes)
    optimizer = torch_loop.make_optimizer(config, model, hvd, topology)
    hvd.broadcast_state(model, optimizer, root_rank=0)
    optimizer.zero_grad()
    F.cross_entropy(model(torch.randn(8, *shape)), torch.randint(0, classes, (8,))).backward()
    optimizer.step()

    saves, loads = [], []
    for i in range(args.repeat):
        position = Position(epoch=0, step=i + 1, global_step=i + 1)
        hvd.barrier()
        started = time.perf_counter()
        torch_loop.save(config, position, model, optimizer, metrics.EpochTotals(), hvd, topology)
        saves.append(slowest(hvd, time.perf_counter() - started))
    for _ in range(args.repeat):
        hvd.barrier()
        started = time.perf_counter()
        torch_loop.restore(config, model, optimizer, hvd, topology)
        loads.append(slowest(hvd, time.perf_counter() - started))
    files = {entry: os.path.getsize(os.path.join(config.checkpoint, entry))
             for entry in os.listdir(config.checkpoint) if entry.startswith(f"ckpt-{args.repeat:08d}")}
    return {"model": name, "parameters": sum(p.numel() for p in model.parameters()),
            "compression": args.compression, "ranks": topology.size,
            "save_s_median": statistics.median(saves), "save_s_min": min(saves),
            "load_s_median": statistics.median(loads), "load_s_min": min(loads),
            "shared_bytes": files[f"ckpt-{args.repeat:08d}.pt"],
            "rank_bytes": files[f"ckpt-{args.repeat:08d}.rank-00000.pt"]}


def main(argv=None):
    args = parse_args(argv)
    import hvdkit.torch as hvd

    topology = hvd.init()
    base = args.dir or tempfile.mkdtemp(prefix="hvdkit-bench-ckpt-", dir="/tmp")
    directory = hvd.broadcast_object(base, root_rank=0, name="bench.dir")
    results = [measure(name, args, hvd, topology, directory) for name in args.models.split(",")]
    if topology.rank == 0:
        print(f"{'model':<10} {'params':>10} {'shared file':>12} {'per rank':>10} "
              f"{'save median/min':>17} {'load median/min':>17}   ({topology.size} ranks, {args.compression}, "
              f"torch threads {torch.get_num_threads()}, {args.repeat} repeats, dir {directory})")
        for r in results:
            print(f"{r['model']:<10} {r['parameters']:>10,} {r['shared_bytes'] / 2**20:>9.2f} MiB "
                  f"{r['rank_bytes'] / 2**20:>6.2f} MiB "
                  f"{1e3 * r['save_s_median']:>8.1f}/{1e3 * r['save_s_min']:<6.1f}ms "
                  f"{1e3 * r['load_s_median']:>8.1f}/{1e3 * r['load_s_min']:<6.1f}ms")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
        if args.dir is None:
            import shutil

            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
