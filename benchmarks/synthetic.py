"""Training throughput on synthetic data, in the format of Horovod's synthetic
benchmark: Horovod's own DistributedOptimizer against hvdkit's under each
compression, at several world sizes.

    python benchmarks/synthetic.py [--np 1,2,4] [--compressions none,fp16,...]
                                   [--json out.json] [--plot out.png]

The driver launches one job per (np, implementation, compression) through
``hvdkit run`` and collects rank 0's numbers; each job (``--worker``) prints,
as Horovod's script does, ``Img/sec per rank: m +- 1.96 sigma`` and
``Total img/sec on N ranks``. JSON records have the keys ``framework``,
``impl`` (``horovod`` or ``hvdkit``), ``compression``, ``np``,
``img_sec_per_rank``, ``ci95`` and ``total_img_sec``.

Both implementations run with the Horovod settings of
``hvdkit.horovod_env`` (export a variable to override it for both), so the
comparison measures the optimizers, not Horovod's cycle time.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import timeit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_COMPRESSIONS = "none,fp16,bf16,int8,topk:0.01,randomk:0.01,onebit,powersgd:4"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--framework", choices=("torch",), default="torch")
    p.add_argument("--model", default="resnet18", choices=("mlp", "cnn", "resnet18"))
    p.add_argument("--batch-size", type=int, default=16, help="images per rank per step")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-warmup-batches", type=int, default=3)
    p.add_argument("--num-batches-per-iter", type=int, default=3)
    p.add_argument("--num-iters", type=int, default=5)
    p.add_argument("--np", default="1,2,4", help="world sizes, comma-separated")
    p.add_argument("--compressions", default=DEFAULT_COMPRESSIONS, help="hvdkit compression specs")
    p.add_argument("--no-horovod", action="store_true", help="skip Horovod's own optimizer")
    p.add_argument("--json", dest="json_path", help="write the records here")
    p.add_argument("--plot", dest="plot_path", help="write a PNG plot here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=("horovod", "hvdkit"), default="hvdkit", help=argparse.SUPPRESS)
    p.add_argument("--compression", default="none", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.np_list = [int(n) for n in args.np.split(",")]
    except ValueError:
        p.error(f"--np must be comma-separated integers, got {args.np!r}")
    if any(n < 1 for n in args.np_list) or args.batch_size < 1 or args.num_iters < 2:
        p.error("--np entries and --batch-size must be >= 1 and --num-iters >= 2")
    return args


# ---------------------------------------------------------------- worker ----
def worker(args):
    import numpy as np
    import torch
    import torch.nn.functional as F

    from hvdkit.training import torch_models

    if args.impl == "horovod":
        import horovod.torch as hvd

        from hvdkit import horovod_env

        horovod_env.apply_defaults()  # the same Horovod settings for both, so only the optimizers differ
        hvd.init()
    else:
        import hvdkit.torch as hvd

        hvd.init()
    torch.manual_seed(0)
    model = torch_models.build(args.model, (3, args.image_size, args.image_size), 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    if args.impl == "horovod":
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    else:
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                             compression=args.compression)
        hvd.broadcast_state(model, optimizer, root_rank=0)
    data = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    target = torch.randint(0, 10, (args.batch_size,))

    def benchmark_step():
        optimizer.zero_grad()
        F.cross_entropy(model(data), target).backward()
        optimizer.step()

    def log(text):
        if hvd.rank() == 0:
            print(text, flush=True)

    log(f"Model: {args.model}\nBatch size: {args.batch_size}\nNumber of ranks: {hvd.size()}\n"
        f"Optimizer: {args.impl}, compression {args.compression if args.impl == 'hvdkit' else 'none'}")
    log("Running warmup...")
    timeit.timeit(benchmark_step, number=args.num_warmup_batches)
    log("Running benchmark...")
    img_secs = []
    for i in range(args.num_iters):
        seconds = timeit.timeit(benchmark_step, number=args.num_batches_per_iter)
        img_sec = args.batch_size * args.num_batches_per_iter / seconds
        log(f"Iter #{i}: {img_sec:.1f} img/sec per rank")
        img_secs.append(img_sec)
    mean, ci95 = float(np.mean(img_secs)), float(1.96 * np.std(img_secs))
    log(f"Img/sec per rank: {mean:.1f} +-{ci95:.1f}")
    log(f"Total img/sec on {hvd.size()} ranks: {hvd.size() * mean:.1f} +-{hvd.size() * ci95:.1f}")
    if hvd.rank() == 0 and args.result:
        record = {"framework": args.framework, "impl": args.impl,
                  "compression": args.compression if args.impl == "hvdkit" else "none", "np": hvd.size(),
                  "img_sec_per_rank": mean, "ci95": ci95, "total_img_sec": hvd.size() * mean,
                  "model": args.model, "batch_size": args.batch_size}
        with open(args.result, "w") as f:
            json.dump(record, f)


# ---------------------------------------------------------------- driver ----
def run_one(args, np_, impl, compression):
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        cmd = [sys.executable, "-m", "hvdkit", "run", "-np", str(np_), "--", sys.executable, os.path.abspath(__file__),
               "--worker", "--impl", impl, "--compression", compression, "--result", result,
               "--model", args.model, "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
               "--num-warmup-batches", str(args.num_warmup_batches),
               "--num-batches-per-iter", str(args.num_batches_per_iter), "--num-iters", str(args.num_iters)]
        code = subprocess.call(cmd, cwd=REPO)
        if code != 0 or not os.path.exists(result):
            print(f"synthetic: {impl} {compression} np={np_} failed with exit code {code}", file=sys.stderr)
            return None
        with open(result) as f:
            return json.load(f)


def print_table(records):
    base = {r["np"]: r for r in records if r["impl"] == "horovod"}
    print(f"\n{'impl':<8} {'compression':<14} {'np':>3} {'img/s/rank':>11} {'+-ci95':>8} "
          f"{'total img/s':>12} {'vs horovod':>10} {'scaling eff':>11}")
    single = {(r["impl"], r["compression"]): r["img_sec_per_rank"] for r in records if r["np"] == 1}
    for r in records:
        ratio = r["total_img_sec"] / base[r["np"]]["total_img_sec"] if r["np"] in base else float("nan")
        one = single.get((r["impl"], r["compression"]))
        efficiency = r["img_sec_per_rank"] / one if one else float("nan")
        print(f"{r['impl']:<8} {r['compression']:<14} {r['np']:>3} {r['img_sec_per_rank']:>11.1f} "
              f"{r['ci95']:>8.1f} {r['total_img_sec']:>12.1f} {ratio:>10.3f} {efficiency:>11.2f}")


def plot(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strategies = sorted({(r["impl"], r["compression"]) for r in records}, key=lambda s: (s[0] != "horovod", s[1]))
    nps = sorted({r["np"] for r in records})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(strategies) * len(nps) / 2), 4.5))
    width = 0.8 / len(strategies)
    for i, (impl, compression) in enumerate(strategies):
        by_np = {r["np"]: r for r in records if (r["impl"], r["compression"]) == (impl, compression)}
        xs = [k + i * width for k, n in enumerate(nps) if n in by_np]
        ys = [by_np[n]["total_img_sec"] for n in nps if n in by_np]
        bars = ax.bar(xs, ys, width, label=f"{impl} {compression}" if impl == "hvdkit" else "horovod")
        one = by_np.get(1)
        for bar, n in zip(bars, [n for n in nps if n in by_np]):
            if one:
                eff = by_np[n]["img_sec_per_rank"] / one["img_sec_per_rank"]
                ax.annotate(f"{100 * eff:.0f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=6)
    horovod_one = next((r for r in records if r["impl"] == "horovod" and r["np"] == 1), None)
    if horovod_one:
        ax.plot([k + 0.4 - width / 2 for k in range(len(nps))], [horovod_one["total_img_sec"] * n for n in nps],
                "k--", label="ideal scaling (horovod np=1 x np)")
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(nps))], [f"np={n}" for n in nps])
    ax.set_ylabel("total img/sec")
    ax.set_title(f"{records[0]['model']} synthetic, batch {records[0]['batch_size']}/rank "
                 "(labels: scaling efficiency vs np=1)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def driver(args):
    records = []
    compressions = [c.strip() for c in args.compressions.split(",") if c.strip()]
    for np_ in args.np_list:
        runs = ([] if args.no_horovod else [("horovod", "none")]) + [("hvdkit", c) for c in compressions]
        for impl, compression in runs:
            record = run_one(args, np_, impl, compression)
            if record is not None:
                records.append(record)
    if not records:
        print("synthetic: no run succeeded", file=sys.stderr)
        return 1
    print_table(records)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(records, f, indent=2)
    if args.plot_path:
        plot(records, args.plot_path)
    expected = len(args.np_list) * (len(compressions) + (0 if args.no_horovod else 1))
    return 0 if len(records) == expected else 1


def main(argv=None):
    args = parse_args(argv)
    return worker(args) or 0 if args.worker else driver(args)


if __name__ == "__main__":
    sys.exit(main())
