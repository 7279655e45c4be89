"""Fidelity of every compressor with its defaults: final test accuracy against dense training
in the same job, over several seeds, flat and hierarchical (PyTorch only).

    python benchmarks/fidelity.py                       # the full default matrix (hvdkit bench fidelity)
    python benchmarks/fidelity.py --datasets digits --layouts flat-2 --seeds 1 --epochs 5
    python benchmarks/fidelity.py --add-specs "topk:0.001,randomk:0.01,ef=0"   # tuned specs as extra rows

Matrix: layouts (``flat-2``: 2 ranks, one node; ``hier-2x2``: 4 ranks in 2
emulated nodes, ``HVDKIT_RANKS_PER_NODE=2``, hierarchical exchange) x datasets
(``mnist1d`` with the MNIST-1D paper's 1-D CNN at lr 0.03 for 60 epochs,
about 94 % dense; ``digits`` with ``hvdkit train``'s defaults: MLP, lr 0.05,
20 epochs) x specs (``none`` always first) x seeds (0..N-1). Every run
uses ``hvdkit train``'s recipe (32 samples per rank and step, SGD momentum
0.9, the seed's initial weights, sample order and digits split) and its
code (``hvdkit.training.torch_loop``); ``--epochs`` sets one count for every
run, so dense and compressed always train equally long.

Why one job per layout: ~120 runs each launched as ``hvdkit train`` would
pay torch's and Horovod's start-up every time. Here the driver starts one
``hvdkit run`` per layout, and its ranks (``--worker``) loop over datasets x
seeds x specs in-process, building a fresh model and
``hvdkit.torch.DistributedOptimizer`` for each run. Rank 0 appends one JSON
line per finished run, so a failed job still reports what it finished.

Output: a table (accuracy mean +- sample std over seeds, dense mean, the
difference in points, bytes this rank sent per step and the compression
ratio, from the optimizer's ``last_step_stats``), JSON records (``--json``)
with keys ``compression``, ``algorithm``, ``options`` (every option, defaults
filled in, and the spec's ``arg``), ``ranks``, ``ranks_per_node``,
``hierarchical``, ``layout``, ``dataset``, ``model``, ``lr``, ``epochs``,
``seeds``, ``accuracies`` (per seed), ``accuracy_mean``, ``accuracy_std``,
``dense_accuracy_mean``, ``points_vs_dense``, ``bytes_per_step`` (payload
bytes one rank hands to collectives per step, every stage: what ``hvdkit
train`` reports), ``wire_bytes_per_step`` (the ring estimate of bytes it
transmits), ``dense_bytes_per_step``, ``compression_ratio`` (dense bytes per
payload byte over the buckets the compressor handled; under ``hier-2x2`` the
intra-node stages stay dense), ``seconds`` (mean training time of one run;
a job's first run also waits for the slowest rank's start-up), and a PNG
(``--plot``).
"""
import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
DEFAULT_SPECS = ("none", "fp16", "bf16", "int8", "onebit", "topk:0.01", "randomk:0.01", "powersgd:4")


