"""Parameter servers against Horovod allreduce with one straggler: samples/s and time to a test accuracy.

    python benchmarks/ps.py [--task digits|synthetic] [--model cnn|mlp] [--np 4] [--factors 1,2,4]
                            [--modes allreduce,sync,ssp:2,async,backup:1] [--target 0.97]
                            [--max-seconds 40] [--repeats R] [--json out.json] [--plot out.png]

Tasks: ``digits`` (scikit-learn's 8x8 digits, 80/20 split, SGD with momentum)
ends at a test accuracy; its model is ``--model cnn`` (the default: conv
3x3 1->32, conv 3x3 32->64, 2x2 max-pool, linear 1024->10; 29 k parameters,
116 kB per exchange, but about 1.2 M multiply-adds per sample forward, so a
step's compute outweighs its exchange, the regime in which stragglers
matter) or ``--model mlp`` (64-512-512-10, 300 k parameters and little
compute per step: the exchange dominates). ``synthetic`` (an MLP
1024-2048-10 on random data: 8.4 MB of parameters per exchange, the
communication-heavy case) runs ``--max-seconds`` and reports samples/s only.

Every job is ``hvdkit run -np N`` of this script (``--worker``), each worker
with one torch thread (``torch.set_num_threads(1)``), so N workers on a
machine with fewer cores time-share them predictably. ``allreduce`` trains
with ``horovod.torch.DistributedOptimizer``; the other modes start 2
replicated parameter servers (``hvdkit.ps.launch``) beside the job and train
through ``hvdkit.ps.torch_worker.TorchWorker``.

The straggler (an emulation, stated plainly): the last rank. Before any job
starts, the driver measures a worker's compute per step ``c`` in its own
process, alone (one torch thread, the median of ``--calibrate-steps``
forward+backward passes of a training batch after 3 untimed ones; apart from
whatever else loads the machine then), or takes ``--compute-ms``. Every job
of the run uses that one ``c``: with factor F the straggler sleeps
(F - 1) x c after every training step, so each of its steps takes its
compute plus (F - 1) x c: it computes as the others do and then idles, as a
machine F times slower would. A sleep frees the CPU it would have used, and
on a machine with fewer cores than workers the other workers take it: the
benchmark says how many cores it ran on (``cores`` in the JSON).

Worker 0 evaluates on the held-out set every ``--eval-every`` steps and ends
the job when it reaches ``--target`` (or after ``--max-seconds``).
``samples_per_s`` counts every worker's samples (backup's dropped deltas
included: they were computed) over the job's training time, measured from
a barrier after start-up; ``time_to_accuracy_s`` is worker 0's time to
the target (null when not reached). JSON records: ``mode``,
``straggler_factor``, ``samples_per_s``, ``time_to_accuracy_s``,
``final_accuracy``, plus ``task``, ``model``, ``np``, ``cores``, ``steps``
(per worker), ``dropped`` (backup: late deltas), ``bytes_per_step`` (worker
0's bytes on the wire per step, parameter-server modes), ``compute_ms``
(``c``), ``rank0_compute_ms`` and ``rank0_exchange_ms`` (worker 0's median forward+backward and median
optimizer step with its exchange, waiting for the others included, during
the run). With ``--repeats R`` the jobs take turns R times and each row
reports the median of its runs (every run's values are in
``runs_samples_per_s``, ``runs_time_to_accuracy_s`` and
``runs_final_accuracy``, with the machine's 1-minute load average as each
run started in ``runs_load_1min``; a run that missed the target counts as
infinitely slow).
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("allreduce", "sync", "ssp:2", "async", "backup:1")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("digits", "synthetic"), default="digits")
    p.add_argument("--model", choices=("cnn", "mlp"), default="cnn", help="digits: the model")
    p.add_argument("--np", type=int, default=4, help="workers (ranks)")
    p.add_argument("--factors", default="1,2,4", help="straggler slow-down factors, comma-separated")
    p.add_argument("--modes", default=",".join(MODES), help="allreduce and parameter-server update modes")
    p.add_argument("--servers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128, help="samples per worker per step")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--target", type=float, default=0.97, help="test accuracy that ends a digits job")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--max-seconds", type=float, default=40.0)
    p.add_argument("--calibrate-steps", type=int, default=20,
                   help="timed forward+backward passes that measure a worker's compute per step")
    p.add_argument("--compute-ms", type=float,
                   help="the compute per step the straggler's sleep is based on (default: measured at the start)")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs per (mode, factor), taking turns; each row reports the median")
    p.add_argument("--no-mac", action="store_true",
                   help="parameter servers without the per-message HMAC (to measure what signing costs)")
    p.add_argument("--json", dest="json_path")
    p.add_argument("--plot", dest="plot_path")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="sync", help=argparse.SUPPRESS)
    p.add_argument("--factor", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--compute-s", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.factor_list = [float(f) for f in args.factors.split(",")]
    except ValueError:
        p.error(f"--factors must be comma-separated numbers, got {args.factors!r}")
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(f < 1 for f in args.factor_list) or args.np < 2 or args.repeats < 1 or args.calibrate_steps < 1:
        p.error("--factors must be >= 1, --np >= 2, --repeats >= 1 and --calibrate-steps >= 1")
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
def _barrier(run_dir, name, rank, size):
    open(os.path.join(run_dir, f"{name}-{rank}"), "w").close()
    while len(glob.glob(os.path.join(run_dir, f"{name}-*"))) < size:
        time.sleep(0.01)


def _data(task, model, rank, size):
    import numpy as np
    import torch

    if task == "digits":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        order = np.random.default_rng(0).permutation(len(y))
        x, y = torch.tensor(x[order] / 16.0, dtype=torch.float32), torch.tensor(y[order])
        if model == "cnn":
            x = x.view(-1, 1, 8, 8)
        cut = int(0.8 * len(y))
        return x[:cut][rank::size], y[:cut][rank::size], x[cut:], y[cut:]
    g = torch.Generator().manual_seed(rank)
    return torch.randn(512, 1024, generator=g), torch.randint(0, 10, (512,), generator=g), None, None


def _model(task, model):
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    if task == "digits" and model == "cnn":
        return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 4 * 4, 10))
    if task == "digits":
        return torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                                   torch.nn.ReLU(), torch.nn.Linear(512, 10))
    return torch.nn.Sequential(torch.nn.Linear(1024, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 10))


def worker(args):
    import torch

    torch.set_num_threads(1)
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("HOROVOD_RANK", "0")))
    size = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("HOROVOD_SIZE", "1")))
    x, y, x_test, y_test = _data(args.task, args.model, rank, size)
    model = _model(args.task, args.model)
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
    _barrier(args.run_dir, "ready", rank, size)
    g = torch.Generator().manual_seed(100 + rank)

    def forward_backward():
        idx = torch.randint(0, len(y), (args.batch_size,), generator=g)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()

    compute_s = args.compute_s
    sleep_s = (args.factor - 1) * compute_s if rank == size - 1 else 0.0
    start = time.perf_counter()
    steps, reached, accuracy = 0, None, None
    computes, exchanges = [], []
    while True:
        begin = time.perf_counter()
        forward_backward()
        middle = time.perf_counter()
        step_fn()
        computes.append(middle - begin)
        exchanges.append(time.perf_counter() - middle)
        if sleep_s:
            time.sleep(sleep_s)
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
              "final_accuracy": accuracy, "compute_s": compute_s, "sleep_s": sleep_s,
              "median_compute_s": statistics.median(computes), "median_exchange_s": statistics.median(exchanges)}
    if ps is not None:
        stats = ps.ps.stats()
        result.update(dropped=stats["dropped"],
                      bytes_per_step=(stats["bytes_sent"] + stats["bytes_received"]) / max(1, steps))
        ps.leave()
    with open(os.path.join(args.run_dir, f"result-{rank}.json"), "w") as f:
        json.dump(result, f)


# ---------------------------------------------------------------- driver ----
def measure_compute(args):
    """A worker's compute per step (forward+backward of one batch, one torch thread), in this process before any
    job starts: the median of ``--calibrate-steps`` timed passes after 3 untimed ones."""
    import torch

    torch.set_num_threads(1)
    x, y, _, _ = _data(args.task, args.model, args.np - 1, args.np)
    model = _model(args.task, args.model)
    g = torch.Generator().manual_seed(99)
    times = []
    for i in range(3 + args.calibrate_steps):
        begin = time.perf_counter()
        idx = torch.randint(0, len(y), (args.batch_size,), generator=g)
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        if i >= 3:
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def run_job(args, mode, factor):
    from hvdkit.ps.launch import start_servers

    load = os.getloadavg()[0]  # other jobs on the machine: the 1-minute load average as this job starts
    with tempfile.TemporaryDirectory(prefix="hvdkit-ps-bench-") as run_dir:
        env = dict(os.environ, PYTHONPATH=REPO)
        group = None
        if mode != "allreduce":
            group = start_servers(args.servers, mode, args.np, exit_with=os.getpid(), member_timeout=30.0,
                                  stderr=open(os.path.join(run_dir, "servers.log"), "w"), sign=not args.no_mac)
            env.update(group.env)
        cmd = [sys.executable, "-m", "hvdkit", "run", "-np", str(args.np), "--", sys.executable, __file__, "--worker",
               "--task", args.task, "--model", args.model, "--mode", mode, "--factor", str(factor),
               "--run-dir", run_dir,
               "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--target", str(args.target),
               "--eval-every", str(args.eval_every), "--max-seconds", str(args.max_seconds),
               "--compute-s", str(args.compute_s)]
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
    return {"task": args.task, "model": args.model if args.task == "digits" else "mlp", "np": args.np,
            "cores": os.cpu_count(), "load_1min": load, "mode": mode, "straggler_factor": factor,
            "mac": not args.no_mac,
            "samples_per_s": sum(r["steps"] for r in results) * args.batch_size / elapsed,
            "time_to_accuracy_s": first["time_to_accuracy_s"], "final_accuracy": first["final_accuracy"],
            "steps": [r["steps"] for r in results], "dropped": sum(r.get("dropped", 0) for r in results),
            "bytes_per_step": first.get("bytes_per_step"), "compute_ms": 1000 * args.compute_s,
            "rank0_compute_ms": 1000 * first["median_compute_s"],
            "rank0_exchange_ms": 1000 * first["median_exchange_s"]}


def median(runs):
    """One row for repeated runs of a (mode, factor): the median of each measure (a run that missed the
    target counts as infinitely slow), every run's values listed."""
    record = dict(runs[0])
    inf = float("inf")
    for key in ("samples_per_s", "compute_ms", "rank0_compute_ms", "rank0_exchange_ms", "dropped"):
        record[key] = statistics.median(r[key] for r in runs)
    tta = statistics.median(inf if r["time_to_accuracy_s"] is None else r["time_to_accuracy_s"] for r in runs)
    record["time_to_accuracy_s"] = None if tta == inf else tta
    accuracies = [r["final_accuracy"] for r in runs if r["final_accuracy"] is not None]
    record["final_accuracy"] = statistics.median(accuracies) if accuracies else None
    record["steps"] = [statistics.median(r["steps"][i] for r in runs) for i in range(len(runs[0]["steps"]))]
    record["runs_samples_per_s"] = [r["samples_per_s"] for r in runs]
    record["runs_time_to_accuracy_s"] = [r["time_to_accuracy_s"] for r in runs]
    record["runs_final_accuracy"] = [r["final_accuracy"] for r in runs]
    record["runs_steps"] = [r["steps"] for r in runs]
    record["runs_load_1min"] = [r["load_1min"] for r in runs]
    del record["load_1min"]
    return record


