"""Flat and hierarchical (node-then-cluster) collectives over Horovod process sets, for any tensor.

The functions take the Horovod module (``horovod.torch`` or
``horovod.tensorflow``) and run on the exchange's own machinery: the
reductions are the strategies of :mod:`hvdkit.exchange.strategies` with the
``none`` compressor, driven by the engine of :mod:`hvdkit.exchange.engine`, so
the hierarchical algorithm exists once, for the optimizers' buckets and for
these. Where the module has ``*_async`` variants (torch) a collective starts
without blocking; otherwise (TensorFlow, whose Horovod ops run eagerly) each
stage has finished when it starts.

Async form: every ``*_async`` function returns an engine ``Flight``: its
first stage starts in the call, and each later one when ``poll()`` (non-
blocking, returns whether all is done) or ``wait()`` (blocks, returns the
result) notices the stage before has finished. An optimizer can start many
flights during backward, ``poll()`` them from its hooks to keep them moving,
and ``wait()`` in ``step()``.

Pass a stable ``name`` per logical tensor (e.g. the bucket's): Horovod's
response cache only recognises a repeated name. An unnamed call gets a fresh
name from a per-process counter, as Horovod names its unnamed ops, so every
rank must make its unnamed calls in the same order.

Hierarchical allreduce (Horovod process sets from :mod:`hvdkit.topology`;
``strategies.sharded``):

1. reduce-scatter (sum) inside the node, so local rank ``i`` owns share ``i``
   of the flattened buffer (Horovod gives the first ``n % local_size`` local
   ranks one element more, so any length works);
2. allreduce (sum, then scale by ``1/size`` for ``"average"``, as Horovod's
   own average does) of that share among the ranks with local rank ``i``:
   only ``1/local_size`` of the buffer crosses between nodes per rank;
3. allgather of the shares inside the node.

With one node, one rank per node, or nodes of unequal sizes
(``topology.hierarchical`` is False) it is one flat allreduce over all ranks;
with one node that is exactly the node-local step.
"""
import itertools

from hvdkit.compression import registry
from hvdkit.compression.state import BucketState
from hvdkit.compression.tensor_ops import ops_for
from hvdkit.exchange import strategies
from hvdkit.exchange.engine import Flight, HorovodTransport
from hvdkit.exchange.options import hierarchical_links
from hvdkit.exchange.stats import StatsMeter
from hvdkit.exchange.strategies import Link, Links, Request

OPS = ("average", "sum")

__all__ = [
    "OPS",
    "GatherPlan",
    "allgather",
    "allgather_async",
    "allreduce",
    "allreduce_async",
    "gather_exchange",
    "hierarchical_allgather",
    "hierarchical_allgather_async",
    "hierarchical_allreduce",
    "hierarchical_allreduce_async",
    "reduce_exchange",
]

_unnamed = itertools.count()  # names unnamed calls, in call order (the same on every rank)


def _scale(op, size):
    """Horovod's average: the sum times 1/size, applied after summing."""
    if not isinstance(op, str) or op.lower() not in OPS:
        raise ValueError(f"op must be one of {', '.join(map(repr, OPS))}, got {op!r}")
    return 1.0 / size if op.lower() == "average" else 1.0


def _named(name, kind):
    return name if name is not None else f"hvdkit.{kind}.noname.{next(_unnamed)}"


def _world_link(hvd, process_set):
    if process_set is None or process_set is hvd.global_process_set:
        return Link(hvd.global_process_set, hvd.size(), hvd.rank())
    return Link(process_set, process_set.size(), process_set.rank())


def _links(hvd, topology):
    return hierarchical_links(hvd, topology, True)


# --- the exchanges (generators the engine runs; any transport, the simulator's included) ----------------
def reduce_exchange(tensor, links, name, scale=1.0, inplace=False):
    """Sum (times ``scale``) of ``tensor`` over ``links``: hierarchical when ``links`` has node sets,
    flat over ``links.world`` otherwise. ``inplace``: the result is written into ``tensor`` where the
    framework allows it."""
    ops = ops_for(tensor)
    none = registry.create("none", ops)
    meter = StatsMeter()  # the collectives keep no statistics; the strategies want somewhere to count
    if links.intra is None:
        state = BucketState(ops.numel(tensor))
        return (yield from strategies.flat(none, tensor, state, links.world, name, meter, False, scale, inplace))
    flat = ops.reshape(tensor, (-1,))
    state = BucketState(strategies.shares(ops.numel(tensor), links.intra.size)[links.intra.position])
    whole = yield from strategies.sharded(none, flat, state, links, name, meter, False, scale)
    return ops.write_into(tensor, whole) if inplace else ops.reshape(whole, ops.shape(tensor))


