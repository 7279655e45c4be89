"""One optimizer step on one GPU: Horovod's DistributedOptimizer against
hvdkit's under each compression, in the same process, with host
synchronisations counted.

    python benchmarks/gpu_step.py [--steps 20] [--warmup 5] [--rounds 3] [--batch 32]
                                  [--image 224] [--json PATH]
    python benchmarks/gpu_step.py --device cpu --small --steps 3 --warmup 1   # dry run, no GPU

Runs as one Horovod rank: plain ``python``, ``horovodrun -np 1 -H localhost:1
python ...`` or ``mpirun -np 1 python ...``. Each variant trains its own
ResNet-50 (built here, no torchvision: 25.56 M parameters in 161 tensors) on
synthetic data with SGD: plain torch (no Horovod: what the model costs alone),
``horovod.torch.DistributedOptimizer``, and ``hvdkit.torch.DistributedOptimizer``
for each ``--compressions`` spec, plus ``nonfinite="pass"`` for each
``--pass-compressions`` spec. All variants are built first, warmed up, and
then timed in ``--rounds`` rounds, taking turns, so that clock or thermal
drift hits all alike; a row's ms/step is the median over rounds of (time of
``--steps`` steps between two ``torch.cuda.synchronize()``) / steps.
"vs horovod" = Horovod's ms/step / the row's (above 1: faster than Horovod).

Host syncs: after warm-up, ``--sync-steps`` steps run under
``torch.cuda.set_sync_debug_mode("warn")``; every "called a synchronizing
CUDA operation" raised inside ``loss.backward()`` and ``optimizer.step()`` is
counted, per step, whether it arrives as a Python warning or as c10's line on
stderr (see ``SyncCounter``). The plain-torch row is what the model itself
syncs; "opt syncs" is a row's count minus that. torch sees only the syncs it
makes itself (``.item()``, ``bool(t)``, ``.cpu()``, ``nonzero``, stream
synchronisation, ...): Horovod's C++ background thread waiting for the GPU,
and the Python thread waiting for that thread in ``hvd.synchronize``, are
not counted (the timings include them). "hvdkit host_syncs" is hvdkit's own
count, ``optimizer.last_step_stats.host_syncs`` averaged over the same steps
("n/a" where hvdkit does not report it). Not measured on CPU ("n/a").

At one rank, stock Horovod registers no gradient hooks and allreduces every
gradient inside ``step()``, and hvdkit applies the gradients without
compression or exchange; the "compressed" column says whether hvdkit's
compressor ran (``last_step_stats.compressed_bytes > 0``).

``--json PATH`` writes ``{"config": {...}, "records": [...]}``, one record per
row with keys ``variant, impl, compression, nonfinite, ms_per_step,
round_ms, vs_horovod, syncs_per_step, opt_syncs_per_step,
hvdkit_host_syncs, compressed, error``.
"""
import argparse
import dataclasses
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

SYNC_WARNING = "synchronizing CUDA operation"  # torch's text in set_sync_debug_mode("warn")


# ------------------------------------------------------------------ model ----
def conv_bn(cin, cout, kernel, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout))


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3), so the gradient layout is ResNet-50's."""

    def __init__(self, cin, mid, stride):
        super().__init__()
        cout = 4 * mid
        self.body = nn.Sequential(conv_bn(cin, mid, 1), nn.ReLU(inplace=True), conv_bn(mid, mid, 3, stride),
                                  nn.ReLU(inplace=True), conv_bn(mid, cout, 1))
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


