"""Parameter servers against Horovod allreduce with one straggler: samples/s and time to a test accuracy.

    python benchmarks/ps.py [--task digits|synthetic] [--np 4] [--factors 1,2,4]
                            [--modes allreduce,sync,ssp:2,async,backup:1] [--target 0.97]
                            [--max-seconds 40] [--repeats R] [--json out.json] [--plot out.png]

Tasks: ``digits`` (scikit-learn's 8x8 digits, 80/20 split, an MLP
64-512-512-10, SGD with momentum) ends at a test accuracy; ``synthetic`` (an
MLP 1024-2048-10 on random data: 8.4 MB of parameters per exchange, the
communication-heavy case) runs ``--max-seconds`` and reports samples/s only.
Every job is ``hvdkit run -np N`` of this script (``--worker``): ``allreduce``
trains with ``horovod.torch.DistributedOptimizer``; the other modes start 2
replicated parameter servers (``hvdkit.ps.launch``) beside the job and train
through ``hvdkit.ps.torch_worker.TorchWorker``. The last rank is the
straggler: after each step it sleeps (F - 1) times its own measured compute
time for that step, so it runs F times slower whatever else loads the
machine. Worker 0 evaluates on the held-out set every ``--eval-every`` steps
and ends the job when it reaches ``--target`` (or after ``--max-seconds``).
``samples_per_s`` counts every worker's samples (backup's dropped deltas
included: they were computed) over the job's training time, measured from a
barrier after start-up; ``time_to_accuracy_s`` is worker 0's time to the
target (null when not reached). JSON records: ``mode``, ``straggler_factor``,
``samples_per_s``, ``time_to_accuracy_s``, ``final_accuracy``, plus ``task``,
``np``, ``steps`` (per worker), ``dropped`` (backup: late deltas) and
``bytes_per_step`` (worker 0's bytes on the wire per step, parameter-server
modes). With ``--repeats R`` the jobs take turns R times and each row keeps
its best samples/s and best time to accuracy (every run's values are in
``runs_samples_per_s`` and ``runs_time_to_accuracy_s``).
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("allreduce", "sync", "ssp:2", "async", "backup:1")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("digits", "synthetic"), default="digits")
    p.add_argument("--np", type=int, default=4, help="workers (ranks)")
    p.add_argument("--factors", default="1,2,4", help="straggler slow-down factors, comma-separated")
    p.add_argument("--modes", default=",".join(MODES), help="allreduce and parameter-server update modes")
    p.add_argument("--servers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128, help="samples per worker per step")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--target", type=float, default=0.97, help="test accuracy that ends a digits job")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--max-seconds", type=float, default=40.0)
    p.add_argument("--repeats", type=int, default=1,
                   help="runs per (mode, factor), taking turns; the best samples/s and time to accuracy are kept")
    p.add_argument("--no-mac", action="store_true",
                   help="parameter servers without the per-message HMAC (to measure what signing costs)")
    p.add_argument("--json", dest="json_path")
    p.add_argument("--plot", dest="plot_path")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="sync", help=argparse.SUPPRESS)
    p.add_argument("--factor", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.factor_list = [float(f) for f in args.factors.split(",")]
    except ValueError:
        p.error(f"--factors must be comma-separated numbers, got {args.factors!r}")
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(f < 1 for f in args.factor_list) or args.np < 2 or args.repeats < 1:
        p.error("--factors must be >= 1, --np >= 2 and --repeats >= 1")
    for mode in args.mode_list:
        if mode != "allreduce":
            from hvdkit.ps import modes

            try:
                parsed = modes.parse(mode)
            except ValueError as err:
                p.error(f"--modes: {err}")
            if parsed.name == "backup" and parsed.backups >= args.np:
                p.error(f"--modes {mode}: B must be less than --np {args.np}")
    return args


# ---------------------------------------------------------------- worker ----
def _data(task, rank, size):
    import numpy as np
    import torch

    if task == "digits":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        order = np.random.default_rng(0).permutation(len(y))
        x, y = torch.tensor(x[order] / 16.0, dtype=torch.float32), torch.tensor(y[order])
        cut = int(0.8 * len(y))
        return x[:cut][rank::size], y[:cut][rank::size], x[cut:], y[cut:]
    g = torch.Generator().manual_seed(rank)
    return torch.randn(512, 1024, generator=g), torch.randint(0, 10, (512,), generator=g), None, None


def _model(task):
    import torch

    torch.manual_seed(0)
    if task == "digits":
        return torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                                   torch.nn.ReLU(), torch.nn.Linear(512, 10))
    return torch.nn.Sequential(torch.nn.Linear(1024, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 10))


def worker(args):
    import torch

    torch.set_num_threads(1)
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("HOROVOD_RANK", "0")))
    size = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("HOROVOD_SIZE", "1")))
    x, y, x_test, y_test = _data(args.task, rank, size)
    model = _model(args.task)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    if args.mode == "allreduce":
        import horovod.torch as hvd

        hvd.init()
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        step_fn, ps = optimizer.step, None
    else:
        from hvdkit.ps.torch_worker import TorchWorker

        ps = TorchWorker(model.parameters(), optimizer)
        ps.join()
        step_fn = ps.step
    stop_file = os.path.join(args.run_dir, "stop")
    open(os.path.join(args.run_dir, f"ready-{rank}"), "w").close()
    while len(glob.glob(os.path.join(args.run_dir, "ready-*"))) < size:
        time.sleep(0.01)
    straggler = rank == size - 1 and args.factor > 1
    g = torch.Generator().manual_seed(100 + rank)
    start = time.perf_counter()
    steps, reached, accuracy = 0, None, None
    while True:
        begin = time.perf_counter()
        idx = torch.randint(0, len(y), (args.batch_size,), generator=g)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        compute = time.perf_counter() - begin
        step_fn()
        if straggler:
            time.sleep((args.factor - 1) * compute)
        steps += 1
        elapsed = time.perf_counter() - start
        stop = args.mode != "allreduce" and os.path.exists(stop_file)  # allreduce: rank 0's broadcast decides
        if rank == 0 and steps % args.eval_every == 0:
            if x_test is not None:
                with torch.no_grad():
                    accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
                if reached is None and accuracy >= args.target:
                    reached = elapsed
            if reached is not None or elapsed > args.max_seconds:
                open(stop_file, "w").close()
                stop = True
        if args.mode == "allreduce" and steps % args.eval_every == 0:
            stop = bool(hvd.broadcast(torch.tensor([int(stop)]), root_rank=0, name=f"stop.{steps}").item())
        if stop:
            break
    elapsed = time.perf_counter() - start
    result = {"rank": rank, "steps": steps, "elapsed": elapsed, "time_to_accuracy_s": reached,
              "final_accuracy": accuracy}
    if ps is not None:
        stats = ps.ps.stats()
        result.update(dropped=stats["dropped"],
                      bytes_per_step=(stats["bytes_sent"] + stats["bytes_received"]) / max(1, steps))
        ps.leave()
    with open(os.path.join(args.run_dir, f"result-{rank}.json"), "w") as f:
        json.dump(result, f)


# ---------------------------------------------------------------- driver ----
def run_job(args, mode, factor):
    from hvdkit.ps.launch import start_servers

    with tempfile.TemporaryDirectory(prefix="hvdkit-ps-bench-") as run_dir:
        env = dict(os.environ, PYTHONPATH=REPO)
        group = None
        if mode != "allreduce":
            group = start_servers(args.servers, mode, args.np, exit_with=os.getpid(), member_timeout=30.0,
                                  stderr=open(os.path.join(run_dir, "servers.log"), "w"), sign=not args.no_mac)
            env.update(group.env)
        cmd = [sys.executable, "-m", "hvdkit", "run", "-np", str(args.np), "--", sys.executable, __file__, "--worker",
               "--task", args.task, "--mode", mode, "--factor", str(factor), "--run-dir", run_dir,
               "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--target", str(args.target),
               "--eval-every", str(args.eval_every), "--max-seconds", str(args.max_seconds)]
        try:
            proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True,
                                  timeout=args.max_seconds + 240)
        finally:
            if group is not None:
                group.stop()
        results = []
        for rank in range(args.np):
            path = os.path.join(run_dir, f"result-{rank}.json")
            if os.path.exists(path):
                with open(path) as f:
                    results.append(json.load(f))
        if proc.returncode != 0 or len(results) != args.np:
            raise RuntimeError(f"{mode} F={factor}: job failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}"
                               f"\n{proc.stderr[-2000:]}")
    first = results[0]
    elapsed = max(r["elapsed"] for r in results)
    return {"task": args.task, "np": args.np, "mode": mode, "straggler_factor": factor, "mac": not args.no_mac,
            "samples_per_s": sum(r["steps"] for r in results) * args.batch_size / elapsed,
            "time_to_accuracy_s": first["time_to_accuracy_s"], "final_accuracy": first["final_accuracy"],
            "steps": [r["steps"] for r in results], "dropped": sum(r.get("dropped", 0) for r in results),
            "bytes_per_step": first.get("bytes_per_step")}


def best(runs):
    """The fastest of repeated runs (other load on the machine only ever slows a run down): its highest
    samples/s and its shortest time to accuracy, each with every run's value listed."""
    record = dict(max(runs, key=lambda r: r["samples_per_s"]))
    reached = [r for r in runs if r["time_to_accuracy_s"] is not None]
    if reached:
        fastest = min(reached, key=lambda r: r["time_to_accuracy_s"])
        record.update(time_to_accuracy_s=fastest["time_to_accuracy_s"], final_accuracy=fastest["final_accuracy"])
    record["runs_samples_per_s"] = [r["samples_per_s"] for r in runs]
    record["runs_time_to_accuracy_s"] = [r["time_to_accuracy_s"] for r in runs]
    return record


