"""Pipeline parallelism: each schedule's bubble against GPipe's formula; 2 stages against 2-way data parallel.

    python benchmarks/pipeline.py [--width 1024] [--layers 8] [--batch 128] [--microbatches 1,2,4,8,16]
                                  [--schedules gpipe,1f1b,interleaved] [--steps 12] [--json out.json] [--plot out.png]

One ``hvdkit run -np 2`` job (``--worker``), one torch thread per rank, trains a stack of ``--layers``
Linear+ReLU layers of ``--width`` on batches of ``--batch`` samples:

* for each schedule and number of micro-batches M: a 2-stage pipeline (``hvdkit.torch.pipeline``; the
  interleaved schedule runs 2 chunks per rank). In every step each rank clocks the wall time inside its
  stages' forward and backward of each micro-batch (PyTorch's ``PipelineStage.forward_one_chunk`` and
  ``backward_one_chunk``); the step's bubble is ``1 - busy / step``, the share of the step that rank was not
  computing (waiting for the other stage, communicating, the schedule's own work, the optimizer step).
  Reported: the median over the fastest half of ``--steps`` steps (load from other processes only ever
  lengthens a step, mostly by making a stage wait for a descheduled peer), averaged over the two stages;
  throughput from the fastest step. GPipe's formula for K stages is (K-1)/(M+K-1); the interleaved
  schedule's is (K-1)/(V M+K-1) with V chunks per rank, and 1F1B's equals GPipe's (it saves activation
  memory, not time).
* the same model and global batch trained 2-way data parallel (each rank the whole model on half the
  batch, gradients averaged by ``hvdkit.torch.DistributedOptimizer``), and on one rank alone.

Records (``--json``): ``schedule`` (``gpipe``, ``1f1b``, ``interleaved``, ``data-parallel``, ``single``),
``stages``, ``microbatches``, ``bubble_measured``, ``bubble_formula`` (None where not a pipeline),
``samples_per_s`` (global batch / fastest step), ``step_s`` (fastest step); pipeline records add
``bubble_per_stage``, ``virtual_stages`` and ``bubble_formula_schedule`` (the schedule's own formula).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8, help="Linear+ReLU pairs (a multiple of 4)")
    p.add_argument("--batch", type=int, default=128, help="samples per step (global)")
    p.add_argument("--microbatches", default="1,2,4,8,16")
    p.add_argument("--schedules", default="gpipe,1f1b,interleaved")
    p.add_argument("--steps", type=int, default=12, help="timed steps per configuration (after 2 warm-up steps)")
    p.add_argument("--json", dest="json_path")
    p.add_argument("--plot", dest="plot_path")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.microbatch_list = [int(m) for m in args.microbatches.split(",")]
    args.schedule_list = args.schedules.split(",")
    if args.layers % 4 or any(args.batch % m for m in args.microbatch_list):
        p.error("--layers must be a multiple of 4 and --batch a multiple of every --microbatches value")
    return args


def make_model(args):
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers = []
    for _ in range(args.layers):
        layers += [nn.Linear(args.width, args.width), nn.ReLU()]
    return nn.Sequential(*layers)


def best_time(fn, repeats):
    """The fastest of ``repeats`` calls: load from other processes on the machine only ever slows a call down."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


class BusyClock:
    """Wall time this rank spends inside its stages' forward and backward of a micro-batch: PyTorch's
    ``PipelineStage.forward_one_chunk`` / ``backward_one_chunk``, wrapped on the instances. Measured inside
    the same steps as their length, so load from other processes inflates both alike."""

    def __init__(self, stages):
        self.busy = 0.0
        for stage in stages:
            for name in ("forward_one_chunk", "backward_one_chunk"):
                setattr(stage, name, self._timed(getattr(stage, name)))

    def _timed(self, method):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.busy += time.perf_counter() - started
        return timed