def resnet(blocks=(3, 4, 6, 3), width=64, classes=1000):
    """ResNet-50 by default (25,557,032 parameters in 161 tensors); torchvision may not be installed."""
    layers = [conv_bn(3, width, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    cin = width
    for stage, count in enumerate(blocks):
        mid = width * 2**stage
        for i in range(count):
            layers.append(Bottleneck(cin, mid, 2 if i == 0 and stage > 0 else 1))
            cin = 4 * mid
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def build_model(args, device):
    """The same initial weights for every variant (same seed)."""
    torch.manual_seed(0)
    model = resnet((1, 1, 1, 1), 8, 10) if args.small else resnet()
    return model.to(device)


# --------------------------------------------------------------- variants ----
@dataclasses.dataclass
class Variant:
    """One row: an optimizer over its own model, and what was measured."""

    impl: str  # "torch", "horovod" or "hvdkit"
    compression: str = "none"
    nonfinite: str = "skip"
    model: nn.Module = None
    optimizer: torch.optim.Optimizer = None
    round_ms: list = dataclasses.field(default_factory=list)
    syncs_per_step: float = None  # torch sync warnings per step (backward + step)
    hvdkit_host_syncs: float = None  # hvdkit's own count per step
    compressed: bool = None
    error: str = None

    @property
    def name(self):
        if self.impl == "hvdkit":
            suffix = ", pass" if self.nonfinite == "pass" else ""
            return f"hvdkit {self.compression}{suffix}"
        return "torch (no Horovod)" if self.impl == "torch" else "horovod"

    @property
    def ms_per_step(self):
        return statistics.median(self.round_ms) if self.round_ms else None


def make_variants(args):
    variants = [Variant("torch"), Variant("horovod")]
    variants += [Variant("hvdkit", spec) for spec in args.compressions]
    variants += [Variant("hvdkit", spec, "pass") for spec in args.pass_compressions]
    return variants


def build(variant, args, device):
    """A fresh model per variant: Horovod's and hvdkit's gradient hooks stay on the parameters they wrap."""
    import horovod.torch as horovod

    import hvdkit.torch as hvdkit

    model = build_model(args, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    named = model.named_parameters()
    if variant.impl == "horovod":
        optimizer = horovod.DistributedOptimizer(optimizer, named_parameters=named)
    elif variant.impl == "hvdkit":
        optimizer = hvdkit.DistributedOptimizer(optimizer, named_parameters=named, compression=variant.compression,
                                                nonfinite=variant.nonfinite)
    variant.model, variant.optimizer = model, optimizer


# ------------------------------------------------------------ measurement ----
def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward(variant, data, target):
    variant.optimizer.zero_grad()
    return F.cross_entropy(variant.model(data), target)


def train_step(variant, data, target):
    forward(variant, data, target).backward()
    variant.optimizer.step()


class SyncCounter:
    """Counts torch's sync warnings raised inside the block.

    torch turns a C++ warning into a Python warning only inside its own Python bindings (``.item()``,
    ``bool(t)``, ``loss.backward()``, which replays the autograd threads' warnings); a call through
    ``torch.ops`` (hvdkit's kernels) leaves it to c10's handler, which prints it on stderr. So both are
    counted: Python warnings recorded, and fd 2 redirected to a file whose matching lines are counted
    (the other lines are written back to stderr)."""

    def __init__(self, pattern=SYNC_WARNING):
        self.pattern = pattern
        self.count = 0

    def __enter__(self):
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile()
        self._saved_fd = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        self._warnings = warnings.catch_warnings(record=True)
        self._caught = self._warnings.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._warnings.__exit__(*exc)
        sys.stderr.flush()
        os.dup2(self._saved_fd, 2)
        os.close(self._saved_fd)
        self._file.seek(0)
        lines = self._file.read().decode(errors="replace").splitlines(keepends=True)
        self._file.close()
        self.count = sum(self.pattern in str(w.message) for w in self._caught)
        self.count += sum(self.pattern in line for line in lines)
        sys.stderr.write("".join(line for line in lines if self.pattern not in line))
        for w in self._caught:
            if self.pattern not in str(w.message):
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        return False


def count_syncs(variant, data, target, steps, device):
    """Sync warnings inside backward + step per step (None on CPU), and hvdkit's host_syncs per step."""
    counts, own = [], []
    for _ in range(steps):
        loss = forward(variant, data, target)
        synchronize(device)  # the forward's work is done before the counting starts
        with SyncCounter() as counter:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            try:
                loss.backward()
                variant.optimizer.step()
            finally:
                if device.type == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
        counts.append(counter.count)
        own.append(getattr(getattr(variant.optimizer, "last_step_stats", None), "host_syncs", None))
    if device.type == "cuda":
        variant.syncs_per_step = sum(counts) / steps
    if own and None not in own:
        variant.hvdkit_host_syncs = sum(own) / steps
    stats = getattr(variant.optimizer, "last_step_stats", None)
    if stats is not None:
        variant.compressed = stats.compressed_bytes > 0


def time_round(variant, data, target, steps, device):
    """ms per step over ``steps`` back-to-back steps, synchronising only around the loop."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(variant, data, target)
    synchronize(device)
    variant.round_ms.append((time.perf_counter() - start) * 1e3 / steps)


def guarded(variant, fn, *args):
    """Run one phase; a failure marks the row and the others go on."""
    if variant.error is not None:
        return
    try:
        fn(variant, *args)
    except Exception as exc:  # noqa: BLE001 - reported in the table, the other variants still run
        variant.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        variant.model = variant.optimizer = None
        print(f"gpu_step: {variant.name} failed: {variant.error}", file=sys.stderr, flush=True)


def warm_up(variant, data, target, steps):
    for _ in range(steps):
        train_step(variant, data, target)


def run(args, device):
    data = torch.randn(args.batch, 3, args.image, args.image, device=device)
    target = torch.randint(0, 10 if args.small else 1000, (args.batch,), device=device)
    variants = make_variants(args)
    for v in variants:
        guarded(v, build, args, device)
        guarded(v, warm_up, data, target, args.warmup)
        guarded(v, count_syncs, data, target, args.sync_steps, device)
        synchronize(device)
    for _ in range(args.rounds):
        for v in variants:
            guarded(v, time_round, data, target, args.steps, device)
    for v in variants:
        v.model = v.optimizer = None
    gc.collect()
    return variants


# ----------------------------------------------------------------- report ----
def records(variants):
    base = {v.impl: v for v in variants if v.impl in ("torch", "horovod")}
    horovod_ms = base["horovod"].ms_per_step
    torch_syncs = base["torch"].syncs_per_step
    out = []
    for v in variants:
        ms = v.ms_per_step
        out.append({
            "variant": v.name, "impl": v.impl, "compression": v.compression, "nonfinite": v.nonfinite,
            "ms_per_step": ms, "round_ms": v.round_ms,
            "vs_horovod": horovod_ms / ms if ms and horovod_ms else None,
            "syncs_per_step": v.syncs_per_step,
            "opt_syncs_per_step": (v.syncs_per_step - torch_syncs
                                   if v.syncs_per_step is not None and torch_syncs is not None else None),
            "hvdkit_host_syncs": v.hvdkit_host_syncs, "compressed": v.compressed, "error": v.error,
        })
    return out


def fmt(value, spec):
    return "n/a" if value is None else format(value, spec)


def print_table(rows):
    print("| variant | ms/step | vs horovod | syncs/step | opt syncs/step | hvdkit host_syncs | compressed |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if r["error"]:
            print(f"| {r['variant']} | FAILED: {r['error']} | | | | | |")
            continue
        compressed = "" if r["impl"] != "hvdkit" else {True: "yes", False: "no", None: "n/a"}[r["compressed"]]
        hvdkit_syncs = fmt(r["hvdkit_host_syncs"], ".2f") if r["impl"] == "hvdkit" else ""
        print(f"| {r['variant']} | {fmt(r['ms_per_step'], '.2f')} | {fmt(r['vs_horovod'], '.3f')} "
              f"| {fmt(r['syncs_per_step'], '.2f')} | {fmt(r['opt_syncs_per_step'], '.2f')} "
              f"| {hvdkit_syncs} | {compressed} |")


def config(args, device, world):
    import horovod
    import horovod.torch as horovod_torch

    params = build_model(args, "cpu")
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "horovod": horovod.__version__,
        "horovod_nccl": bool(horovod_torch.nccl_built()), "horovod_cuda": bool(horovod_torch.cuda_built()),
        "world_size": world, "model": "resnet-small" if args.small else "resnet50",
        "parameters": sum(p.numel() for p in params.parameters()),
        "tensors": len(list(params.parameters())), "batch": args.batch, "image": args.image,
        "warmup": args.warmup, "steps": args.steps, "rounds": args.rounds, "sync_steps": args.sync_steps,
    }
    return info


# ------------------------------------------------------------------- main ----
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    p.add_argument("--small", action="store_true", help="a tiny ResNet (8 channels, 1 block a stage, 32x32, "
                                                        "10 classes) for dry runs")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image", type=int, help="image side (default 224, 32 with --small)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per variant first")
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant per round")
    p.add_argument("--rounds", type=int, default=3, help="timing rounds, variants taking turns; median kept")
    p.add_argument("--sync-steps", type=int, default=3, help="steps counted under set_sync_debug_mode")
    p.add_argument("--compressions", default="none,fp16,onebit,topk:0.01", help="hvdkit specs, comma-separated")
    p.add_argument("--pass-compressions", default="none,topk:0.01",
                   help='hvdkit specs also run with nonfinite="pass" (empty: none)')
    p.add_argument("--json", help="also write the config and records to this JSON file")
    args = p.parse_args(argv)
    args.compressions = [s for s in args.compressions.split(",") if s]
    args.pass_compressions = [s for s in args.pass_compressions.split(",") if s]
    if args.image is None:
        args.image = 32 if args.small else 224
    if min(args.batch, args.steps, args.rounds, args.sync_steps) < 1 or args.warmup < 0:
        p.error("--batch, --steps, --rounds and --sync-steps must be >= 1, --warmup >= 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    import hvdkit.torch as hvd

    hvd.init()  # hvdkit's Horovod settings, the same for both optimizers
    if hvd.size() != 1:
        sys.exit(f"gpu_step: runs as one rank, got {hvd.size()}")
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", hvd.local_rank())
        torch.cuda.set_device(device)
    info = config(args, device, hvd.size())
    print(f"# {info['device']}, torch {info['torch']}, horovod {info['horovod']} (nccl: {info['horovod_nccl']}), "
          f"{info['model']} ({info['parameters']:,} parameters, {info['tensors']} tensors), batch {args.batch} x "
          f"{args.image}x{args.image}, {args.warmup} warm-up, {args.rounds} rounds x {args.steps} timed steps, "
          f"{args.sync_steps} steps counted", flush=True)
    rows = records(run(args, device))
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": info, "records": rows}, f, indent=2)
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
