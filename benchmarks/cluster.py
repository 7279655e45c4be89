"""hvdkit against Horovod where the network is the bottleneck: an emulated cluster with shaped links.

    hvdkit bench cluster [--rates 100,1000,10000] [--layouts 2x2,4x1]
                         [--strategies ...] [--json PATH] [--plot PATH]

Needs root (``hvdkit cluster``). It brings up 4 emulated nodes of 2 slots
(or uses the cluster already up in ``--dir``), and for each link rate (the
links are reshaped in place) and layout runs ONE ``hvdkit run`` job across
the nodes whose ranks loop over the strategies in-process, so every strategy
of a row group sees the same link and the same load:

* throughput: a communication-heavy model (a wide MLP, 25.2 M parameters,
  100 MB of float32 gradients) on synthetic data, ``img_sec`` over the timed
  steps of the slowest rank; Horovod's own ``DistributedOptimizer`` (dense)
  is the baseline of every row group. Each strategy's timed steps alternate
  with steps of that baseline (built once per job), and ``vs_horovod`` is the
  ratio of the two over the same seconds: on this shared VM the load drifts
  within a job, and strategies timed one after the other were ranked by their
  position (a same-job sequence none, horovod, none, horovod, none, horovod
  at 10 Gbit/s gave 153, 141, 95, 82, 81, 65 img/s: whichever ran first
  "won" each pair);
* accuracy: the digits task (``hvdkit train``'s MLP) at equal epochs per
  strategy, measured once per layout at the first rate (a link's rate changes
  how long a step takes, not what it computes) and, for ``auto``, at every
  rate (its choice depends on the link).

Records (``--json``): ``impl`` (``horovod`` or ``hvdkit``), ``compression``
(``auto`` included), ``hierarchical``, ``nodes``, ``layout``, ``rate_mbit``,
``img_sec``, ``vs_horovod`` (against the baseline steps interleaved with this
strategy's), ``horovod_img_sec`` (those baseline steps), ``accuracy`` and ``choice`` (what
``auto`` decided and measured last, from ``optimizer.auto_compression.events``).
``auto`` is timed after its measured trials have settled.
"""
import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
LAYOUTS = {"2x2": "node1:2,node2:2", "4x1": "node1:1,node2:1,node3:1,node4:1"}
DEFAULT_STRATEGIES = ("horovod", "none", "fp16", "int8", "topk:0.01", "onebit", "powersgd:4",
                      "none/hier", "fp16/hier", "int8/hier", "topk:0.01/hier", "onebit/hier", "powersgd:4/hier",
                      "auto")