def table(records):
    lines = [f"{'F':>3} {'mode':<10} {'samples/s':>10} {'vs allreduce':>12} {'time to acc (s)':>15} "
             f"{'speed-up':>8} {'final acc':>9} {'dropped':>7}  steps per worker"]
    for factor in sorted({r["straggler_factor"] for r in records}):
        rows = [r for r in records if r["straggler_factor"] == factor]
        base = next((r for r in rows if r["mode"] == "allreduce"), None)
        for r in rows:
            ratio = f"{r['samples_per_s'] / base['samples_per_s']:.2f}x" if base else "-"
            tta = r["time_to_accuracy_s"]
            speed = (f"{base['time_to_accuracy_s'] / tta:.2f}x" if base and tta and base["time_to_accuracy_s"]
                     else "-")
            acc = "-" if r["final_accuracy"] is None else f"{r['final_accuracy']:.3f}"
            lines.append(f"{factor:>3g} {r['mode']:<10} {r['samples_per_s']:>10.0f} {ratio:>12} "
                         f"{'-' if tta is None else f'{tta:.1f}':>15} {speed:>8} {acc:>9} {r['dropped']:>7}  "
                         f"{r['steps']}")
    return "\n".join(lines)


def plot(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factors = sorted({r["straggler_factor"] for r in records})
    modes = list(dict.fromkeys(r["mode"] for r in records))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        rows = {r["straggler_factor"]: r for r in records if r["mode"] == mode}
        xs = [j + i * width for j in range(len(factors))]
        axes[0].bar(xs, [rows[f]["samples_per_s"] if f in rows else 0 for f in factors], width, label=mode)
        axes[1].bar(xs, [(rows[f]["time_to_accuracy_s"] or 0) if f in rows else 0 for f in factors], width,
                    label=mode)
    for ax, title in zip(axes, ("samples/s (all workers)", "time to target accuracy (s; 0: not reached)")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(factors))])
        ax.set_xticklabels([f"straggler x{f:g}" for f in factors])
        ax.set_title(title)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    runs = {}
    for repeat in range(args.repeats):
        for factor in args.factor_list:
            for mode in args.mode_list:
                r = run_job(args, mode, factor)
                runs.setdefault((factor, mode), []).append(r)
                print(f"  run {repeat + 1}: {mode} F={factor:g}: {r['samples_per_s']:.0f} samples/s, "
                      f"time to accuracy {r['time_to_accuracy_s']}", flush=True)
    records = [best(rs) for rs in runs.values()]
    goal = f"target accuracy {args.target}" if args.task == "digits" else f"{args.max_seconds:g} s per job"
    print(f"\n{args.task}, {args.np} workers, batch {args.batch_size} per worker, {goal}"
          f"{'' if not args.no_mac else ', messages unsigned (--no-mac)'}")
    print(table(records))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(records, f, indent=1)
    if args.plot_path:
        plot(records, args.plot_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
