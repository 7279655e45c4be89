"""Pipeline parallelism: each schedule's bubble against GPipe's formula; 2 stages against 2-way data parallel.

    python benchmarks/pipeline.py [--width 1024] [--layers 8] [--microbatch-size 64] [--batch 128]
                                  [--microbatches 1,2,4,8,16] [--schedules gpipe,1f1b,interleaved,zero-bubble]
                                  [--steps 8] [--repeats 3] [--sweeps fixed-microbatch,fixed-batch]
                                  [--no-baselines] [--wait-idle SECONDS] [--json out.json] [--plot out.png]

One ``hvdkit run -np 2`` job (``--worker``), one torch thread per rank, trains a stack of ``--layers``
Linear+ReLU layers of ``--width`` as a 2-stage pipeline (``hvdkit.torch.pipeline``; interleaved and
zero-bubble hold 2 chunks per rank).

What is measured. GPipe's formula (K-1)/(M+K-1) is the idle share of each stage's step when the M
micro-batches cost the same and communication is free: a stage computes M micro-batches and waits
K-1 of them while the pipeline fills and drains. Each rank measures exactly that, directly: the wall
time of the schedule's step (PyTorch's ``schedule.step``: every micro-batch's forward, backward and
sends and receives; the optimizer step after it is outside) and, inside it, the wall time spent in its
stages' compute of a micro-batch (``PipelineStage.forward_one_chunk``, ``backward_one_chunk``,
``backward_weight_one_chunk``). The bubble is the rest: ``1 - busy / window``. (The previous version
derived it from the whole step, optimizer included, at a fixed batch: at M = 16 a micro-batch held 8
samples and what it measured was their per-micro-batch cost, not the schedule.) Two sweeps over M:

* ``fixed-microbatch`` (the bubble against the formula): every micro-batch holds ``--microbatch-size``
  samples (64: batch = M x 64), so a micro-batch costs the same at every M, and its compute (tens of ms a
  stage) dwarfs one point-to-point hop of its activation (about 1 ms over gloo on loopback, measured
  and reported as ``p2p_hop_s``). This is the schedule's bubble the formula describes.
* ``fixed-batch`` (the per-micro-batch overhead): the batch stays ``--batch`` samples and is cut into M
  micro-batches of batch / M. A step does the same arithmetic at every M, so what it gains with M is
  the cost of a micro-batch as such: compute (each micro-batch re-reads its stage's weights and adds a
  whole weight gradient whatever its size: ``busy_s`` grows) and waiting (a hop each way per
  micro-batch, the schedule's Python: ``idle_s`` grows). The summary gives the least-squares slope
  of each against M at this batch: the cost of one more micro-batch.

The same model at each global batch of both sweeps trained 2-way data parallel (each rank the whole
model on half the batch, gradients averaged by ``hvdkit.torch.DistributedOptimizer``) and on one rank
alone are the baselines.

Noise (a shared machine): every configuration runs ``--repeats`` times, in rounds (each round runs
every configuration once, so a busy spell hits one round of many configurations, not every round of
one; ``--wait-idle`` starts the job once the machine's CPUs were >= 90 % idle for 2 s). Within a run
each rank takes the medians over the fastest half of ``--steps`` steps (after 2
warm-up steps); a record's bubble is the median over rounds of the two stages' mean; throughput is the
global batch over the fastest step of any round. Two columns say how disturbed a run was:
``compute_cpu_share`` (CPU time / wall time inside the compute calls: below about 0.9 a rank lost its
core while computing, which lengthens its busy time and its peer's idle time alike) and ``queued_share``
(the share of the window a rank was runnable but waiting for a core, from Linux's schedstat: on a
machine with spare cores it is about 0; every time a rank is woken by a receive on a loaded machine it
waits here, and that wait counts as bubble).

Records (``--json``): ``sweep``, ``schedule`` (``gpipe``, ``1f1b``, ``interleaved``, ``zero-bubble``;
baselines ``data-parallel``, ``single``), ``stages``, ``microbatches``, ``microbatch_size``, ``batch``,
``bubble_measured``, ``bubble_formula`` (GPipe's; None for baselines), ``bubble_formula_schedule``
(the schedule's own: 1F1B's is GPipe's, interleaving's (K-1)/(VM+K-1) with V chunks per rank, zero
bubble's (K-1)/(3VM+K-1), ZB-H1's when forward, input-gradient and weight-gradient passes cost the
same), ``bubble_per_stage``, ``bubble_rounds``, ``busy_s`` and ``idle_s`` (a stage's, per step),
``busy_s_per_stage``, ``step_s`` (fastest whole step, optimizer included), ``samples_per_s``,
``compute_cpu_share``, ``queued_share``, ``p2p_post_s`` and ``p2p_wait_s`` (a stage's time per step in
PyTorch's helpers that post point-to-point operations and wait for them; waiting on the peer is how
the bubble itself shows), ``p2p_hop_s`` (median hop of this micro-batch's activation),
``virtual_stages``. The JSON adds ``p2p_hop_s`` by micro-batch rows, ``overhead`` (the fixed-batch
slopes) and ``target`` (GPipe at M >= 4: measured, formula, met).
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
TARGET_POINTS = 0.10  # the target: GPipe's bubble within 10 percentage points of the formula at M >= 4
SWEEPS = ("fixed-microbatch", "fixed-batch")
BASELINES = ("data-parallel", "single")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8, help="Linear+ReLU pairs (a multiple of 4)")
    p.add_argument("--microbatch-size", type=int, default=64, help="samples per micro-batch (fixed-microbatch sweep)")
    p.add_argument("--batch", type=int, default=128, help="samples per step (fixed-batch sweep)")
    p.add_argument("--microbatches", default="1,2,4,8,16")
    p.add_argument("--schedules", default="gpipe,1f1b,interleaved,zero-bubble")
    p.add_argument("--steps", type=int, default=8, help="timed steps per run (after 2 warm-up steps)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each configuration (rounds)")
    p.add_argument("--sweeps", default=",".join(SWEEPS), help="which sweeps to run (quicker reruns)")
    p.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                   help="also train data parallel and on one rank at each global batch")
    p.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                   help="first wait up to SECONDS for 2 s in which the machine's CPUs are >= 90%% idle")
    p.add_argument("--json", dest="json_path")
    p.add_argument("--plot", dest="plot_path")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.microbatch_list = [int(m) for m in args.microbatches.split(",")]
    args.schedule_list = args.schedules.split(",")
    args.sweep_list = args.sweeps.split(",")
    if set(args.sweep_list) - set(SWEEPS):
        p.error(f"--sweeps: choose from {', '.join(SWEEPS)}")
    if args.layers % 4 or any(args.batch % m for m in args.microbatch_list):
        p.error("--layers must be a multiple of 4 and --batch a multiple of every --microbatches value")
    return args


def configurations(args):
    """(sweep, schedule, M, global batch) of every pipeline run, in the order a round runs them."""
    runs = []
    for schedule in args.schedule_list:
        for m in args.microbatch_list:
            if schedule == "1f1b" and m < STAGES:
                continue  # PyTorch's 1F1B needs a micro-batch per stage
            batches = {"fixed-microbatch": m * args.microbatch_size, "fixed-batch": args.batch}
            runs += [(sweep, schedule, m, batches[sweep]) for sweep in args.sweep_list]
    return runs


def formulas(schedule, m, virtual):
    """(GPipe's bubble, the schedule's own) for K = STAGES stages, M micro-batches, V chunks per rank."""
    passes = 3 if schedule == "zero-bubble" else 1  # ZB-H1: weight-gradient passes fill 2 of 3 idle slots
    return (STAGES - 1) / (m + STAGES - 1), (STAGES - 1) / (passes * virtual * m + STAGES - 1)


def make_model(args):
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers = []
    for _ in range(args.layers):
        layers += [nn.Linear(args.width, args.width), nn.ReLU()]
    return nn.Sequential(*layers)


def data(args, samples):
    import torch

    return torch.randn(samples, args.width), torch.randint(0, args.width, (samples,))


def best_time(fn, repeats):
    """The fastest of ``repeats`` calls: load from other processes on the machine only ever slows a call down."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def run_delay():
    """Seconds this thread has been runnable but waiting for a core (Linux schedstat), 0 where unknown."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class Clock:
    """Per step: the schedule's window, and inside it this rank's compute of micro-batches (wall and CPU
    time), by wrapping PyTorch's methods on the instances; how long in the window this rank waited for a
    core (``queued``); and the time in PyTorch's helpers that post point-to-point sends and receives and
    wait for them (``post``, ``wait``: the module's functions, wrapped once per process)."""

    COMPUTE = ("forward_one_chunk", "backward_one_chunk", "backward_weight_one_chunk")
    P2P = {"_batch_p2p": "post", "_wait_batch_p2p": "wait"}
    current = None  # the clock the p2p helpers report to

    def __init__(self, pipe):
        from torch.distributed.pipelining import schedules

        self.reset()
        for stage in pipe.stages:
            for name in self.COMPUTE:
                setattr(stage, name, self._timed(getattr(stage, name), "busy", time.thread_time))
        pipe.schedule.step = self._timed(pipe.schedule.step, "window", run_delay)
        if not getattr(schedules, "_bench_clock", False):
            for name, key in self.P2P.items():
                setattr(schedules, name, self._timed(getattr(schedules, name), key, time.thread_time, clock=Clock))
            schedules._bench_clock = True
        Clock.current = self

    def reset(self):
        self.totals = dict.fromkeys(("busy", "busy_thread_time", "window", "window_run_delay", "post", "wait"), 0.0)

    def _timed(self, method, key, also, clock=None):
        def timed(*args, **kwargs):
            wall, other = time.perf_counter(), also()
            try:
                return method(*args, **kwargs)
            finally:
                totals = (clock.current if clock is not None else self).totals
                totals[key] += time.perf_counter() - wall
                totals[f"{key}_{also.__name__}"] = totals.get(f"{key}_{also.__name__}", 0.0) + also() - other
        return timed


def run_pipeline(args, schedule, m, batch):
    """This rank's summary of one run: fastest step, and medians over the fastest half of the steps."""
    import torch
    import hvdkit.torch.pipeline as pp

    pipe = pp.build(make_model(args), lambda params: torch.optim.SGD(params, lr=1e-4), stages=STAGES,
                    microbatches=m, schedule=schedule, loss_fn=torch.nn.functional.cross_entropy)
    x, y = data(args, batch)
    for _ in range(2):
        pipe.step(x, y)
    clock = Clock(pipe)
    steps = []
    for _ in range(args.steps):
        clock.reset()
        started = time.perf_counter()
        pipe.step(x, y)
        steps.append((time.perf_counter() - started, dict(clock.totals)))
    calm = [t for _, t in sorted(steps, key=lambda s: s[0])[:max(1, len(steps) // 2)]]

    def median(fn):
        return statistics.median(fn(t) for t in calm)

    return {"step_s": min(s for s, _ in steps), "busy_s": median(lambda t: t["busy"]),
            "idle_s": median(lambda t: t["window"] - t["busy"]),
            "bubble": median(lambda t: 1 - t["busy"] / t["window"]),
            "cpu_share": median(lambda t: t["busy_thread_time"] / t["busy"]),
            "queued": median(lambda t: t["window_run_delay"] / t["window"]), "post_s": median(lambda t: t["post"]),
            "wait_s": median(lambda t: t["wait"]), "virtual": len(pipe.stages)}


def p2p_hop(args, rows, trips=30, repeats=5):
    """(fastest, median) seconds of one hop of a (rows, width) float32 activation between the 2 ranks over
    the pipelines' gloo group, from ``repeats`` times ``trips`` round trips."""
    import torch
    import torch.distributed as dist

    tensor, rank = torch.zeros(rows, args.width), dist.get_rank()

    def trip():
        for _ in range(trips):
            if rank == 0:
                dist.send(tensor, 1)
                dist.recv(tensor, 1)
            else:
                dist.recv(tensor, 0)
                dist.send(tensor, 0)

    trip()
    times = []
    for _ in range(repeats):
        times.append(best_time(trip, 1) / (2 * trips))
    return min(times), statistics.median(times)


def baseline_round(args, hvd, batches, dp, alone):
    """{(schedule, batch): step seconds} of one round: 2-way data parallel and (rank 0) one rank alone."""
    import torch.nn.functional as F

    def step(model, optimizer, x, y):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    times = {}
    for batch in batches:
        x, y = data(args, batch // hvd.size())
        step(*dp, x, y)
        took = best_time(lambda: step(*dp, x, y), args.steps)
        times[("data-parallel", batch)] = statistics.mean(hvd.allgather_object(took, name=f"bench.pipeline.dp.{batch}"))
    if hvd.rank() == 0:  # the whole batch on one rank (rank 1 waits in the allgather below)
        for batch in batches:
            x, y = data(args, batch)
            step(*alone, x, y)
            times[("single", batch)] = best_time(lambda: step(*alone, x, y), args.steps)
    hvd.allgather_object(None, name="bench.pipeline.single.done")
    return times


def pipeline_record(key, rounds, hops):
    """One configuration's record from its rounds (each: both ranks' summaries)."""
    sweep, schedule, m, batch = key

    def mean(name, summaries):
        return statistics.mean(s[name] for s in summaries)

    def over_rounds(name):
        return statistics.median(mean(name, both) for both in rounds)

    virtual = rounds[0][0]["virtual"]
    gpipe, own = formulas(schedule, m, virtual)
    step = min(mean("step_s", both) for both in rounds)
    return {"sweep": sweep, "schedule": schedule, "stages": STAGES, "microbatches": m, "microbatch_size": batch // m,
            "batch": batch, "virtual_stages": virtual, "bubble_measured": over_rounds("bubble"),
            "bubble_formula": gpipe, "bubble_formula_schedule": own,
            "bubble_per_stage": [statistics.median(both[r]["bubble"] for both in rounds) for r in range(STAGES)],
            "busy_s_per_stage": [statistics.median(both[r]["busy_s"] for both in rounds) for r in range(STAGES)],
            "bubble_rounds": [mean("bubble", both) for both in rounds], "busy_s": over_rounds("busy_s"),
            "idle_s": over_rounds("idle_s"), "compute_cpu_share": over_rounds("cpu_share"),
            "queued_share": over_rounds("queued"), "p2p_post_s": over_rounds("post_s"),
            "p2p_wait_s": over_rounds("wait_s"),
            "p2p_hop_s": hops[batch // m][1], "step_s": step, "samples_per_s": batch / step}


def worker(args):
    import torch

    torch.set_num_threads(1)
    import hvdkit.torch.pipeline as pp
    from hvdkit.torch.pipeline import group

    pp.init(STAGES)
    import hvdkit.torch as hvd

    group.init_process_group(hvd)
    runs = configurations(args)
    hops = {rows: p2p_hop(args, rows) for rows in sorted({b // m for _, _, m, b in runs})}
    batches = sorted({b for *_, b in runs})
    dp_model, alone = make_model(args), make_model(args)
    dp = (dp_model, hvd.DistributedOptimizer(torch.optim.SGD(dp_model.parameters(), lr=1e-4),
                                             dp_model.named_parameters()))
    alone = (alone, torch.optim.SGD(alone.parameters(), lr=1e-4))
    rounds, baselines = {key: [] for key in runs}, {}
    for r in range(args.repeats):
        for key in runs:
            both = hvd.allgather_object(run_pipeline(args, *key[1:]), name=f"bench.pipeline.{r}.{key}")
            rounds[key].append(both)
            if hvd.rank() == 0:
                print(f"round {r + 1}/{args.repeats} {key[0]:<17}{key[1]:<12} M={key[2]:<3} batch {key[3]:<5} step "
                      f"{1000 * min(s['step_s'] for s in both):7.1f} ms  bubble "
                      f"{100 * statistics.mean(s['bubble'] for s in both):5.1f}%", flush=True)
        for name, took in (baseline_round(args, hvd, batches, dp, alone) if args.baselines else {}).items():
            baselines.setdefault(name, []).append(took)
    if hvd.rank() == 0:
        records = [pipeline_record(key, rounds[key], hops) for key in runs]
        records += [{"sweep": "baseline", "schedule": schedule, "stages": 1, "microbatches": 1,
                     "microbatch_size": batch, "batch": batch, "bubble_measured": None, "bubble_formula": None,
                     "step_s": min(times), "samples_per_s": batch / min(times)}
                    for (schedule, batch), times in sorted(baselines.items())]
        with open(args.result, "w") as f:
            json.dump({"records": records, "p2p_hop_s": {str(rows): {"fastest": a, "median": b}
                                                         for rows, (a, b) in hops.items()}}, f)


# ---------------------------------------------------------------- driver: table, summary, plot ---
def overhead(records):
    """Per schedule, at the fixed batch: the least-squares slope against M of the step, of a stage's compute
    and of its idle time (seconds per extra micro-batch)."""
    out = {}
    for schedule in dict.fromkeys(r["schedule"] for r in records if r["sweep"] == "fixed-batch"):
        rows = [r for r in records if r["sweep"] == "fixed-batch" and r["schedule"] == schedule]
        if len(rows) < 2:
            continue
        ms = [r["microbatches"] for r in rows]
        out[schedule] = {f"{name}_per_microbatch": statistics.linear_regression(ms, [r[name] for r in rows]).slope
                         for name in ("step_s", "busy_s", "idle_s")}
        out[schedule].update(batch=rows[0]["batch"], microbatches=ms)
    return out


def target(records):
    """{M: (measured, formula, met)} of GPipe's fixed-micro-batch bubble at M >= 4."""
    return {r["microbatches"]: (r["bubble_measured"], r["bubble_formula"],
                                abs(r["bubble_measured"] - r["bubble_formula"]) <= TARGET_POINTS)
            for r in records
            if r["sweep"] == "fixed-microbatch" and r["schedule"] == "gpipe" and r["microbatches"] >= 4}


def percent(value):
    return "" if value is None else f"{100 * value:.1f}%"


def print_tables(result, args):
    records = result["records"]
    print(f"\n2 stages, {args.layers} x Linear({args.width}) + ReLU, 1 thread per rank; bubble: median of "
          f"{args.repeats} rounds")
    print(f"{'sweep':<17}{'schedule':<12}{'M':>3}{'mb':>5}{'batch':>6}{'step ms':>9}{'samples/s':>10}{'busy ms':>9}"
          f"{'idle ms':>9}{'post':>6}{'wait':>7}{'bubble':>8}{'GPipe':>8}{'own':>7}{'cpu':>6}{'queued':>8}")
    for r in records:
        if r["sweep"] in SWEEPS:
            print(f"{r['sweep']:<17}{r['schedule']:<12}{r['microbatches']:>3}{r['microbatch_size']:>5}{r['batch']:>6}"
                  f"{1000 * r['step_s']:>9.1f}{r['samples_per_s']:>10.0f}{1000 * r['busy_s']:>9.1f}"
                  f"{1000 * r['idle_s']:>9.1f}{1000 * r['p2p_post_s']:>6.1f}{1000 * r['p2p_wait_s']:>7.1f}"
                  f"{percent(r['bubble_measured']):>8}{percent(r['bubble_formula']):>8}"
                  f"{percent(r['bubble_formula_schedule']):>7}{r['compute_cpu_share']:>6.2f}"
                  f"{percent(r['queued_share']):>8}")
    print("\np2p hop (fastest / median): " + ", ".join(f"{rows} x {args.width}: {1000 * h['fastest']:.2f} / "
                                                        f"{1000 * h['median']:.2f} ms"
                                                        for rows, h in result["p2p_hop_s"].items()))
    for schedule, o in result["overhead"].items():
        print(f"one more micro-batch at batch {o['batch']}, {schedule}: "
              f"step +{1000 * o['step_s_per_microbatch']:.1f} ms "
              f"(a stage's compute +{1000 * o['busy_s_per_microbatch']:.1f}, its idle "
              f"{1000 * o['idle_s_per_microbatch']:+.1f})")
    for m, (measured, formula, met) in result["target"].items():
        print(f"target, GPipe M={m}: {percent(measured)} against {percent(formula)}: {'met' if met else 'MISSED'}")
    if not any(r["sweep"] == "baseline" for r in records):
        return
    print(f"\n{'batch':>6}{'best pipeline':>26}{'samples/s':>10}{'data-parallel':>15}{'single':>8}{'pipe/dp':>9}")
    for batch in sorted({r["batch"] for r in records}):
        rows = [r for r in records if r["batch"] == batch]
        best = max((r for r in rows if r["sweep"] in SWEEPS), key=lambda r: r["samples_per_s"])
        base = {r["schedule"]: r["samples_per_s"] for r in rows if r["sweep"] == "baseline"}
        print(f"{batch:>6}{best['schedule'] + ' M=' + str(best['microbatches']):>26}{best['samples_per_s']:>10.0f}"
              f"{base['data-parallel']:>15.0f}{base['single']:>8.0f}"
              f"{best['samples_per_s'] / base['data-parallel']:>8.2f}x")


def plot(result, path):
    """The figure of a result (``--json``'s content); GPipe runs of other widths merged in under
    ``gpipe_target_runs`` are drawn on the bubble panel too."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = result["records"]
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.5))
    pipes = [r for r in records if r["sweep"] in SWEEPS]
    schedules = list(dict.fromkeys(r["schedule"] for r in pipes))

    def rows(sweep, schedule):
        return sorted((r for r in pipes if r["sweep"] == sweep and r["schedule"] == schedule),
                      key=lambda r: r["microbatches"])

    ms = sorted({r["microbatches"] for r in pipes})
    gpipe = [100 * (STAGES - 1) / (m + STAGES - 1) for m in ms]
    left.plot(ms, gpipe, "k--", label="GPipe (K-1)/(M+K-1)")
    left.fill_between(ms, [g - 100 * TARGET_POINTS for g in gpipe], [g + 100 * TARGET_POINTS for g in gpipe],
                      color="k", alpha=0.08, label="target: within 10 points")
    for i, schedule in enumerate(schedules):
        fixed, batch = rows("fixed-microbatch", schedule), rows("fixed-batch", schedule)
        left.plot([r["microbatches"] for r in fixed], [100 * r["bubble_measured"] for r in fixed], "o-",
                  color=f"C{i}", label=f"{schedule}, {fixed[0]['microbatch_size']} samples/micro-batch")
        left.plot([r["microbatches"] for r in batch], [100 * r["bubble_measured"] for r in batch], "x:",
                  color=f"C{i}", alpha=0.6)
        middle.plot([r["microbatches"] for r in batch], [1000 * r["step_s"] for r in batch], "o-", color=f"C{i}",
                    label=f"{schedule}: step")
        middle.plot([r["microbatches"] for r in batch], [1000 * r["busy_s"] for r in batch], "x:", color=f"C{i}",
                    label=f"{schedule}: a stage's compute")
    for run, marker in zip(result.get("gpipe_target_runs", []), "s^v"):
        rows = [r for r in run["records"] if r["schedule"] == "gpipe" and r["sweep"] == "fixed-microbatch"]
        left.plot([r["microbatches"] for r in rows], [100 * r["bubble_measured"] for r in rows], marker + "--",
                  color="k", alpha=0.5, label=f"gpipe, width {run['config']['width']} (own run)")
    left.set_title("measured bubble (o: fixed micro-batch, x: fixed batch)")
    middle.set_title(f"fixed batch of {batch[0]['batch']}: step time against M")
    middle.set_ylabel("ms")
    for axis in (left, middle):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("micro-batches M")
        axis.legend(fontsize=7)
    left.set_ylabel("bubble (% of the schedule's step)")
    batches = sorted({r["batch"] for r in records})
    best = [max(r["samples_per_s"] for r in pipes if r["batch"] == b) for b in batches]
    right.plot(batches, best, "o-", label="2 stages (best schedule and M)")
    for schedule in BASELINES:
        base = sorted((r["batch"], r["samples_per_s"]) for r in records if r["schedule"] == schedule)
        right.plot([b for b, _ in base], [s for _, s in base], "s--", label=schedule)
    right.set_xscale("log", base=2)
    right.set_xlabel("global batch (samples)")
    right.set_ylabel("samples/s")
    right.set_title("2 ranks: pipeline against data parallel")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def cpu_idle(seconds=2.0):
    """The machine's idle share of CPU time over the next ``seconds`` (Linux /proc/stat), None where unknown."""
    def sample():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, all

    try:
        (idle0, all0), _, (idle1, all1) = sample(), time.sleep(seconds), sample()
    except (OSError, ValueError, IndexError):
        return None
    return (idle1 - idle0) / max(1, all1 - all0)


def wait_idle(limit):
    """Wait up to ``limit`` seconds for a quiet machine; returns (seconds waited, last idle share)."""
    started, idle = time.time(), None
    while limit > 0:
        idle = cpu_idle()
        if idle is None or idle >= 0.9 or time.time() - started >= limit:
            break
    return time.time() - started, idle


def driver(args):
    waited, idle = wait_idle(args.wait_idle)
    started, load_before = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.json")
        cmd = [sys.executable, "-m", "hvdkit", "run", "-np", str(STAGES), "--", sys.executable,
               os.path.abspath(__file__), "--worker", "--result", path, "--width", str(args.width),
               "--layers", str(args.layers), "--microbatch-size", str(args.microbatch_size), "--batch", str(args.batch),
               "--microbatches", args.microbatches, "--schedules", args.schedules, "--steps", str(args.steps),
               "--repeats", str(args.repeats), "--sweeps", args.sweeps,
               "--baselines" if args.baselines else "--no-baselines"]
        code = subprocess.call(cmd, cwd=REPO)
        if code != 0 or not os.path.exists(path):
            print(f"pipeline: the benchmark job failed with exit code {code}", file=sys.stderr)
            return code or 1
        with open(path) as f:
            result = json.load(f)
    result["overhead"] = overhead(result["records"])
    result["target"] = {str(m): v for m, v in target(result["records"]).items()}
    print_tables(result, args)
    if args.json_path:
        machine = {"cpus": os.cpu_count(), "load_average_start": load_before, "load_average_end": os.getloadavg(),
                   "wall_s": time.time() - started, "waited_for_idle_s": waited, "cpu_idle_at_start": idle}
        config = {k: getattr(args, k) for k in ("width", "layers", "microbatch_size", "batch", "steps", "repeats")}
        with open(args.json_path, "w") as f:
            json.dump({"machine": machine, "config": dict(config, stages=STAGES), "command": " ".join(sys.argv),
                       **result}, f, indent=1)
    if args.plot_path:
        plot(result, args.plot_path)
    return 0


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
