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
* ``replicated``: hierarchical, for shape-aware compressors (PowerSGD):
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

__all__ = ["Link", "Links", "Request", "flat", "sharded", "replicated", "shares"]


@dataclasses.dataclass(frozen=True)
class Link:
    """Ranks that exchange with each other."""

    process_set: object  # Horovod ProcessSet (or the simulator's tuple of ranks)
    size: int  # ranks in the set
    position: int  # this rank's index in the set (by global rank)


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


def nbytes(tensor):
    """Bytes of a torch or TensorFlow tensor."""
    size = getattr(tensor, "nbytes", None)
    if size is None:  # TensorFlow
        size = int(tensor.shape.num_elements()) * tensor.dtype.size
    return int(size)


def _request(kind, tensor, link, name, meter, compressed=False, **options):
    meter.sent(kind, nbytes(tensor), link.size, compressed)
    return Request(kind, tensor, link, name, **options)


def flat(compressor, tensor, state, link, name, meter, finite, scale=1.0, inplace=False):
    """Compress, exchange over ``link`` (all rounds), decompress. ``finite``: whether ``tensor``
    is finite (None: check). A non-finite input is compressed with a scratch state and its payload
    poisoned, so the residual stays clean and every rank sees a non-finite result. ``scale`` and
    ``inplace`` (see ``Request``) apply to the sum of a one-round summable payload only."""
    ops = compressor.ops
    if (scale != 1.0 or inplace) and not (compressor.summable and compressor.rounds == 1):
        raise ValueError(f"scale and inplace apply to one-round summable payloads, not to {compressor.name}")
    if finite is None:
        finite = ops.all_finite(tensor)
    use = state if finite else state.scratch()
    compressor.prepare(use, tensor)
    compressed = compressor.name != "none"
    if compressed:
        meter.compressed_input(nbytes(tensor))
    payload, ctx = meter.timed("kernel_s", compressor.compress, tensor, use)
    if not finite:
        payload = tuple(payload[:-1]) + (ops.poison(payload[-1]),)
    kind = "allreduce" if compressor.summable else "allgather"
    for round_index in range(compressor.rounds):
        if round_index:
            payload, ctx = meter.timed("kernel_s", compressor.next_round, reduced, ctx)
        reduced = yield [_request(kind, part, link, f"{name}.{round_index}.{i}", meter, compressed,
                                  **({"scale": scale, "inplace": inplace} if compressor.summable else {}))
                         for i, part in enumerate(payload)]
    state.steps += 1
    return meter.timed("kernel_s", compressor.decompress, reduced, ctx)


def sharded(compressor, tensor, state, links, name, meter, finite, scale=1.0):
    """Hierarchical exchange of an elementwise compressor; ``state`` covers this rank's share.
    ``finite`` is whether the node-summed share is known to be finite (None: check it, for it carries
    any rank's NaN). ``scale`` as for :func:`flat`, applied between the nodes."""
    share, = yield [_request("reducescatter", tensor, links.intra, f"{name}.rs", meter)]
    reduced = yield from flat(compressor, share, state, links.cross, f"{name}.x", meter, finite, scale)
    whole, = yield [_request("allgather", reduced, links.intra, f"{name}.ag", meter)]
    return whole


def replicated(compressor, tensor, state, links, name, meter, finite):
    """Hierarchical exchange for shape-aware compressors: node sum, then the same compressed exchange
    among the nodes on every local rank. ``finite`` as for :func:`sharded`, of the node sum."""
    node_sum, = yield [_request("allreduce", tensor, links.intra, f"{name}.node", meter)]
    return (yield from flat(compressor, node_sum, state, links.cross, f"{name}.x", meter, finite))


def shares(numel, parts):
    """Lengths of the ``parts`` shares Horovod's reduce-scatter cuts ``numel`` elements into
    (the first ``numel % parts`` get one more)."""
    base, extra = divmod(numel, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]