@dataclasses.dataclass(frozen=True)
class Layout:
    ranks: int
    ranks_per_node: int = None  # emulated node size (HVDKIT_RANKS_PER_NODE); None: one node
    hierarchical: bool = False


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one dataset trains: the flags of ``hvdkit train`` that differ from its defaults."""

    model: str
    lr: float
    epochs: int


LAYOUTS = {"flat-2": Layout(2), "hier-2x2": Layout(4, ranks_per_node=2, hierarchical=True)}
RECIPES = {"mnist1d": Recipe("cnn", lr=0.03, epochs=60), "digits": Recipe("mlp", lr=0.05, epochs=20)}


def split_specs(text):
    """``"none,topk:0.01,warmup=100,int8"`` -> ``["none", "topk:0.01,warmup=100", "int8"]``: a piece
    with ``=`` is an option of the spec before it (a spec's head never contains ``=``)."""
    specs = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if "=" in piece and specs:
            specs[-1] += "," + piece
        else:
            specs.append(piece)
    return specs


def _names(p, flag, text, valid):
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    bad = [name for name in chosen if name not in valid]
    if bad or not chosen:
        p.error(f"{flag} {text!r}: unknown {', '.join(map(repr, bad)) or '(empty)'}; valid: {', '.join(valid)}")
    return list(dict.fromkeys(chosen))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--specs", default=",".join(DEFAULT_SPECS),
                   help="compression specs, comma-separated, options after their spec "
                        f"(default: every compressor's defaults, {','.join(DEFAULT_SPECS)}); 'none' is always run")
    p.add_argument("--add-specs", default="", help="more specs after --specs, e.g. tuned ones: 'topk:0.001,approx=1'")
    p.add_argument("--datasets", default=",".join(RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}")
    p.add_argument("--layouts", default=",".join(LAYOUTS), help=f"comma-separated, of {', '.join(LAYOUTS)}")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per run (default 3)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of every run, dense and compressed alike (default: per dataset, "
                        + ", ".join(f"{name} {r.epochs}" for name, r in RECIPES.items()) + ")")
    p.add_argument("--json", dest="json_path", default=os.path.join(RESULTS, "fidelity.json"),
                   help="write the records here (default benchmarks/results/fidelity.json)")
    p.add_argument("--plot", dest="plot_path", default=os.path.join(RESULTS, "fidelity.png"),
                   help="write the PNG here (default benchmarks/results/fidelity.png; '' for none)")
    p.add_argument("--worker", nargs=2, metavar=("PLAN", "RESULTS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return args
    from hvdkit.compression import spec as compression_spec

    for flag, text in (("--specs", args.specs), ("--add-specs", args.add_specs)):
        for spec in split_specs(text):
            try:
                compression_spec.parse(spec)
            except ValueError as err:
                p.error(f"{flag}: {err}")
    args.spec_list = list(dict.fromkeys(["none"] + split_specs(args.specs) + split_specs(args.add_specs)))
    args.dataset_list = _names(p, "--datasets", args.datasets, tuple(RECIPES))
    args.layout_list = _names(p, "--layouts", args.layouts, tuple(LAYOUTS))
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.epochs is not None and args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    return args


# ---------------------------------------------------------------- worker ----
TRAFFIC = ("bytes_sent", "wire_bytes", "dense_bytes", "compressed_dense_bytes", "compressed_bytes")  # StepStats


def train_once(config, data, num_classes, hvd, topology):
    """One run of ``hvdkit train``'s torch loop (no checkpoints, no logs), evaluated at the end: its
    final test accuracy and, per rank and step (mean over ranks), the ``StepStats`` fields in TRAFFIC."""
    import torch

    from hvdkit.training import torch_loop, torch_models, torch_state
    from hvdkit.training.metrics import EpochTotals

    x_train, y_train, x_test, y_test = data
    torch_state.seed_everything(config.seed)
    model = torch_models.build(config.model, tuple(x_train.shape[1:]), num_classes)
    optimizer = torch_loop.make_optimizer(config, model, hvd, topology)
    hvd.broadcast_state(model, optimizer, root_rank=0)
    sums = [0.0] * len(TRAFFIC)  # this rank's totals over the run

    def after_each(_step):
        stats = optimizer.last_step_stats
        for i, field in enumerate(TRAFFIC):
            sums[i] += getattr(stats, field) if stats is not None else 0

    totals = EpochTotals()  # steps over every epoch
    for epoch in range(config.epochs):
        torch_loop.train_epoch(epoch, 0, totals, config, model, optimizer, x_train, y_train, hvd, topology,
                               after_each)
    accuracy = torch_loop.evaluate(model, x_test, y_test, hvd, topology)
    summed = hvd.allreduce(torch.tensor(sums, dtype=torch.float64), op=hvd.Sum, name="fidelity.traffic").tolist()
    per_step = {field: value / topology.size / totals.steps for field, value in zip(TRAFFIC, summed)}
    return accuracy, per_step, totals.steps


def worker(plan_path, results_path):
    """Every rank: each (dataset, seed, spec) of the plan in turn; rank 0 appends a JSON line per run."""
    import torch

    import hvdkit.torch as hvd
    from hvdkit import topology as topology_module
    from hvdkit.training import data as datasets
    from hvdkit.training.config import TrainConfig

    torch.set_num_threads(1)  # models of a few thousand weights: threads only fight the other ranks
    hvd.init()
    topology = topology_module.current()
    with open(plan_path) as f:
        plan = json.load(f)
    out = open(results_path, "a", buffering=1) if topology.rank == 0 else None
    for name, recipe in plan["datasets"].items():
        for seed in range(plan["seeds"]):
            loaded = datasets.load(name, seed)
            data = tuple(torch.from_numpy(a) for a in (loaded.x_train, loaded.y_train, loaded.x_test, loaded.y_test))
            for spec in plan["specs"]:
                config = TrainConfig(np=topology.size, model=recipe["model"], dataset=name, epochs=recipe["epochs"],
                                     lr=recipe["lr"], compression=spec, hierarchical=plan["hierarchical"], seed=seed)
                started = time.perf_counter()
                accuracy, per_step, steps = train_once(config, data, loaded.num_classes, hvd, topology)
                if out is not None:
                    row = {"layout": plan["layout"], "dataset": name, "seed": seed, "compression": spec,
                           "accuracy": accuracy, "steps": steps, "seconds": time.perf_counter() - started, **per_step}
                    out.write(json.dumps(row) + "\n")
                    print(f"fidelity: {plan['layout']} {name} seed {seed} {spec}: {100 * accuracy:.2f} % "
                          f"({row['seconds']:.1f} s)", flush=True)
    if out is not None:
        out.close()
    return 0


# ---------------------------------------------------------------- driver ----
def run_layout(args, layout_name, results_path):
    """One ``hvdkit run`` job for the layout; its exit code."""
    layout = LAYOUTS[layout_name]
    plan = {"layout": layout_name, "hierarchical": layout.hierarchical, "seeds": args.seeds, "specs": args.spec_list,
            "datasets": {name: dict(dataclasses.asdict(RECIPES[name]),
                                    **({"epochs": args.epochs} if args.epochs else {}))
                         for name in args.dataset_list}}
    plan_path = results_path + f".{layout_name}.plan.json"
    with open(plan_path, "w") as f:
        json.dump(plan, f)
    cmd = [sys.executable, "-m", "hvdkit", "run", "-np", str(layout.ranks),
           *(["--ranks-per-node", str(layout.ranks_per_node)] if layout.ranks_per_node else []),
           "--", sys.executable, os.path.abspath(__file__), "--worker", plan_path, results_path]
    return subprocess.call(cmd, cwd=REPO)


def summarize(args, runs):
    """One record per (layout, dataset, spec) from the per-run rows, with the same job's dense mean."""
    from hvdkit.compression import spec as compression_spec

    records = []
    for layout_name in args.layout_list:
        layout = LAYOUTS[layout_name]
        for dataset in args.dataset_list:
            mine = [r for r in runs if r["layout"] == layout_name and r["dataset"] == dataset]
            dense = [r["accuracy"] for r in mine if r["compression"] == "none"]
            dense_mean = statistics.fmean(dense) if dense else None
            for spec in args.spec_list:
                rows = sorted((r for r in mine if r["compression"] == spec), key=lambda r: r["seed"])
                if not rows:
                    continue
                accuracies = [r["accuracy"] for r in rows]
                parsed = compression_spec.parse(spec)
                mean = statistics.fmean(accuracies)
                records.append({
                    "compression": spec, "algorithm": parsed.name, "options": dict(parsed.options, arg=parsed.arg),
                    "ranks": layout.ranks, "ranks_per_node": layout.ranks_per_node or layout.ranks,
                    "hierarchical": layout.hierarchical, "layout": layout_name, "dataset": dataset,
                    "model": RECIPES[dataset].model, "lr": RECIPES[dataset].lr,
                    "epochs": args.epochs or RECIPES[dataset].epochs, "seeds": [r["seed"] for r in rows],
                    "accuracies": accuracies, "accuracy_mean": mean,
                    "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                    "dense_accuracy_mean": dense_mean,
                    "points_vs_dense": None if dense_mean is None else 100 * (mean - dense_mean),
                    "bytes_per_step": statistics.fmean(r["bytes_sent"] for r in rows),
                    "wire_bytes_per_step": statistics.fmean(r["wire_bytes"] for r in rows),
                    "dense_bytes_per_step": statistics.fmean(r["dense_bytes"] for r in rows),
                    "compression_ratio": _ratio(rows),
                    "seconds": statistics.fmean(r["seconds"] for r in rows)})
    return records


def _ratio(rows):
    """Dense bytes per payload byte over the buckets that went through the compressor (1.0: none did)."""
    compressed = sum(r["compressed_bytes"] for r in rows)
    return sum(r["compressed_dense_bytes"] for r in rows) / compressed if compressed else 1.0


def print_table(records):
    print(f"\n| {'layout':<8} | {'dataset':<7} | {'compression':<22} | {'accuracy (mean +- std)':>22} | "
          f"{'dense':>7} | {'vs dense':>8} | {'B sent/step':>11} | {'B wire/step':>11} | {'ratio':>6} | "
          f"{'s/run':>5} |")
    print("|" + "|".join("-" * w for w in (10, 9, 24, 24, 9, 10, 13, 13, 8, 7)) + "|")
    for r in records:
        dense = "" if r["dense_accuracy_mean"] is None else f"{100 * r['dense_accuracy_mean']:.2f}"
        delta = "" if r["points_vs_dense"] is None else f"{r['points_vs_dense']:+.2f}"
        accuracy = f"{100 * r['accuracy_mean']:.2f} +- {100 * r['accuracy_std']:.2f} %"
        print(f"| {r['layout']:<8} | {r['dataset']:<7} | {r['compression']:<22} | {accuracy:>22} | {dense:>7} | "
              f"{delta:>8} | {r['bytes_per_step']:>11.0f} | {r['wire_bytes_per_step']:>11.0f} | "
              f"{r['compression_ratio']:>5.1f}x | {r['seconds']:>5.1f} |")


PLOT_FLOOR = -10.0  # points below dense where the y axis ends: a diverged run is a labelled stub, not the scale


def plot(records, path):
    """Accuracy minus the same job's dense mean, in points, per spec: one panel per dataset, one bar
    colour per layout, error bars one sample std over seeds; bars below PLOT_FLOOR are cut and labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    layouts = list(dict.fromkeys(r["layout"] for r in records))
    specs = list(dict.fromkeys(r["compression"] for r in records))
    fig, axes = plt.subplots(len(datasets), 1, figsize=(max(6.0, 0.6 * len(specs) * len(layouts)), 3.6 * len(datasets)),
                             squeeze=False)
    width = 0.8 / len(layouts)
    for ax, dataset in zip(axes[:, 0], datasets):
        for i, layout in enumerate(layouts):
            by_spec = {r["compression"]: r for r in records if r["dataset"] == dataset and r["layout"] == layout
                       and r["points_vs_dense"] is not None}
            rows = [by_spec[s] for s in specs if s in by_spec]
            if not rows:
                continue
            xs = [k + i * width for k, s in enumerate(specs) if s in by_spec]
            deltas = [r["points_vs_dense"] for r in rows]
            errors = [100 * r["accuracy_std"] if d >= PLOT_FLOOR else 0.0 for r, d in zip(rows, deltas)]
            ax.bar(xs, [max(d, PLOT_FLOOR) for d in deltas], width, yerr=errors, capsize=2,
                   label=f"{layout} (dense {100 * rows[0]['dense_accuracy_mean']:.1f} %)")
            for x, d in zip(xs, deltas):
                if d < PLOT_FLOOR:
                    ax.annotate(f"{d:.0f}", (x, PLOT_FLOOR), ha="center", va="bottom", fontsize=7, color="white")
        ax.axhline(0, color="k", linewidth=0.8)
        top = max([r["points_vs_dense"] + 100 * r["accuracy_std"] for r in records
                   if r["dataset"] == dataset and r["points_vs_dense"] is not None] + [1.0])
        ax.set_ylim(PLOT_FLOOR, top + 0.5)
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(specs))], specs, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("accuracy - dense (points)")
        epochs = next(r["epochs"] for r in records if r["dataset"] == dataset)
        ax.set_title(f"{dataset} ({RECIPES[dataset].model}, {epochs} epochs): final test accuracy against dense, "
                     "mean +- std over seeds", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def driver(args):
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hvdkit-fidelity-") as tmp:
        results_path = os.path.join(tmp, "runs.jsonl")
        codes = {name: run_layout(args, name, results_path) for name in args.layout_list}
        runs = []
        if os.path.exists(results_path):
            with open(results_path) as f:
                runs = [json.loads(line) for line in f if line.strip()]
    records = summarize(args, runs)
    wall = time.perf_counter() - started
    print_table(records)
    expected = len(args.layout_list) * len(args.dataset_list) * len(args.spec_list) * args.seeds
    print(f"\nfidelity: {len(runs)} of {expected} runs in {wall:.0f} s "
          f"({', '.join(f'{name}: exit {code}' for name, code in codes.items())})")
    for path in (args.json_path, args.plot_path):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(records, f, indent=1)
    if args.plot_path and records:
        plot(records, args.plot_path)
    return 0 if len(runs) == expected and not any(codes.values()) else 1


def main(argv=None):
    args = parse_args(argv)
    return worker(*args.worker) if args.worker else driver(args)


if __name__ == "__main__":
    sys.exit(main())
