"""How one bucket's payloads travel between ranks.

An exchange is a generator: it yields a list of ``Request``s (collectives to
run) and is sent back their outputs, until it returns the dense, reduced
bucket. Strategies never call Horovod themselves; a transport runs the
requests: ``HorovodTransport`` (real ranks; ``hvdkit.exchange.simulate`` runs the same
exchanges for many ranks in one process). A ``Flight`` drives one exchange:
the optimizer starts it when a bucket fills, ``poll()``s it from later
gradient hooks (so multi-stage exchanges move on during backward) and
``wait()``s in ``step()``. Strategies:

* ``flat``: summable payloads -> allreduce (sum); others -> allgather; every
  round of a multi-round compressor (PowerSGD) likewise.
* ``sharded``: hierarchical, for compressors that may cut a bucket anywhere:
  reduce-scatter (sum, dense) inside the node, so local rank i owns share i;
  the flat exchange of that share among the ranks with local rank i (one per
  node: the only traffic between nodes, compressed); allgather of the shares
  inside the node.
* ``two_phase``: for gathered compressors, bytes per rank independent of
  the number of ranks (DeepSpeed's 1-bit compressed allreduce, BytePS's
  summation service): each rank compresses its bucket (worker error
  feedback) and an alltoall hands rank j everyone's chunk j; rank j sums
  them, compresses the sum again with its own residual (server error
  feedback), and an allgather of those compressed sums gives every rank the
  whole result. About 2x the compressed size per rank, against (p-1)x for
  an allgather.
* ``matrix_sharded``: hierarchical, for shape-aware compressors (PowerSGD):
  allreduce (sum, dense) inside the node; the bucket's matrices are divided
  among the local ranks (``assign_matrices``), each runs the flat exchange of
  its own matrices' node sums among the nodes, and an allgather inside the
  node shares the results: each matrix crosses between nodes once per node.
* ``replicated``: hierarchical, for shape-aware compressors when a bucket has
  fewer matrices than the node has ranks:
  allreduce (sum, dense) inside the node; then every local rank runs the same
  flat exchange of the node sum among the nodes, so each ends with the result
  and nothing is shared back. The compressed payloads cross between nodes
  once per local rank (PowerSGD's are hundreds of times smaller than the
  bucket), and every rank issues the same number of Horovod operations —
  Horovod names unnamed operations by a per-process counter, so a strategy
  where some ranks run more operations would make a user's unnamed
  ``hvd.allreduce`` pair up wrongly and hang.

Inputs arrive divided by the world size when averaging, so every strategy
only sums. The public collectives (:mod:`hvdkit.exchange.collectives`) run the
same strategies with the ``none`` compressor, passing ``scale`` (applied by
Horovod after the sum, as its own average does) and ``inplace``.
"""
import dataclasses

__all__ = ["Link", "Links", "Request", "assign_matrices", "chunk_bounds", "flat", "matrix_sharded", "sharded",
           "replicated", "shares", "two_phase"]


@dataclasses.dataclass(frozen=True)
class Link:
    """Ranks that exchange with each other."""

    process_set: object  # Horovod ProcessSet (or the simulator's tuple of ranks)
    size: int  # ranks in the set
    position: int  # this rank's index in the set (by global rank)
    # Ranks of the set on each node: ``size`` (the default) when the set lies inside one node, 1 when
    # each member is on its own node (the cross-node sets); the step stats split bytes by link class with it.
    per_node: int = None


@dataclasses.dataclass(frozen=True)
class Links:
    """The sets an exchange may use."""

    world: Link
    intra: Link = None  # this rank's node (hierarchical only)
    cross: Link = None  # ranks with this rank's local rank, one per node (hierarchical only)


@dataclasses.dataclass(frozen=True)
class Request:
    """One collective an exchange needs: sums for allreduce / reducescatter."""

    kind: str  # "allreduce", "allgather" or "reducescatter"
    tensor: object
    link: Link
    name: str  # unique among collectives in flight; equal on every rank taking part
    scale: float = 1.0  # allreduce: multiply the sum by this (Horovod's postscale_factor)
    inplace: bool = False  # allreduce: the result may be written into ``tensor`` (torch's allreduce_async_)
    splits: tuple = None  # alltoall: elements of ``tensor`` (back to back) for each rank of the link


