"""The scale model: what one gradient exchange costs each rank at any world size, from the real code.

:func:`traffic` runs one rank's exchange of a bucket through the real
strategies and compressors on a :class:`~hvdkit.exchange.simulate.MirrorTransport`
(every other rank holds what this one holds), so the requests it records are
the ones a real run of that size would issue; each becomes a :class:`Hop`
with the bytes this rank sends and receives (ring and pairwise algorithms,
:mod:`hvdkit.exchange.cost`) and the part of them that crosses between nodes.
The kernels' time is measured while it runs, on this machine.

:func:`predict` prices the hops with an alpha-beta model of two link classes,
inside a node and between nodes. Nodes hold ``ranks_per_node`` consecutive
ranks and one network interface each, which all their cross-node traffic
shares; a ring over ranks of several nodes moves its per-link volume through
every node's interface, an alltoall sends (p-G)/(p-1) of its bytes off the
node. Contention beyond that, overlap with backward and the GPU's speed are
not modelled: the numbers compare exchanges with each other, not with a
particular cluster.

Routes: ``ring`` (Horovod's dense allreduce), ``allreduce`` (a summable
compressor's payloads allreduced), ``allgather``, ``two_phase``, and
``hierarchical`` (dense inside nodes, compressed between them: the sharded
route, with the cross-node hop chosen as the Reducer chooses it, or PowerSGD's
matrix-sharded route).
"""
import dataclasses

from hvdkit.compression import registry
from hvdkit.compression.state import BucketState
from hvdkit.compression.tensor_ops import ops_for
from hvdkit.exchange import cost, strategies
from hvdkit.exchange.engine import Flight
from hvdkit.exchange.simulate import MirrorTransport
from hvdkit.exchange.stats import StatsMeter
from hvdkit.exchange.strategies import Link, Links

__all__ = ["Hop", "Traffic", "ROUTES", "INTRA_NODE", "traffic", "predict", "routes_for"]

ROUTES = ("ring", "allreduce", "allgather", "two_phase", "hierarchical")
# Inside a node: shared memory or NVLink class links, latency a few microseconds.
INTRA_NODE = cost.Network(latency_s=5e-6, gbit=400.0)
_MEMORY_BUDGET = 256 * 2**20  # bytes an allgather's output may take in the mirror run before the bucket shrinks


@dataclasses.dataclass(frozen=True)
class Hop:
    """One collective of the exchange, as one rank sees it."""

    kind: str  # "allreduce", "reducescatter", "allgather" or "alltoall"
    scope: str  # "world", "node" (inside this rank's node) or "cross" (one rank per node)
    peers: int  # ranks in the group
    sent: float  # bytes this rank sends
    received: float  # bytes this rank receives
    cross_sent: float  # of ``sent``, the bytes that leave the node


@dataclasses.dataclass(frozen=True)
class Traffic:
    """One rank's exchange of one bucket."""

    hops: tuple
    kernel_s: float  # compression kernels' time on this machine

    @property
    def bytes_per_rank(self):
        return sum(h.sent + h.received for h in self.hops)

    @property
    def cross_node_bytes_per_rank(self):
        return 2 * sum(h.cross_sent for h in self.hops)  # received as much as sent, for these algorithms


def routes_for(spec):
    """The routes that apply to compression ``spec`` (a string)."""
    compressor = registry.create(spec, None)
    if compressor.name == "none":
        return ("ring", "hierarchical")
    if compressor.summable:
        return ("allreduce", "hierarchical")
    routes = ("allgather", "hierarchical")
    return routes[:1] + ("two_phase",) + routes[1:] if compressor.chunk_grain is not None else routes


