"""Fused gradient buckets: which tensors share one flat buffer.

Framework-neutral planning over tensor descriptions. Tensors are taken in
reverse registration order (backward produces the last layers' gradients
first), and each goes into the open bucket of its kind — same dtype, and
compressed or dense — until adding it would pass ``fusion_bytes``; then that
bucket is closed and a new one opened. A tensor larger than the limit gets a
bucket of its own. ``fusion_bytes=0`` gives one bucket per tensor.

Bucket indices follow the order in which buckets close, which is close to the
order in which backward fills them. When registration order is not the order
of backward (modules registered in another order than they run), the front
end passes the order it saw gradients arrive in (``order``) and the plan takes
the tensors in that order instead. Packing into and out of the flat buffers
is the framework's job (``hvdkit.ops.pack/unpack`` in torch).

A front end that also timed backward can name ``breaks``: the tensors whose
gradient came after a long pause in backward (``BREAK_PAUSE_S``, measured in
the first step). Before such a tensor every open bucket that already holds a
worthwhile message (``split_bytes``) is closed, so that it leaves when backward
pauses instead of waiting for the next layer's gradients. Without it, a layer's
16 MiB weight gradient was held back by the 16 KiB bias of the next, larger
layer, whose backward took most of the pass: on the emulated cluster (2 nodes
x 2 ranks, 1 Gbit/s, the 25.2 M-parameter MLP of benchmarks/cluster.py) the
first allreduce started 477-651 ms into the step (median of 12-16 steps, two
jobs) against 194-342 ms for Horovod's optimizer, whose first allreduce
overlaps that backward; with the break, 254 ms against 342 ms (same job).
Horovod never waits so: it fuses only the gradients ready in the same cycle.
"""
import dataclasses

__all__ = ["BREAK_PAUSE_S", "MIN_SPLIT_BYTES", "TensorInfo", "Slot", "Bucket", "plan_buckets", "closing_breaks",
           "describe", "split_bytes"]

# A pause in backward this long between two gradients is a break. It must be well above the time a gradient
# hook takes (tens of microseconds) and above the cost of one more collective (Horovod's negotiation, about
# 0.2-0.7 ms for a small allreduce here), so that splitting a bucket there pays for itself.
BREAK_PAUSE_S = 2e-3
# A bucket is closed at a break only once it holds this much (and a quarter of fusion_bytes): a smaller
# one is latency-bound, better fused with what comes next.
MIN_SPLIT_BYTES = 1 << 20