WIDTH, INPUT, CLASSES = 4096, 1024, 10
MAX_AUTO_TRIAL_STEPS = 30


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="100,1000,10000", help="link rates in Mbit/s, comma-separated")
    p.add_argument("--layouts", default="2x2,4x1", help=f"of {', '.join(LAYOUTS)}")
    p.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                   help="horovod, hvdkit specs, SPEC/hier for hierarchical, auto")
    p.add_argument("--batch-size", type=int, default=32, help="samples per rank per step")
    p.add_argument("--seconds", type=float, default=6.0, help="timed seconds per strategy (at least --min-steps)")
    p.add_argument("--min-steps", type=int, default=3)
    p.add_argument("--acc-epochs", type=int, default=10, help="digits epochs per strategy (0: no accuracy)")
    p.add_argument("--dir", default="/tmp/hvdkit-bench-cluster", help="the cluster's directory")
    p.add_argument("--json", dest="json_path")
    p.add_argument("--plot", dest="plot_path")
    p.add_argument("--worker", nargs=2, metavar=("PLAN", "RESULTS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.rate_list = [float(r) for r in args.rates.split(",")]
    args.layout_list = args.layouts.split(",")
    unknown = [name for name in args.layout_list if name not in LAYOUTS]
    if unknown:
        p.error(f"--layouts: unknown {unknown}; choose from {', '.join(LAYOUTS)}")
    args.strategy_list = args.strategies.split(",")
    return args


# ---------------------------------------------------------------- worker ----
def wide_mlp():
    import torch

    return torch.nn.Sequential(torch.nn.Linear(INPUT, WIDTH), torch.nn.ReLU(), torch.nn.Linear(WIDTH, WIDTH),
                               torch.nn.ReLU(), torch.nn.Linear(WIDTH, INPUT), torch.nn.ReLU(),
                               torch.nn.Linear(INPUT, CLASSES))


def wrap(strategy, optimizer, model, hvd):
    import horovod.torch as horovod

    if strategy == "horovod":
        return horovod.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    spec, _, hier = strategy.partition("/")
    # auto may pick hierarchical routes on real nodes (the cluster's namespaces are real nodes to it)
    hierarchical = "auto" if spec == "auto" else hier == "hier"
    return hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(), compression=spec,
                                    hierarchical=hierarchical)


def training_step(strategy, plan, hvd):
    """(one training step of the wide MLP under ``strategy``, its optimizer), warmed up: buffers, plans,
    and auto's probe, choice and measured trials (every rank settles at the same step)."""
    import torch

    torch.manual_seed(0)
    model = wide_mlp()
    optimizer = wrap(strategy, torch.optim.SGD(model.parameters(), lr=0.01), model, hvd)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    x = torch.randn(plan["batch_size"], INPUT)
    y = torch.randint(0, CLASSES, (plan["batch_size"],))

    def step():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(2):
        step()
    auto = getattr(optimizer, "auto_compression", None)
    for _ in range(MAX_AUTO_TRIAL_STEPS):
        if auto is None or auto.settled:
            break
        step()
    return step, optimizer


def throughput(strategy, plan, hvd, baseline=None):
    """(samples per second of the whole job under ``strategy``, the same under ``baseline``, auto's choice).

    Timed steps of the slowest rank. ``baseline`` (a warmed-up step function: Horovod's dense optimizer)
    takes one step after each of the strategy's, so both see the same load; its rate is None without it."""
    import torch

    step, optimizer = training_step(strategy, plan, hvd)
    auto = getattr(optimizer, "auto_compression", None)
    hvd.allreduce(torch.zeros(1), name="cluster.sync")
    spent, steps = [0.0, 0.0], 0
    while True:
        started = time.perf_counter()
        step()
        spent[0] += time.perf_counter() - started
        if baseline is not None:
            started = time.perf_counter()
            baseline()
            spent[1] += time.perf_counter() - started
        steps += 1
        # every rank must take the same number of steps: rank 0 decides when to stop
        done = torch.tensor([float(steps >= plan["min_steps"] and spent[0] >= plan["seconds"])])
        if hvd.broadcast(done, root_rank=0, name="cluster.done").item():
            break
    slowest = hvd.allreduce(torch.tensor(spent, dtype=torch.float64), op=hvd.Max, name="cluster.slowest").tolist()
    choice = "; ".join(auto.events[-2:]) if auto is not None else None
    samples = plan["batch_size"] * hvd.size() * steps
    return samples / slowest[0], samples / slowest[1] if baseline is not None else None, choice


def accuracy(strategy, plan, hvd, topology):
    import torch

    from fidelity import train_once
    from hvdkit.training import data as datasets
    from hvdkit.training.config import TrainConfig

    if strategy == "horovod":
        strategy = "none"  # Horovod's dense average is the same mathematics as hvdkit's 'none'
    spec, _, hier = strategy.partition("/")
    loaded = datasets.load("digits", 0)
    data = tuple(torch.from_numpy(a) for a in (loaded.x_train, loaded.y_train, loaded.x_test, loaded.y_test))
    config = TrainConfig(np=topology.size, model="mlp", dataset="digits", epochs=plan["acc_epochs"],
                         compression=spec, hierarchical=hier == "hier", seed=0)
    return train_once(config, data, loaded.num_classes, hvd, topology)[0]


def worker(plan_path, results_path):
    import torch

    import hvdkit.torch as hvd
    from hvdkit import topology as topology_module

    torch.set_num_threads(1)
    hvd.init()
    topology = topology_module.current()
    with open(plan_path) as f:
        plan = json.load(f)
    out = open(results_path, "a", buffering=1) if topology.rank == 0 else None
    # Horovod's optimizer, stepped between the timed steps of every other strategy (see the module docstring)
    baseline = training_step("horovod", plan, hvd)[0] if "horovod" in plan["strategies"] else None
    for strategy in plan["strategies"]:
        img_sec, horovod_img_sec, choice = throughput(strategy, plan, hvd,
                                                      None if strategy == "horovod" else baseline)
        gc.collect()  # Horovod's optimizer holds its model in reference cycles: free it before the next strategy
        row = {"layout": plan["layout"], "rate_mbit": plan["rate_mbit"], "strategy": strategy, "img_sec": img_sec,
               "horovod_img_sec": horovod_img_sec, "choice": choice}
        if plan["acc_epochs"] and (plan["with_accuracy"] or strategy == "auto"):
            row["accuracy"] = accuracy(strategy, plan, hvd, topology)
        if out is not None:
            out.write(json.dumps(row) + "\n")
            print(f"cluster: {plan['layout']} {plan['rate_mbit']:g} Mbit/s {strategy}: {row['img_sec']:.1f} img/s"
                  + (f" (Horovod between its steps: {horovod_img_sec:.1f}, {img_sec / horovod_img_sec:.2f}x)"
                     if horovod_img_sec else "")
                  + (f", digits {100 * row['accuracy']:.2f} %" if "accuracy" in row else ""), flush=True)
    return 0


# ---------------------------------------------------------------- driver ----
def run_job(args, layout, rate, with_accuracy, results_path, tmp):
    plan = {"layout": layout, "rate_mbit": rate, "strategies": args.strategy_list, "batch_size": args.batch_size,
            "seconds": args.seconds, "min_steps": args.min_steps, "acc_epochs": args.acc_epochs,
            "with_accuracy": with_accuracy}
    plan_path = os.path.join(tmp, f"plan-{layout}-{rate:g}.json")
    with open(plan_path, "w") as f:
        json.dump(plan, f)
    cmd = [sys.executable, "-m", "hvdkit", "run", "-np", "4", "-H", LAYOUTS[layout], "--",
           sys.executable, os.path.abspath(__file__), "--worker", plan_path, results_path]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, HVDKIT_CLUSTER_DIR=args.dir), capture_output=True,
                          text=True)
    sys.stdout.write("".join(line + "\n" for line in proc.stdout.splitlines() if "cluster:" in line))
    sys.stdout.write("".join(line + "\n" for line in proc.stderr.splitlines() if "compression=auto" in line))
    if proc.returncode:
        sys.stderr.write(proc.stderr[-3000:])
    return proc.returncode


