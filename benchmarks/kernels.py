"""Time hvdkit's kernels against plain torch doing the same work.

For each op: hvdkit ms, plain-torch ms, ratio (torch / hvdkit), effective GB/s
(bytes each op must move at least, over its time) and that bandwidth as a
fraction of a plain float32 copy measured in the same run.

    python benchmarks/kernels.py                      # CPU, 1 thread, 25.6 M floats
    python benchmarks/kernels.py --threads 2 --json kernels.json
    python benchmarks/kernels.py --device cuda        # on a GPU (benchmarks/gpu_check.sh)
"""
import argparse
import json
import statistics
import sys
import time

import torch

from hvdkit.kernels import torch_ops as ops
from hvdkit.kernels import torch_reference as ref

BLOCK = 1024
RANKS = 4  # payloads summed by the decode benchmarks


class Timer:
    """Median times of callables run in turn (so load from other processes
    hits each of them alike), with device synchronisation on CUDA.

    On CUDA each sample is the mean of ``calls`` back-to-back calls between two
    events: the GPU's time per call, with the host's launch overhead hidden
    behind the previous call's kernels (a single call would mostly time Python
    and the launch, not the kernel)."""

    def __init__(self, device, repeats, calls=1):
        self.device = torch.device(device)
        self.repeats = repeats
        self.calls = calls

    def once(self, fn):
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(self.calls):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / self.calls
        begin = time.perf_counter()
        fn()
        return (time.perf_counter() - begin) * 1e3

    def medians(self, *fns):
        for fn in fns:
            fn()  # warm up (allocator, caches, lazy initialisation)
        times = [[] for _ in fns]
        for _ in range(self.repeats):
            for fn, samples in zip(fns, times):
                samples.append(self.once(fn))
        return [statistics.median(samples) for samples in times]


def torch_packbits(flags):
    return (flags.view(-1, 8).to(torch.uint8) * torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8,
                                                             device=flags.device)).sum(1, dtype=torch.uint8)


def torch_sign_ef(x, residual):
    c = x + residual
    scales = c.abs().view(-1, BLOCK).mean(dim=1)
    positive = c >= 0
    per_element = scales.repeat_interleave(BLOCK)
    residual.copy_(c - torch.where(positive, per_element, -per_element))
    return torch_packbits(positive), scales


def torch_quantize(x):
    blocks = x.view(-1, BLOCK)
    absmax = blocks.abs().amax(dim=1)
    return (blocks * (127.0 / absmax)[:, None]).round().clamp(-127, 127).to(torch.int8), absmax / 127.0


def torch_cast(x, dtype):
    return x.to(dtype), ~torch.isfinite(x).all()