def pipeline_record(args, hvd, schedule, m):
    import torch
    import hvdkit.torch.pipeline as pp

    virtual = 2 if schedule == "interleaved" else 1
    pipe = pp.build(make_model(args), lambda params: torch.optim.SGD(params, lr=1e-4), stages=STAGES,
                    microbatches=m, schedule=schedule, loss_fn=torch.nn.functional.cross_entropy)
    x = torch.randn(args.batch, args.width)
    y = torch.randint(0, args.width, (args.batch,))
    for _ in range(2):
        pipe.step(x, y)
    clock = BusyClock(pipe.stages)
    steps, bubbles = [], []
    for _ in range(args.steps):
        clock.busy = 0.0
        started = time.perf_counter()
        pipe.step(x, y)
        steps.append(time.perf_counter() - started)
        bubbles.append(1 - clock.busy / steps[-1])
    calm = sorted(zip(steps, bubbles))[:max(1, len(steps) // 2)]  # the fastest half: the least disturbed steps
    both = hvd.allgather_object((min(steps), statistics.median(b for _, b in calm)),
                                name=f"bench.pipeline.{schedule}.{m}")
    step = statistics.mean(s for s, _ in both)
    return {"schedule": schedule, "stages": STAGES, "microbatches": m, "virtual_stages": virtual,
            "bubble_measured": statistics.mean(b for _, b in both), "bubble_per_stage": [b for _, b in both],
            "bubble_formula": (STAGES - 1) / (m + STAGES - 1),
            "bubble_formula_schedule": (STAGES - 1) / (virtual * m + STAGES - 1),
            "samples_per_s": args.batch / step, "step_s": step}


def data_parallel_records(args, hvd):
    import torch
    import torch.nn.functional as F

    model = make_model(args)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=1e-4), model.named_parameters())
    half = args.batch // hvd.size()
    x, y = torch.randn(half, args.width), torch.randint(0, args.width, (half,))

    def step(m, o, xb, yb):
        o.zero_grad()
        F.cross_entropy(m(xb), yb).backward()
        o.step()

    for _ in range(2):
        step(model, opt, x, y)
    dp = statistics.mean(hvd.allgather_object(best_time(lambda: step(model, opt, x, y), args.steps),
                                              name="bench.pipeline.dp"))
    records = [{"schedule": "data-parallel", "stages": 1, "microbatches": 1, "bubble_measured": None,
                "bubble_formula": None, "samples_per_s": args.batch / dp, "step_s": dp}]
    if hvd.rank() == 0:  # one rank alone, the whole batch (rank 1 waits in the allgather below)
        alone = make_model(args)
        plain = torch.optim.SGD(alone.parameters(), lr=1e-4)
        xb, yb = torch.randn(args.batch, args.width), torch.randint(0, args.width, (args.batch,))
        step(alone, plain, xb, yb)
        single = best_time(lambda: step(alone, plain, xb, yb), args.steps)
        records.append({"schedule": "single", "stages": 1, "microbatches": 1, "bubble_measured": None,
                        "bubble_formula": None, "samples_per_s": args.batch / single, "step_s": single})
    hvd.allgather_object(None, name="bench.pipeline.single.done")
    return records


def worker(args):
    import torch

    torch.set_num_threads(1)
    import hvdkit.torch.pipeline as pp

    pp.init(STAGES)
    import hvdkit.torch as hvd

    records = []
    for schedule in args.schedule_list:
        for m in args.microbatch_list:
            if schedule == "1f1b" and m < STAGES:
                continue  # PyTorch's 1F1B needs a micro-batch per stage
            records.append(pipeline_record(args, hvd, schedule, m))
            if hvd.rank() == 0:
                r = records[-1]
                print(f"{schedule:<12} M={m:<3} step {1000 * r['step_s']:7.1f} ms  bubble "
                      f"{100 * r['bubble_measured']:5.1f}% (formula {100 * r['bubble_formula']:5.1f}%)", flush=True)
    records += data_parallel_records(args, hvd)
    if hvd.rank() == 0:
        with open(args.result, "w") as f:
            json.dump(records, f)