def traffic(spec, route, ranks, ranks_per_node, tensor, layout=()):
    """Run one rank's exchange of ``tensor`` (a flat float32 bucket with tensor ``layout``) with ``spec`` on
    ``route`` among ``ranks`` ranks in nodes of ``ranks_per_node``; its Traffic. An allgather's output
    grows with the ranks: a bucket too large for the memory budget is exchanged in part, and its bytes
    and time scaled back up (exact for an allgather, whose bytes are proportional to the bucket)."""
    ops = ops_for(tensor)
    numel = ops.numel(tensor)
    compressor = registry.create(spec, ops)
    if route not in routes_for(spec):
        raise ValueError(f"route {route!r} does not apply to {spec!r}; choose one of {', '.join(routes_for(spec))}")
    part = numel
    if route == "allgather":
        budget = max(1, _MEMORY_BUDGET // max(1, ranks))
        part = min(numel, _round_to_grain(budget // 4, compressor))
    tensor = ops.slice(tensor, 0, part)
    links, scopes = _mirror_links(ranks, ranks_per_node)
    meter, transport = StatsMeter(), MirrorTransport()
    exchange = _exchange(compressor, route, tensor, layout if part == numel else (), links, meter)
    Flight(transport, exchange).wait()
    factor = numel / part if part else 1.0
    hops = tuple(_hop(r, scopes, ranks_per_node, factor) for r in transport.requests)
    return Traffic(hops, meter.kernel_s * factor)


def _round_to_grain(numel, compressor):
    grain = compressor.chunk_grain or 1
    return max(grain, numel // grain * grain)


def _mirror_links(ranks, ranks_per_node):
    """Links of rank 0 of ``ranks`` ranks in nodes of ``ranks_per_node``, and the scope of each."""
    local = min(ranks_per_node, ranks)
    nodes = ranks // local
    world = Link(("world", ranks), ranks, 0)
    if nodes == 1 or local == 1:
        return Links(world), {id(world): "world"}
    intra, cross = Link(("node", local), local, 0), Link(("cross", nodes), nodes, 0)
    return Links(world, intra, cross), {id(world): "world", id(intra): "node", id(cross): "cross"}


def _exchange(compressor, route, tensor, layout, links, meter):
    ops = compressor.ops
    numel = ops.numel(tensor)
    if route in ("ring", "allreduce", "allgather") or (route == "hierarchical" and links.intra is None):
        state = BucketState(numel, layout, links.world.size, 0)
        return strategies.flat(compressor, tensor, state, links.world, "scale", meter, False)
    if route == "two_phase":
        return strategies.two_phase(compressor, tensor, BucketState(numel, layout, links.world.size, 0),
                                    links.world, "scale", meter, False)
    if not compressor.elementwise:
        assignment = strategies.assign_matrices(layout, links.intra.size)
        if assignment is None:
            state = BucketState(numel, layout, links.cross.size, 0)
            return strategies.replicated(compressor, tensor, state, links, "scale", meter, True)
        mine = assignment[links.intra.position]
        shapes = dict(layout)
        own, start = [], 0
        for offset, count in mine:
            own.append((start, shapes[offset]))
            start += count
        state = BucketState(start, tuple(own), links.cross.size, 0)
        return strategies.matrix_sharded(compressor, tensor, state, links, "scale", meter, True, assignment)
    share = strategies.shares(numel, links.intra.size)[0]
    two = cost.prefer_two_phase(compressor, share, links.cross.size)
    state = BucketState(share, (), links.cross.size, 0)
    return strategies.sharded(compressor, tensor, state, links, "scale", meter, False,
                              cross=strategies.two_phase if two else strategies.flat)


def _hop(request, scopes, ranks_per_node, factor):
    """The Hop of one recorded request, its bytes scaled by ``factor``."""
    scope, peers = scopes[id(request.link)], request.link.size
    nbytes = strategies.nbytes(request.tensor) * factor
    sent = nbytes * cost.bytes_factor(request.kind, peers)
    per_node = {"cross": 1, "world": ranks_per_node}.get(scope)
    cross = sent * cost.cross_node_fraction(request.kind, peers, per_node)
    return Hop(request.kind, scope, peers, sent, sent, cross)


def predict(traffic_, ranks_per_node, cross_node=cost.DEFAULT_NETWORK, intra_node=INTRA_NODE):
    """Modelled seconds of the exchange: each hop's messages times the latency of the links it uses,
    plus its bytes over the slower of the node's interface (shared by the node's ranks) and its intra-node
    links; hops run one after another; kernel time added as measured."""
    seconds = traffic_.kernel_s
    for hop in traffic_.hops:
        crosses = hop.cross_sent > 0
        latency = (cross_node if crosses else intra_node).latency_s
        seconds += cost.messages(hop.kind, hop.peers) * latency
        interface = hop.cross_sent * ranks_per_node  # every rank of the node sends through it at once
        seconds += max(interface / cross_node.bytes_per_s, (hop.sent - hop.cross_sent) / intra_node.bytes_per_s)
    return seconds