def split_bytes(fusion_bytes):
    """How full an open bucket must be to be closed at a break in backward."""
    return max(MIN_SPLIT_BYTES, fusion_bytes // 4)


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """What planning needs to know about one tensor."""

    name: str
    shape: tuple
    dtype: str  # e.g. "float32"
    itemsize: int  # bytes per element

    @property
    def numel(self):
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclasses.dataclass(frozen=True)
class Slot:
    """One tensor's place in a bucket."""

    index: int  # position of the tensor in registration order
    name: str
    shape: tuple
    offset: int  # first element in the bucket's flat buffer
    numel: int


@dataclasses.dataclass(frozen=True)
class Bucket:
    """Tensors packed into one flat buffer and exchanged together."""

    index: int
    dtype: str
    compressed: bool  # whether the compressor runs on it (else it is exchanged dense)
    slots: tuple  # Slots in packing order (reverse registration order)
    numel: int
    nbytes: int

    @property
    def layout(self):
        """((offset, shape), ...): what shape-aware compressors (PowerSGD) need."""
        return tuple((s.offset, s.shape) for s in self.slots)

    @property
    def indices(self):
        return tuple(s.index for s in self.slots)


def plan_buckets(tensors, fusion_bytes, compressible=lambda info: False, order=None, groups=None, breaks=()):
    """Buckets for ``tensors`` (TensorInfo in registration order).

    ``compressible(info)`` says whether a tensor goes to compressed buckets;
    ``fusion_bytes`` caps a bucket's size in bytes (a bigger tensor gets its own);
    ``order``: the indices of ``tensors`` in the order to take them (default: reverse registration);
    tensors it leaves out are in no bucket (their front end exchanges them itself). ``groups``
    (Horovod's explicit grouping: tuples of tensor indices covering every tensor) replaces the size
    rule: each group is one bucket per kind, whatever its size, in the order its last tensor is taken.
    ``breaks``: indices of tensors that come after a pause in backward; before each, every open bucket of at
    least ``split_bytes(fusion_bytes)`` is closed (see the module docstring). Not used with ``groups``.
    """
    if fusion_bytes < 0:
        raise ValueError(f"fusion_bytes must be >= 0, got {fusion_bytes}")
    if order is None:
        order = list(reversed(range(len(tensors))))
    elif len(set(order)) != len(order) or not set(order) <= set(range(len(tensors))):
        raise ValueError(f"order must list tensor indices (0 to {len(tensors) - 1}) at most once, got {order}")
    if groups is not None:
        return _grouped(tensors, compressible, order, groups)
    return _sized(tensors, fusion_bytes, compressible, order, frozenset(breaks))[0]


def closing_breaks(tensors, fusion_bytes, compressible=lambda info: False, order=None, breaks=()):
    """The members of ``breaks`` before which ``plan_buckets`` (same arguments) closes a bucket.

    A pause measured before a small model's gradient is often the scheduler's, not backward's; keeping only
    the breaks that change the plan keeps such noise out of the plan and out of checkpoints, so that two
    runs of one model plan alike."""
    if order is None:
        order = list(reversed(range(len(tensors))))
    return _sized(tensors, fusion_bytes, compressible, order, frozenset(breaks))[1]


def _sized(tensors, fusion_bytes, compressible, order, breaks):
    """plan_buckets by size (see there); also returns the breaks that closed a bucket, in ``order``."""
    buckets, closing = [], []
    open_buckets = {}  # (dtype, compressed) -> indices of the tensors in the bucket being filled
    open_numel = {}  # (dtype, compressed) -> elements in that bucket so far

    def close(key):
        members = open_buckets.pop(key)
        del open_numel[key]
        slots, offset = [], 0
        for index in members:
            info = tensors[index]
            slots.append(Slot(index, info.name, tuple(info.shape), offset, info.numel))
            offset += info.numel
        itemsize = tensors[members[0]].itemsize
        buckets.append(Bucket(len(buckets), key[0], key[1], tuple(slots), offset, offset * itemsize))

    least = split_bytes(fusion_bytes)
    for index in order:
        info = tensors[index]
        if index in breaks:  # backward paused before this gradient: what is ready and worth sending goes now
            full = [k for k in open_buckets if open_numel[k] * tensors[open_buckets[k][0]].itemsize >= least]
            closing += [index] if full else []
            for key in full:
                close(key)
        key = (info.dtype, bool(compressible(info)))
        if key in open_buckets and (open_numel[key] + info.numel) * info.itemsize > fusion_bytes:
            close(key)
        open_buckets.setdefault(key, []).append(index)
        open_numel[key] = open_numel.get(key, 0) + info.numel
    for key in list(open_buckets):
        close(key)
    return buckets, closing


def _grouped(tensors, compressible, order, groups):
    """plan_buckets with explicit groups (see there)."""
    position = {index: i for i, index in enumerate(order)}
    members = {}  # (group, dtype, compressed) -> tensor indices in ``order``
    for number, group in enumerate(groups):
        for index in sorted((i for i in group if i in position), key=position.get):
            info = tensors[index]
            members.setdefault((number, info.dtype, bool(compressible(info))), []).append(index)
    buckets = []
    for key, indices in sorted(members.items(), key=lambda item: position[item[1][-1]]):
        slots, offset = [], 0
        for index in indices:
            info = tensors[index]
            slots.append(Slot(index, info.name, tuple(info.shape), offset, info.numel))
            offset += info.numel
        buckets.append(Bucket(len(buckets), key[1], key[2], tuple(slots), offset, offset * tensors[indices[0]].itemsize))
    return buckets


def describe(buckets):
    """One line per bucket, for logs: index, kind, size and the first tensor names."""
    lines = []
    for b in buckets:
        names = ", ".join(s.name for s in b.slots[:3]) + (", ..." if len(b.slots) > 3 else "")
        kind = "compressed" if b.compressed else "dense"
        size = f"{b.nbytes / 2**20:.2f} MiB"
        lines.append(f"bucket {b.index}: {kind} {b.dtype}, {len(b.slots)} tensors, {size} [{names}]")
    return "\n".join(lines)