def print_table(records, args):
    print(f"\n2 stages, {args.layers} x Linear({args.width}) + ReLU, batch {args.batch}, 1 thread per rank")
    print(f"{'schedule':<14}{'M':>4}{'step ms':>10}{'samples/s':>11}{'bubble':>9}{'GPipe (K-1)/(M+K-1)':>21}"
          f"{'schedule formula':>18}")
    for r in records:
        bubble = "" if r["bubble_measured"] is None else f"{100 * r['bubble_measured']:.1f}%"
        formula = "" if r["bubble_formula"] is None else f"{100 * r['bubble_formula']:.1f}%"
        own = "" if r.get("bubble_formula_schedule") is None else f"{100 * r['bubble_formula_schedule']:.1f}%"
        print(f"{r['schedule']:<14}{r['microbatches']:>4}{1000 * r['step_s']:>10.1f}{r['samples_per_s']:>11.0f}"
              f"{bubble:>9}{formula:>21}{own:>18}")
    by = {r["schedule"]: r for r in records if r["bubble_measured"] is None}
    best = max((r for r in records if r["bubble_measured"] is not None), key=lambda r: r["samples_per_s"])
    dp = by["data-parallel"]
    print(f"\nbest pipeline ({best['schedule']}, M={best['microbatches']}): {best['samples_per_s']:.0f} samples/s = "
          f"{best['samples_per_s'] / dp['samples_per_s']:.2f}x 2-way data parallel ({dp['samples_per_s']:.0f}), "
          f"{best['samples_per_s'] / by['single']['samples_per_s']:.2f}x one rank "
          f"({by['single']['samples_per_s']:.0f})")


def plot(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    pipes = [r for r in records if r["bubble_measured"] is not None]
    ms = sorted({r["microbatches"] for r in pipes})
    left.plot(ms, [100 * (STAGES - 1) / (m + STAGES - 1) for m in ms], "k--", label="(K-1)/(M+K-1)")
    for schedule in sorted({r["schedule"] for r in pipes}):
        rows = sorted((r for r in pipes if r["schedule"] == schedule), key=lambda r: r["microbatches"])
        left.plot([r["microbatches"] for r in rows], [100 * r["bubble_measured"] for r in rows], "o-", label=schedule)
    left.set_xscale("log", base=2)
    left.set_xlabel("micro-batches M")
    left.set_ylabel("bubble (% of step)")
    left.set_title("2 stages: measured bubble")
    left.legend()
    best = {}
    for r in pipes:
        if r["samples_per_s"] > best.get(r["schedule"], {"samples_per_s": 0})["samples_per_s"]:
            best[r["schedule"]] = r
    bars = [(f"{s}\nM={r['microbatches']}", r["samples_per_s"]) for s, r in sorted(best.items())]
    bars += [(r["schedule"], r["samples_per_s"]) for r in records if r["bubble_measured"] is None]
    right.bar([b[0] for b in bars], [b[1] for b in bars], color=["C0"] * len(best) + ["C1", "C7"])
    right.set_ylabel("samples/s")
    right.set_title("2 ranks: 2 stages vs 2-way data parallel")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def driver(args):
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        cmd = [sys.executable, "-m", "hvdkit", "run", "-np", str(STAGES), "--", sys.executable,
               os.path.abspath(__file__), "--worker", "--result", result, "--width", str(args.width),
               "--layers", str(args.layers), "--batch", str(args.batch), "--microbatches", args.microbatches,
               "--schedules", args.schedules, "--steps", str(args.steps)]
        code = subprocess.call(cmd, cwd=REPO)
        if code != 0 or not os.path.exists(result):
            print(f"pipeline: the benchmark job failed with exit code {code}", file=sys.stderr)
            return code or 1
        with open(result) as f:
            records = json.load(f)
    print_table(records, args)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
                       "config": {"width": args.width, "layers": args.layers, "batch": args.batch, "stages": STAGES},
                       "records": records}, f, indent=1)
    if args.plot_path:
        plot(records, args.plot_path)
    return 0


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