def cases(n, device, width_divisor):
    """(op, elements, bytes moved, hvdkit fn, plain-torch fn) for each benchmark."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=g).to(device)
    residual = (torch.randn(n, generator=g) * 0.1).to(device)
    k = n // 100

    tensors = [torch.randn(s, generator=g).to(device) for s in ref.resnet50_shapes(width_divisor)]
    views = [t.view(-1) for t in tensors]
    packed = sum(t.numel() for t in tensors)
    flat16 = ops.pack(tensors, torch.float16)
    flat32 = torch.empty(packed, device=device)
    sizes = [t.numel() for t in tensors]
    half = torch.empty(n, dtype=torch.float16, device=device)
    bf16 = torch.empty(n, dtype=torch.bfloat16, device=device)

    q, scales = ops.quantize_int8(x, BLOCK)
    sign_payloads = [ops.sign_ef(x, residual.clone(), BLOCK) for _ in range(RANKS)]
    bits = torch.stack([b for b, _ in sign_payloads])
    sign_scales = torch.stack([s for _, s in sign_payloads])
    out = torch.zeros(n, device=device)
    pairs = [ops.topk_ef(x, residual.clone(), k) for _ in range(RANKS)]
    indices = torch.cat([i for i, _ in pairs])
    values = torch.cat([v for _, v in pairs])
    long_indices = indices.long()

    def torch_unpack():
        for t, piece in zip(tensors, flat16.split(sizes)):
            t.copy_(piece.view_as(t))

    def torch_pack_into():
        torch.cat(views, out=flat32)
        flat16.copy_(flat32)

    def torch_cast_into(y):
        # The cheapest plain-torch NaN/Inf check (torch.isfinite(x).all() is
        # ~20x slower on CPU); it also flags finite sums that overflow.
        y.copy_(x)
        return ~torch.isfinite(x.sum())

    return [
        # Outputs go to reused buffers (out=) on both sides: a fresh large CPU
        # buffer costs page faults that can exceed the work itself. The
        # "new buffer" row shows that cost, paid by both sides alike.
        ("cast fp32->fp16", n, 6 * n, lambda: ops.cast(x, torch.float16, out=half), lambda: torch_cast_into(half)),
        ("cast fp32->bf16", n, 6 * n, lambda: ops.cast(x, torch.bfloat16, out=bf16), lambda: torch_cast_into(bf16)),
        (f"pack {len(tensors)} tensors ->fp16", packed, 6 * packed,
         lambda: ops.pack(tensors, torch.float16, out=flat16), torch_pack_into),
        (f"pack {len(tensors)} ->fp16, new buffer", packed, 6 * packed,
         lambda: ops.pack(tensors, torch.float16), lambda: torch.cat(views).to(torch.float16)),
        (f"unpack fp16 -> {len(tensors)} tensors", packed, 6 * packed,
         lambda: ops.unpack(flat16, tensors), torch_unpack),
        ("int8 quantize (block 1024)", n, 5 * n, lambda: ops.quantize_int8(x, BLOCK), lambda: torch_quantize(x)),
        ("int8 dequantize", n, 5 * n, lambda: ops.dequantize_int8(q, scales, BLOCK, out=out),
         lambda: torch.mul(q.view(-1, BLOCK).float(), scales[:, None], out=out.view(-1, BLOCK))),
        ("1-bit EF sign (block 1024)", n, 12 * n + n // 8, lambda: ops.sign_ef(x, residual, BLOCK),
         lambda: torch_sign_ef(x, residual)),
        (f"1-bit decode, sum of {RANKS} ranks", n, 4 * n + RANKS * n // 8,
         lambda: ops.sign_decode(bits, sign_scales, n, BLOCK, out=out),
         lambda: ref.sign_decode(bits, sign_scales, n, BLOCK, out=out)),
        ("top-k 1% EF exact", n, 12 * n, lambda: ops.topk_ef(x, residual, k),
         lambda: ref.topk_ef(x, residual, k)),
        ("top-k 1% EF approx", n, 12 * n, lambda: ops.topk_ef(x, residual, k, approx=True),
         lambda: ref.topk_ef(x, residual, k)),
        (f"scatter-add {RANKS} ranks x 1%", n, 16 * indices.numel(),
         lambda: ops.scatter_add(indices, values, out),
         lambda: out.index_add_(0, long_indices, values)),
        ("random-k 1%", n, 12 * k, lambda: ops.randomk(x, k, seed=1), lambda: ref.randomk(x, k, seed=1)),
    ]


def run(args):
    device = torch.device(args.device)
    if device.type == "cuda" and not ops.backends()["cuda"]:
        sys.exit("benchmarks/kernels.py: hvdkit has no CUDA kernels here (see hvdkit.ops.backends())")
    torch.set_num_threads(args.threads)
    args.n -= args.n % BLOCK  # the plain-torch versions view the data as whole blocks
    calls = args.calls if args.calls is not None else (10 if device.type == "cuda" else 1)
    timer = Timer(device, args.repeats, calls)
    width_divisor = max(1, round((25_557_032 / args.n) ** 0.5))

    src = torch.randn(args.n, device=device)
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)

    copy_ms = timer.medians(copy)[0]
    state = ops.backends()
    where = f"{device.type}, {args.threads} thread(s), isa {state['cpu_isa']}" if device.type == "cpu" else str(
        torch.cuda.get_device_name(device))
    per_sample = f", each the mean of {calls} back-to-back calls" if calls > 1 else ""
    print(f"# hvdkit kernels vs plain torch: {where}; n = {args.n:,}; median of {args.repeats}{per_sample}")
    print(f"# plain float32 copy of n: {copy_ms:.3f} ms = {8 * args.n / copy_ms / 1e6:.1f} GB/s (read + write); "
          "% copy compares with the copy timed alongside each op")
    header = f"| {'op':<34} | {'n':>10} | {'hvdkit ms':>9} | {'torch ms':>9} | {'ratio':>7} | {'GB/s':>7} | {'% copy':>6} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    records = []
    for name, n, moved, ours, theirs in cases(args.n, device, width_divisor):
        if args.ops and not any(word in name for word in args.ops):
            continue
        copy_ms, ours_ms, theirs_ms = timer.medians(copy, ours, theirs)
        gbps = moved / ours_ms / 1e6
        copy_gbps = 8 * args.n / copy_ms / 1e6
        record = {"op": name, "n": n, "device": device.type, "hvdkit_ms": round(ours_ms, 4),
                  "baseline_ms": round(theirs_ms, 4), "ratio": round(theirs_ms / ours_ms, 2),
                  "gbps": round(gbps, 2), "copy_fraction": round(gbps / copy_gbps, 3)}
        records.append(record)
        print(f"| {name:<34} | {n:>10,} | {ours_ms:>9.3f} | {theirs_ms:>9.2f} | {record['ratio']:>6.1f}x | "
              f"{gbps:>7.1f} | {100 * record['copy_fraction']:>5.0f}% |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=25_600_000, help="elements per gradient (default 25.6 M)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for hvdkit and torch (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per op; the median is reported")
    parser.add_argument("--calls", type=int, help="CUDA: back-to-back calls per sample (default 10; 1 on CPU)")
    parser.add_argument("--ops", nargs="*", help="only ops whose name contains one of these words")
    parser.add_argument("--json", help="also write the records to this JSON file")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