class GatherPlan:
    """Row bookkeeping of the hierarchical allgather: which rows local rank ``j`` of node ``k`` carries
    between nodes, and how the pieces go back into global rank order. ``nodes``: global ranks of each
    node (sorted); ``rows``: rows contributed by each global rank."""

    __slots__ = ("nodes", "rows", "local_size")

    def __init__(self, nodes, rows):
        self.nodes = nodes
        self.rows = rows
        self.local_size = len(nodes[0])

    def piece(self, k, j):
        """Rows [lo, hi) of node k's block that its local rank j carries across nodes."""
        total = sum(self.rows[r] for r in self.nodes[k])
        return j * total // self.local_size, (j + 1) * total // self.local_size

    def cross_order(self, j):
        """Nodes in the order the cross-node set of local rank j lists them (Horovod sorts by rank)."""
        return sorted(range(len(self.nodes)), key=lambda k: self.nodes[k][j])

    def assemble(self, gathered, ops):
        """Cut the spread pieces back into node blocks, then into global rank order."""
        pieces, offset = {}, 0
        for j in range(self.local_size):
            for k in self.cross_order(j):
                lo, hi = self.piece(k, j)
                pieces[k, j] = gathered[offset:offset + hi - lo]
                offset += hi - lo
        blocks = [ops.concat_rows([pieces[k, j] for j in range(self.local_size)]) for k in range(len(self.nodes))]
        by_rank = {}
        for k, members in enumerate(self.nodes):
            start = 0
            for r in members:
                by_rank[r] = blocks[k][start:start + self.rows[r]]
                start += self.rows[r]
        return ops.concat_rows([by_rank[r] for r in range(len(by_rank))])


def gather_exchange(tensor, links, topology, name):
    """Every rank's ``tensor`` joined along the first dimension in global rank order (rows may differ
    between ranks). Hierarchical when ``links`` has node sets: inside the node the ranks gather the
    node's block; each local rank carries only its ``1/local_size`` piece of it to the other nodes
    (so each node's data crosses between nodes once); a last gather inside the node completes every
    rank's copy. A small gather of row counts comes first."""
    if links.intra is None:
        gathered, = yield [Request("allgather", tensor, links.world, name)]
        return gathered
    ops = ops_for(tensor)
    counts, = yield [Request("allgather", ops.int64_tensor([ops.shape(tensor)[0]], tensor), links.world,
                             f"{name}.rows")]
    plan = GatherPlan(topology.nodes, [int(r) for r in ops.to_list(counts)])
    block, = yield [Request("allgather", tensor, links.intra, f"{name}.node")]
    lo, hi = plan.piece(topology.node, topology.local_rank)
    pieces, = yield [Request("allgather", block[lo:hi], links.cross, f"{name}.cross")]
    spread, = yield [Request("allgather", pieces, links.intra, f"{name}.spread")]
    return plan.assemble(spread, ops)


# --- the public functions --------------------------------------------------------------------------------
def allreduce_async(tensor, hvd, op="average", name=None, process_set=None, inplace=False):
    """Start Horovod's flat allreduce (over ``process_set``, default the global set); an engine Flight.

    ``inplace=True`` writes the result into ``tensor`` where the framework
    allows it (torch; TensorFlow tensors are immutable and get a new one):
    it saves allocating and copying an output buffer, which for large
    messages costs more than the reduction itself on a small machine.
    """
    link = _world_link(hvd, process_set)
    exchange = reduce_exchange(tensor, Links(link), _named(name, "allreduce"), _scale(op, link.size), inplace)
    return Flight(HorovodTransport(hvd), exchange)


def allreduce(tensor, hvd, op="average", name=None, process_set=None, inplace=False):
    """Horovod's flat allreduce; returns the result (``tensor`` itself when done in place)."""
    return allreduce_async(tensor, hvd, op, name, process_set, inplace).wait()


def hierarchical_allreduce_async(tensor, hvd, topology, op="average", name=None, inplace=False):
    """Start the node-then-cluster allreduce described in the module docstring.

    ``inplace`` as for :func:`allreduce_async`; on the three-step path the
    result is copied back into ``tensor`` at the end.
    """
    scale = _scale(op, topology.size)
    exchange = reduce_exchange(tensor, _links(hvd, topology), _named(name, "allreduce"), scale, inplace)
    return Flight(HorovodTransport(hvd), exchange)


def hierarchical_allreduce(tensor, hvd, topology, op="average", name=None, inplace=False):
    """Allreduce inside nodes, then across them; equals the flat allreduce."""
    return hierarchical_allreduce_async(tensor, hvd, topology, op, name, inplace).wait()


def allgather_async(tensor, hvd, name=None, process_set=None):
    """Start Horovod's flat allgather (over ``process_set``, default the global set)."""
    exchange = gather_exchange(tensor, Links(_world_link(hvd, process_set)), None, _named(name, "allgather"))
    return Flight(HorovodTransport(hvd), exchange)


def allgather(tensor, hvd, name=None, process_set=None):
    """Horovod's flat allgather: first dimensions may differ between ranks."""
    return allgather_async(tensor, hvd, name, process_set).wait()


def hierarchical_allgather_async(tensor, hvd, topology, name=None):
    """Start the node-then-cluster allgather (see :func:`gather_exchange`)."""
    exchange = gather_exchange(tensor, _links(hvd, topology), topology, _named(name, "allgather"))
    return Flight(HorovodTransport(hvd), exchange)


def hierarchical_allgather(tensor, hvd, topology, name=None):
    """Allgather through the nodes; equals the flat allgather (global rank order)."""
    return hierarchical_allgather_async(tensor, hvd, topology, name).wait()