def nbytes(tensor):
    """Bytes of a torch or TensorFlow tensor."""
    size = getattr(tensor, "nbytes", None)
    if size is None:  # TensorFlow
        size = int(tensor.shape.num_elements()) * tensor.dtype.size
    return int(size)


def _request(kind, tensor, link, name, meter, compressed=False, **options):
    meter.sent(kind, nbytes(tensor), link.size, compressed, link.per_node)
    return Request(kind, tensor, link, name, **options)


def _poisoned(ops, payload, bad):
    """The payload with its last tensor poisoned where ``bad`` (a flag): every rank then sees a
    non-finite result, whatever the compressor dropped."""
    return tuple(payload[:-1]) + (ops.poison_where(payload[-1], bad),)


def flat(compressor, tensor, state, link, name, meter, bad, scale=1.0, inplace=False):
    """Compress, exchange over ``link`` (all rounds), decompress. ``bad``: the flag of ``tensor``
    (``TensorOps``: set when it may not be finite; None: compute it, on the device). The compressor
    works on ``state.attempt()``, which the caller settles once the step's result is known; a non-finite
    input's payload is poisoned, so every rank sees a non-finite result and keeps its old residual.
    ``scale`` applies to the sum of a one-round summable payload only; ``inplace`` (see ``Request``)
    lets summable payloads be reduced in place (the exchange owns them)."""
    ops = compressor.ops
    if scale != 1.0 and not (compressor.summable and compressor.rounds == 1):
        raise ValueError(f"scale applies to one-round summable payloads, not to {compressor.name}")
    if bad is None:
        bad = ops.nonfinite(tensor)
    compressor.prepare(state, tensor)
    work = state.attempt()
    compressed = compressor.name != "none"
    if compressed:
        meter.compressed_input(nbytes(tensor))
    payload, ctx = meter.timed("kernel_s", compressor.compress, tensor, work)
    payload = _poisoned(ops, payload, bad)
    kind = "allreduce" if compressor.summable else "allgather"
    for round_index in range(compressor.rounds):
        if round_index:
            payload, ctx = meter.timed("kernel_s", compressor.next_round, reduced, ctx)
        reduced = yield [_request(kind, part, link, f"{name}.{round_index}.{i}", meter, compressed,
                                  **({"scale": scale, "inplace": inplace} if compressor.summable else {}))
                         for i, part in enumerate(payload)]
    work.steps += 1
    out = state.buffer("decoded", state.numel, ops, tensor) if compressor.decodes_into else None
    return meter.timed("kernel_s", compressor.decompress, reduced, ctx, out)


def two_phase(compressor, tensor, state, link, name, meter, bad):
    """The two-phase compressed exchange over ``link`` (see the module docstring); ``bad`` and
    ``state`` as for :func:`flat` (the attempt carries the server state too). A chunk sum that may not
    be finite is poisoned as in :func:`flat`, so every rank sees a non-finite result."""
    ops = compressor.ops
    if bad is None:
        bad = ops.nonfinite(tensor)
    bounds = chunk_bounds(state.numel, link.size, compressor.chunk_grain)
    start, stop = bounds[link.position], bounds[link.position + 1]
    compressor.prepare(state, tensor)
    compressor.prepare(state.server_state(stop - start), tensor)
    work = state.attempt()
    meter.compressed_input(nbytes(tensor))
    parts, splits = meter.timed("kernel_s", compressor.compress_chunks, tensor, work, bounds)
    parts = _poisoned(ops, parts, bad)
    received = yield [_request("alltoall", part, link, f"{name}.a2a.{i}", meter, True, splits=tuple(split))
                      for i, (part, split) in enumerate(zip(parts, splits))]
    chunk_sum = meter.timed("kernel_s", compressor.decompress, tuple(received), stop - start,
                            state.buffer("chunk", stop - start, ops, tensor))
    chunk_bad = ops.nonfinite(chunk_sum)
    payload, _ = meter.timed("kernel_s", compressor.compress_sum, chunk_sum, work.server)
    payload = _poisoned(ops, compressor.placed(tuple(payload), start), chunk_bad)
    gathered = yield [_request("allgather", part, link, f"{name}.ag.{i}", meter, True)
                      for i, part in enumerate(payload)]
    work.steps += 1
    work.server.steps += 1
    return meter.timed("kernel_s", compressor.decompress, tuple(gathered), state.numel,
                       state.buffer("decoded", state.numel, ops, tensor))