def records_from(runs):
    by_group = {}
    for run in runs:
        by_group.setdefault((run["layout"], run["rate_mbit"]), {})[run["strategy"]] = run
    accuracy = {(r["layout"], r["strategy"]): r["accuracy"] for r in runs if "accuracy" in r}
    records = []
    for (layout, rate), rows in by_group.items():
        alone = rows.get("horovod", {}).get("img_sec")
        for strategy, run in rows.items():
            spec, _, hier = strategy.partition("/")
            acc = run.get("accuracy", accuracy.get((layout, strategy)))
            baseline = run.get("horovod_img_sec") or alone  # the baseline steps interleaved with this strategy's
            records.append({"impl": "horovod" if strategy == "horovod" else "hvdkit",
                            "compression": "none" if strategy == "horovod" else spec,
                            "hierarchical": hier == "hier", "nodes": 2 if layout == "2x2" else 4, "layout": layout,
                            "rate_mbit": rate, "img_sec": run["img_sec"],
                            "vs_horovod": run["img_sec"] / baseline if baseline else None,
                            "horovod_img_sec": baseline, "accuracy": acc, "choice": run.get("choice")})
    return records


def print_table(records):
    print(f"\n| {'layout':6} | {'Mbit/s':>6} | {'strategy':22} | {'img/s':>8} | {'Horovod':>8} | {'vs Horovod':>10} "
          f"| {'digits':>7} |")
    print("|--------|--------|------------------------|----------|----------|------------|---------|")
    for r in records:
        name = "horovod (dense)" if r["impl"] == "horovod" else r["compression"] + (" hier" if r["hierarchical"] else "")
        ratio = f"{r['vs_horovod']:.2f}x" if r["vs_horovod"] else ""
        base = f"{r['horovod_img_sec']:.1f}" if r["horovod_img_sec"] else ""
        acc = f"{100 * r['accuracy']:.2f}" if r["accuracy"] is not None else ""
        print(f"| {r['layout']:6} | {r['rate_mbit']:>6g} | {name:22} | {r['img_sec']:>8.1f} | {base:>8} | {ratio:>10} "
              f"| {acc:>7} |")


