"""An independent oracle: the mathematics of each compressor and each exchange route, in numpy.

Nothing here calls hvdkit. Given every rank's gradients it predicts what
hvdkit's exchange must produce: the averaged gradient of each step and every
error-feedback residual after it. It restates the algorithms as their
docstrings and papers define them (float32 arithmetic, sums in rank order,
round half to even), so where hvdkit's arithmetic is exact the predictions
are bit for bit; where the order of a sum is Horovod's to choose, tests
bound the difference by the number format.

Routes: ``ring`` (dense allreduce), ``flat`` (every rank's payload allreduced
or gathered), ``two_phase`` (chunk j summed on rank j, compressed again with a
second residual, gathered), ``sharded`` (node sums, one share per local rank
exchanged between nodes by ``flat`` or ``two_phase``, shared back in the node).
"""
import math

import numpy as np

F32 = np.float32
_MASK64 = (1 << 64) - 1


# --- the compressors: c (float32, 1-D) -> what one rank's payload decodes to --------------------------
def fp16(c):
    return c.astype(np.float16).astype(F32)


def bf16(c):
    """Round to nearest even on the upper 16 bits (bfloat16), back to float32."""
    bits = c.astype(F32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return rounded.view(F32)


def _blocks(c, block):
    n = c.size
    padded = np.zeros(-(-n // block) * block, F32)
    padded[:n] = c
    return padded.reshape(-1, block)


def int8(c, block):
    """Blockwise absmax: q = round_half_even(c * (127 / absmax)), decoded q * (absmax / 127)."""
    if c.size == 0:
        return c.copy()
    blocks = _blocks(c, block)
    absmax = np.abs(blocks).max(axis=1).astype(F32)
    with np.errstate(divide="ignore"):
        ratio = F32(127) / absmax
    inverse = np.where((absmax > 0) & np.isfinite(ratio), ratio, F32(0)).astype(F32)
    q = np.clip(np.rint(blocks * inverse[:, None]), -127, 127).astype(F32)
    scale = (absmax / F32(127)).astype(F32)
    return (q * scale[:, None]).reshape(-1)[:c.size].astype(F32)


def onebit(c, block):
    """sign(c) (0 counts as +) times the block's mean |c|."""
    if c.size == 0:
        return c.copy()
    n = c.size
    sums = _blocks(np.abs(c), block).astype(np.float64).sum(axis=1)
    lengths = np.minimum(block, n - np.arange(sums.size) * block)
    scale = (sums / lengths).astype(F32)
    per_element = np.repeat(scale, block)[:n]
    return np.where(c >= 0, per_element, -per_element).astype(F32)


def keep_count(ratio, n):
    return min(n, max(1, math.ceil(ratio * n)))


def topk(c, ratio):
    """c with all but its k largest magnitudes zeroed."""
    out = np.zeros_like(c)
    if c.size:
        k = keep_count(ratio, c.size)
        keep = np.argpartition(-np.abs(c), k - 1)[:k]
        out[keep] = c[keep]
    return out


def _mix32(x):
    x = np.uint64(x) if np.isscalar(x) else x.astype(np.uint64)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & np.uint64(0xFFFFFFFF)
    return x ^ (x >> np.uint64(16))


def splitmix(*values):
    """The seed of a bucket's random choices: splitmix64 steps over the inputs, 63 bits."""
    seed = 0x9E3779B97F4A7C15
    for value in values:
        seed = (seed ^ (int(value) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        seed = (seed ^ (seed >> 27)) * 0x94D049BB133111EB & _MASK64
        seed ^= seed >> 31
    return seed & ((1 << 63) - 1)


def randomk_positions(n, k, seed):
    """One position from each of k equal strata of [0, n), drawn by a counter-based hash of ``seed``."""
    high = int(_mix32((seed >> 32) ^ 2))
    key = np.uint64(int(_mix32((seed & 0xFFFFFFFF) ^ high)))
    j = np.arange(k, dtype=np.uint64)
    begin = j * np.uint64(n) // np.uint64(k)
    length = (j + np.uint64(1)) * np.uint64(n) // np.uint64(k) - begin
    draw = _mix32(j ^ key)
    return (begin + ((draw * length) >> np.uint64(32))).astype(np.int64)


class RandomK:
    """Random-k's decoder: c at positions every rank draws alike from (spec seed, bucket, shard, step)."""

    def __init__(self, ratio, bucket_seed, spec_seed=0):
        self.ratio, self.bucket_seed, self.spec_seed = ratio, bucket_seed, spec_seed
        self.steps = 0  # exchanges so far: the positions change every step

    def __call__(self, c):
        out = np.zeros_like(c)
        if c.size:
            seed = splitmix(self.spec_seed, self.bucket_seed, self.steps)
            keep = randomk_positions(c.size, keep_count(self.ratio, c.size), seed)
            out[keep] = c[keep]
        return out

    def next_step(self):
        self.steps += 1


# --- error feedback around a compressor -----------------------------------------------------------------
class Feedback:
    """One compressor with (or without) its error-feedback residual: ``step(x)`` -> decoded payload."""

    def __init__(self, decode, ef, numel):
        self.decode = decode  # c -> what its payload decodes to
        self.residual = np.zeros(numel, F32) if ef else None

    def step(self, x):
        c = (x + self.residual).astype(F32) if self.residual is not None else x
        decoded = self.decode(c)
        if self.residual is not None:
            self.residual = (c - decoded).astype(F32)
        return decoded


def sum_in_order(values, wire=None):
    """Rank-order float32 sum; ``wire`` rounds each partial sum to the payload's format (fp16 payloads are
    summed by Horovod in float32 and rounded back to float16 at every addition)."""
    total = np.zeros_like(values[0])
    for v in values:
        total = (total + v).astype(F32)
        if wire is not None:
            total = wire(total)
    return total


def chunk_bounds(numel, parts, grain):
    """Chunk boundaries at multiples of ``grain`` (the last chunk takes the tail), as equal as grains allow."""
    grains = -(-numel // grain) if numel else 0
    base, extra = divmod(grains, parts)
    cuts = [0]
    for j in range(parts):
        cuts.append(min(numel, cuts[-1] + (base + (1 if j < extra else 0)) * grain))
    return cuts


# --- the routes: per-rank inputs (already scaled by 1/p when averaging) -> every rank's result --------------
class Flat:
    """Every rank's payload decoded and summed (allreduce of summable payloads, or allgather)."""

    def __init__(self, make, ranks, wire=None, shared=None):
        self.workers = [make() for _ in range(ranks)]
        self.wire = wire  # rounding of each partial sum (summed in the payload's format)
        self.shared = shared  # a decoder every rank uses alike (random-k's positions), stepped once per exchange

    def step(self, inputs):
        total = sum_in_order([w.step(x) for w, x in zip(self.workers, inputs)], self.wire)
        if self.shared is not None:
            self.shared.next_step()
        return total


class TwoPhase:
    """Chunk j of every rank summed on rank j, compressed again with rank j's own residual, gathered."""

    def __init__(self, make, make_chunk, ranks, numel, grain):
        self.bounds = chunk_bounds(numel, ranks, grain)
        self.workers = [[make_chunk(hi - lo) for lo, hi in zip(self.bounds, self.bounds[1:])] for _ in range(ranks)]
        self.servers = [make_chunk(hi - lo) for lo, hi in zip(self.bounds, self.bounds[1:])]

    def step(self, inputs):
        out = []
        for j, (lo, hi) in enumerate(zip(self.bounds, self.bounds[1:])):
            chunk_sum = sum_in_order([self.workers[r][j].step(x[lo:hi]) for r, x in enumerate(inputs)])
            out.append(self.servers[j].step(chunk_sum))
        return np.concatenate(out).astype(F32)

    def worker_residual(self, rank):
        return np.concatenate([w.residual for w in self.workers[rank]])


def shares(numel, parts):
    base, extra = divmod(numel, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class Sharded:
    """Hierarchical: sum inside each node, local rank i exchanges share i of the node sums between the
    nodes (``between(numel, i)`` makes that exchange), the node shares the results."""

    def __init__(self, nodes, ranks_per_node, numel, between):
        self.nodes, self.local = nodes, ranks_per_node
        self.cuts = np.cumsum([0] + shares(numel, ranks_per_node))
        self.hops = [between(int(self.cuts[i + 1] - self.cuts[i]), i) for i in range(ranks_per_node)]

    def step(self, inputs):
        node_sums = [sum_in_order(inputs[k * self.local:(k + 1) * self.local]) for k in range(self.nodes)]
        return np.concatenate([hop.step([s[self.cuts[i]:self.cuts[i + 1]] for s in node_sums])
                               for i, hop in enumerate(self.hops)]).astype(F32)


# --- a whole exchange from a compression spec -----------------------------------------------------------
DECODERS = {
    "none": lambda arg, options: (lambda c: c),
    "fp16": lambda arg, options: fp16,
    "bf16": lambda arg, options: bf16,
    "int8": lambda arg, options: (lambda c: int8(c, arg)),
    "onebit": lambda arg, options: (lambda c: onebit(c, options["block"])),
    "topk": lambda arg, options: (lambda c: topk(c, arg)),
}
DEFAULT_EF = {"none": False, "fp16": False, "bf16": False, "int8": False, "onebit": True, "topk": True,
              "randomk": True}
GRAIN = {"bf16": lambda arg, o: 1, "int8": lambda arg, o: arg, "onebit": lambda arg, o: o["block"],
         "topk": lambda arg, o: 1}


def parse(spec):
    """``"topk:0.1,ef=0"`` -> (name, argument, options) with this oracle's defaults."""
    head, *rest = spec.split(",")
    name, _, arg_text = head.partition(":")
    options = {"block": 1024, "ef": DEFAULT_EF[name]}
    for item in rest:
        key, _, value = item.partition("=")
        options[key] = value if key == "two_phase" else int(value)
    arg = int(arg_text or 1024) if name == "int8" else float(arg_text) if name in ("topk", "randomk") else None
    return name, arg, options


def exchange(spec, route, ranks, numel, ranks_per_node=None, bucket=0):
    """The oracle of bucket ``bucket`` (``numel`` float32 values) exchanged with ``spec`` over ``route``."""
    name, arg, options = parse(spec)
    ef = bool(options["ef"])

    def flat(group, n, shard=0):
        if name == "randomk":
            shared = RandomK(arg, splitmix(bucket, shard), options.get("seed", 0))
            return Flat(lambda: Feedback(shared, ef, n), group, shared=shared)
        decode = DECODERS[name](arg, options)
        return Flat(lambda: Feedback(decode, ef, n), group, fp16 if name == "fp16" else None)

    def two_phase(group, n, shard=0):
        decode = DECODERS[name](arg, options)
        return TwoPhase(None, lambda m: Feedback(decode, ef, m), group, n, GRAIN[name](arg, options))

    if route in ("ring", "flat"):
        return flat(ranks, numel)
    if route == "two_phase":
        return two_phase(ranks, numel)
    nodes = ranks // ranks_per_node
    hop = {"sharded": flat, "sharded/two_phase": two_phase}[route]
    return Sharded(nodes, ranks_per_node, numel, lambda n, shard: hop(nodes, n, shard))