def sharded(compressor, tensor, state, links, name, meter, bad, scale=1.0, cross=flat, inplace=False):
    """Hierarchical exchange of an elementwise compressor; ``state`` covers this rank's share.
    ``bad`` is the flag of the node-summed share (None: compute it, for it carries any rank's NaN).
    ``scale`` and ``inplace`` as for :func:`flat`, applied between the nodes; ``cross`` is the
    strategy of the hop between nodes (:func:`flat` or :func:`two_phase`)."""
    share, = yield [_request("reducescatter", tensor, links.intra, f"{name}.rs", meter)]
    if cross is two_phase:
        reduced = yield from two_phase(compressor, share, state, links.cross, f"{name}.x", meter, bad)
    else:
        reduced = yield from flat(compressor, share, state, links.cross, f"{name}.x", meter, bad, scale, inplace)
    whole, = yield [_request("allgather", reduced, links.intra, f"{name}.ag", meter)]
    return whole


def matrix_sharded(compressor, tensor, state, links, name, meter, bad, assignment):
    """Hierarchical exchange of a shape-aware compressor (see the module docstring). ``assignment``:
    ((offset, numel), ...) of each local rank's matrices in the bucket (``assign_matrices``); ``state``
    covers this rank's matrices, back to back. ``bad`` as for :func:`sharded`, of the node sum."""
    ops = compressor.ops
    node_sum, = yield [_request("allreduce", tensor, links.intra, f"{name}.node", meter)]
    mine = ops.concat([ops.slice(node_sum, offset, offset + numel) for offset, numel in assignment[links.intra.position]])
    reduced = yield from flat(compressor, mine, state, links.cross, f"{name}.x", meter, bad)
    gathered, = yield [_request("allgather", reduced, links.intra, f"{name}.ag", meter)]
    pieces, start = {}, 0
    for matrices in assignment:
        for offset, numel in matrices:
            pieces[offset] = ops.slice(gathered, start, start + numel)
            start += numel
    return ops.concat([pieces[offset] for offset in sorted(pieces)])


def assign_matrices(layout, parts):
    """The bucket's matrices ((offset, shape) per tensor) divided among ``parts`` local ranks, the largest
    first to the least loaded (ties to the lower rank): per rank, ((offset, numel), ...) in bucket order.
    None when some rank would get none (the bucket then takes the replicated route)."""
    if len(layout) < parts:
        return None
    loads, owned = [0] * parts, [[] for _ in range(parts)]
    sizes = [(offset, _numel(shape)) for offset, shape in layout]
    for offset, numel in sorted(sizes, key=lambda item: (-item[1], item[0])):
        rank = min(range(parts), key=lambda r: (loads[r], r))
        loads[rank] += numel
        owned[rank].append((offset, numel))
    return tuple(tuple(sorted(matrices)) for matrices in owned)


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def replicated(compressor, tensor, state, links, name, meter, bad):
    """Hierarchical exchange for shape-aware compressors: node sum, then the same compressed exchange
    among the nodes on every local rank. ``bad`` as for :func:`sharded`, of the node sum."""
    node_sum, = yield [_request("allreduce", tensor, links.intra, f"{name}.node", meter)]
    return (yield from flat(compressor, node_sum, state, links.cross, f"{name}.x", meter, bad))


def chunk_bounds(numel, parts, grain=1):
    """``parts + 1`` cut points of ``numel`` elements into ``parts`` chunks whose boundaries fall on
    multiples of ``grain`` (whole compression blocks); the last chunk takes the tail. Chunks are as equal
    as whole grains allow (some are empty when there are fewer grains than parts)."""
    grains = -(-numel // grain) if numel else 0
    cuts = [0]
    for share in shares(grains, parts):
        cuts.append(min(numel, cuts[-1] + share * grain))
    return cuts


def shares(numel, parts):
    """Lengths of the ``parts`` shares Horovod's reduce-scatter cuts ``numel`` elements into
    (the first ``numel % parts`` get one more)."""
    base, extra = divmod(numel, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]