def plot(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layouts = list(dict.fromkeys(r["layout"] for r in records))
    with_accuracy = any(r["accuracy"] is not None for r in records)
    panels = len(layouts) + with_accuracy
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
    for ax, layout in zip(axes[0], layouts):
        names = list(dict.fromkeys((r["impl"], r["compression"], r["hierarchical"]) for r in records
                                   if r["layout"] == layout))
        for impl, comp, hier in names:
            rows = sorted((r for r in records if r["layout"] == layout and (r["impl"], r["compression"],
                                                                             r["hierarchical"]) == (impl, comp, hier)),
                          key=lambda r: r["rate_mbit"])
            label = "Horovod dense" if impl == "horovod" else comp + (" hier" if hier else "")
            ax.plot([r["rate_mbit"] for r in rows], [r["vs_horovod"] or 1.0 for r in rows], marker="o", label=label,
                    linewidth=2.5 if impl == "horovod" or comp == "auto" else 1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("link rate (Mbit/s)")
        ax.set_ylabel("throughput / Horovod's (steps interleaved, same job)")
        ax.set_title(f"{layout}: 25.2 M-parameter MLP against Horovod dense")
        ax.legend(fontsize=6, ncol=2)
    if not with_accuracy:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return
    acc = {}
    for r in records:
        if r["accuracy"] is not None:
            name = "Horovod" if r["impl"] == "horovod" else r["compression"] + (" hier" if r["hierarchical"] else "")
            acc.setdefault(name, []).append(100 * r["accuracy"])
    ax = axes[0][-1]
    ax.bar(range(len(acc)), [sum(v) / len(v) for v in acc.values()])
    ax.set_xticks(range(len(acc)), list(acc), rotation=45, ha="right", fontsize=7)
    low = min(min(v) for v in acc.values()) if acc else 0
    ax.set_ylim(max(0, low - 5), 100)
    ax.set_ylabel("digits test accuracy (%)")
    ax.set_title("accuracy at equal epochs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def driver(args):
    from hvdkit.runtime import cluster
    from hvdkit.runtime.cluster.layout import Layout

    started = time.perf_counter()
    made = cluster.load(args.dir) is None
    if made:
        cluster.down(args.dir)
        cluster.up(Layout(4, 2, args.rate_list[0], args.dir))
    runs, codes = [], []
    try:
        with tempfile.TemporaryDirectory(prefix="hvdkit-bench-cluster-") as tmp:
            results_path = os.path.join(tmp, "runs.jsonl")
            for i, rate in enumerate(args.rate_list):
                cluster.reshape(args.dir, rate)
                for layout in args.layout_list:
                    codes.append(run_job(args, layout, rate, i == 0, results_path, tmp))
            if os.path.exists(results_path):
                with open(results_path) as f:
                    runs = [json.loads(line) for line in f if line.strip()]
    finally:
        if made:
            cluster.down(args.dir)
    records = records_from(runs)
    print_table(records)
    print(f"\ncluster: {len(runs)} runs in {time.perf_counter() - started:.0f} s, job exit codes {codes}")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(records, f, indent=1)
    if args.plot_path and records:
        plot(records, args.plot_path)
    return 0 if not any(codes) else 1


def main(argv=None):
    args = parse_args(argv)
    return worker(*args.worker) if args.worker else driver(args)


if __name__ == "__main__":
    sys.exit(main())