def table(records):
    lines = [f"{'F':>3} {'mode':<10} {'samples/s':>10} {'vs allreduce':>12} {'time to acc (s)':>15} "
             f"{'speed-up':>8} {'final acc':>9} {'dropped':>7} {'c ms':>5} {'x ms':>5}  steps per worker"]
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
                         f"{'-' if tta is None else f'{tta:.1f}':>15} {speed:>8} {acc:>9} {r['dropped']:>7g} "
                         f"{r['rank0_compute_ms']:>5.1f} {r['rank0_exchange_ms']:>5.1f}  "
                         f"{', '.join(f'{n:g}' for n in r['steps'])}")
    lines.append("c ms, x ms: worker 0's median forward+backward and optimizer step with its exchange (waiting "
                 "included) per step")
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
    load = os.getloadavg()[0]
    args.compute_s = args.compute_ms / 1000 if args.compute_ms else measure_compute(args)
    print(f"compute per step {1000 * args.compute_s:.1f} ms ({'given' if args.compute_ms else 'measured'}, 1-minute "
          f"load {load:.1f}): the straggler sleeps (F - 1) x {1000 * args.compute_s:.1f} ms after each step",
          flush=True)
    runs = {}
    for repeat in range(args.repeats):
        for factor in args.factor_list:
            for mode in args.mode_list:
                r = run_job(args, mode, factor)
                runs.setdefault((factor, mode), []).append(r)
                tta = r["time_to_accuracy_s"]
                print(f"  run {repeat + 1}: {mode} F={factor:g}: {r['samples_per_s']:.0f} samples/s, time to "
                      f"accuracy {'-' if tta is None else f'{tta:.2f}'} s, final {r['final_accuracy']}, steps "
                      f"{r['steps']}, compute {r['compute_ms']:.1f} ms (rank 0: {r['rank0_compute_ms']:.1f} ms, "
                      f"exchange {r['rank0_exchange_ms']:.1f} ms), load {r['load_1min']:.1f}", flush=True)
    records = [median(rs) for rs in runs.values()]
    goal = f"target accuracy {args.target}" if args.task == "digits" else f"{args.max_seconds:g} s per job"
    model = f" ({args.model})" if args.task == "digits" else ""
    print(f"\n{args.task}{model}, {args.np} workers on {os.cpu_count()} cores, batch {args.batch_size} per worker, "
          f"{goal}"
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
