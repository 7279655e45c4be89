"""Flat and hierarchical (node-then-cluster) collectives over Horovod process sets.

The functions take the Horovod module (``horovod.torch`` or
``horovod.tensorflow``) and use only ``allreduce/reducescatter/allgather`` with
``process_set=``, so both front ends share them. Where the module has
``*_async`` variants (torch) a collective starts without blocking; otherwise
(TensorFlow, whose Horovod ops run eagerly) it has finished when the call
returns.

Async form: every ``*_async`` function returns a :class:`Handle`. A
hierarchical collective is a chain of Horovod ops; the first starts in the
call, and each later one starts when the handle notices its predecessor has
finished: in ``handle.poll()`` (non-blocking, returns whether all is done) or
``handle.wait()`` (blocks, returns the result). An optimizer can start many
handles during backward, ``poll()`` them from its hooks to keep the chains
moving, and ``wait()`` in ``step()``.

Pass a stable ``name`` per logical tensor (e.g. the bucket's): Horovod's
response cache only recognises a repeated name, and an unnamed op gets a fresh
auto-generated one each call, so every call pays the full negotiation.

Hierarchical allreduce (Horovod process sets from :mod:`hvdkit.topology`):

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
import os
import time

from hvdkit import _frameworks

OPS = ("average", "sum")
# Handle.wait: yield-poll this long per op, then sleep this fraction of the
# time waited so far, at least _MIN_SLEEP_S (see Handle.wait for why).
_SPIN_S = 1e-3
_SLEEP_FRACTION = 0.02
_MIN_SLEEP_S = 20e-6

__all__ = [
    "OPS",
    "Handle",
    "allgather",
    "allgather_async",
    "allreduce",
    "allreduce_async",
    "hierarchical_allgather",
    "hierarchical_allgather_async",
    "hierarchical_allreduce",
    "hierarchical_allreduce_async",
]


class _Native:
    """A Horovod async handle still to be resolved with ``hvd.synchronize``."""

    __slots__ = ("handle",)

    def __init__(self, handle):
        self.handle = handle


class Handle:
    """A collective in flight: a chain of Horovod ops run one after another."""

    __slots__ = ("_hvd", "_inflight", "_result", "_steps")

    def __init__(self, hvd, started, steps=()):
        self._hvd = hvd  # resolves native handles (poll / synchronize)
        self._inflight = None  # native handle of the running op, if any
        self._result = None  # output of the last finished op
        self._steps = list(steps)  # remaining ops: each maps the previous output to a started op
        self._take(started)

    def _take(self, started):
        if isinstance(started, _Native):
            self._inflight = started.handle
        else:
            self._result = started

    def poll(self):
        """Advance the chain without blocking; True once the result is ready."""
        while True:
            if self._inflight is not None:
                if not self._hvd.poll(self._inflight):
                    return False
                self._result = self._hvd.synchronize(self._inflight)
                self._inflight = None
            if not self._steps:
                return True
            self._take(self._steps.pop(0)(self._result))

    def wait(self):
        """Block until the chain has finished; return its result.

        For the first millisecond of each op it polls with ``sched_yield``,
        like ``hvd.synchronize``, so short ops see no extra latency. After
        that it sleeps between polls, each sleep 2 % of the time waited so
        far (at least 20 us), so completion is noticed at most ~2 % late.
        A caller that keeps spinning competes for the CPU with Horovod's
        background thread, which does the work: on the 2-core machine under
        load from other processes, spinning made 16-64 MiB allreduces 2x
        slower (benchmarks/README.md, section "allreduce").
        """
        started = time.perf_counter()
        while True:
            remaining = len(self._steps)
            if self.poll():
                return self._result
            now = time.perf_counter()
            if len(self._steps) != remaining:  # the next op of the chain started
                started = now
            waited = now - started
            if waited < _SPIN_S:
                os.sched_yield()
            else:
                time.sleep(max(_MIN_SLEEP_S, _SLEEP_FRACTION * waited))


def _reduce_op(hvd, op):
    if not isinstance(op, str) or op.lower() not in OPS:
        raise ValueError(f"op must be one of {', '.join(map(repr, OPS))}, got {op!r}")
    return hvd.Average if op.lower() == "average" else hvd.Sum


def _subname(name, suffix):
    return None if name is None else f"{name}.{suffix}"


def _start_allreduce(hvd, tensor, op, process_set, name, postscale=1.0, inplace=False):
    kwargs = dict(name=name, op=op, process_set=process_set, postscale_factor=postscale)
    if inplace and hasattr(hvd, "allreduce_async_"):
        return _Native(hvd.allreduce_async_(tensor, **kwargs))
    if hasattr(hvd, "allreduce_async"):
        return _Native(hvd.allreduce_async(tensor, **kwargs))
    return hvd.allreduce(tensor, **kwargs)


def _start_reducescatter(hvd, tensor, op, process_set, name):
    if hasattr(hvd, "reducescatter_async"):
        return _Native(hvd.reducescatter_async(tensor, name=name, op=op, process_set=process_set))
    return hvd.reducescatter(tensor, name=name, op=op, process_set=process_set)


def _start_allgather(hvd, tensor, process_set, name):
    if hasattr(hvd, "allgather_async"):
        return _Native(hvd.allgather_async(tensor, name=name, process_set=process_set))
    return hvd.allgather(tensor, name=name, process_set=process_set)


def allreduce_async(tensor, hvd, op="average", name=None, process_set=None, inplace=False):
    """Start Horovod's flat allreduce (over ``process_set``, default the global set).

    ``inplace=True`` writes the result into ``tensor`` where the framework
    allows it (torch; TensorFlow tensors are immutable and get a new one):
    it saves allocating and copying an output buffer, which for large
    messages costs more than the reduction itself on a small machine.
    """
    process_set = hvd.global_process_set if process_set is None else process_set
    return Handle(hvd, _start_allreduce(hvd, tensor, _reduce_op(hvd, op), process_set, name, inplace=inplace))


def allreduce(tensor, hvd, op="average", name=None, process_set=None, inplace=False):
    """Horovod's flat allreduce; returns the result (``tensor`` itself when done in place)."""
    return allreduce_async(tensor, hvd, op, name, process_set, inplace).wait()


def hierarchical_allreduce_async(tensor, hvd, topology, op="average", name=None, inplace=False):
    """Start the node-then-cluster allreduce described in the module docstring.

    ``inplace`` as for :func:`allreduce_async`; on the three-step path the
    result is copied back into ``tensor`` at the end.
    """
    reduce_op = _reduce_op(hvd, op)
    if not topology.hierarchical:
        return Handle(hvd, _start_allreduce(hvd, tensor, reduce_op, hvd.global_process_set, name, inplace=inplace))
    fw = _frameworks.of(tensor)
    shape = fw.shape(tensor)
    postscale = 1.0 / topology.size if reduce_op == hvd.Average else 1.0
    flat = fw.reshape(tensor, (-1,))
    return Handle(hvd, _start_reducescatter(hvd, flat, hvd.Sum, topology.intra_node_set, _subname(name, "rs")), [
        lambda share: _start_allreduce(hvd, share, hvd.Sum, topology.cross_node_set, _subname(name, "xar"),
                                       postscale),
        lambda share: _start_allgather(hvd, share, topology.intra_node_set, _subname(name, "ag")),
        lambda whole: fw.copy_into(tensor, whole) if inplace else fw.reshape(whole, shape),
    ])


def hierarchical_allreduce(tensor, hvd, topology, op="average", name=None, inplace=False):
    """Allreduce inside nodes, then across them; equals the flat allreduce."""
    return hierarchical_allreduce_async(tensor, hvd, topology, op, name, inplace).wait()


def allgather_async(tensor, hvd, name=None, process_set=None):
    """Start Horovod's flat allgather (over ``process_set``, default the global set)."""
    process_set = hvd.global_process_set if process_set is None else process_set
    return Handle(hvd, _start_allgather(hvd, tensor, process_set, name))


def allgather(tensor, hvd, name=None, process_set=None):
    """Horovod's flat allgather: first dimensions may differ between ranks."""
    return allgather_async(tensor, hvd, name, process_set).wait()


def hierarchical_allgather_async(tensor, hvd, topology, name=None):
    """Start the node-then-cluster allgather (see :func:`hierarchical_allgather`)."""
    if not topology.hierarchical:
        return allgather_async(tensor, hvd, name)
    gather = _HierarchicalGather(hvd, topology, tensor, name)
    return Handle(hvd, gather.start(), [gather.node_block, gather.cross_nodes, gather.spread, gather.assemble])


def hierarchical_allgather(tensor, hvd, topology, name=None):
    """Allgather through the nodes; equals the flat allgather (global rank order).

    Inside the node the ranks first gather the node's block; then each local
    rank carries only its ``1/local_size`` piece of that block to the other
    nodes (so each node's data crosses between nodes once), and a final
    gather inside the node completes every rank's copy. A small allgather of
    row counts comes first, so ranks may contribute different numbers of rows.
    """
    return hierarchical_allgather_async(tensor, hvd, topology, name).wait()


class _HierarchicalGather:
    """The steps of one hierarchical allgather and the row bookkeeping between them."""

    __slots__ = ("_hvd", "_topology", "_fw", "_tensor", "_name", "_rows")

    def __init__(self, hvd, topology, tensor, name):
        self._hvd = hvd
        self._topology = topology
        self._fw = _frameworks.of(tensor)  # tensor ops of the tensor's framework
        self._tensor = tensor
        self._name = name
        self._rows = None  # rows contributed by each global rank, known after start()

    def start(self):
        """Gather every rank's row count (tiny), so pieces can be cut the same way everywhere."""
        rows = self._fw.int64_tensor_like(self._tensor, [self._fw.shape(self._tensor)[0]])
        return _start_allgather(self._hvd, rows, self._hvd.global_process_set, _subname(self._name, "rows"))

    def node_block(self, all_rows):
        self._rows = [int(r) for r in self._fw.to_list(all_rows)]
        return _start_allgather(self._hvd, self._tensor, self._topology.intra_node_set,
                                _subname(self._name, "node"))

    def cross_nodes(self, block):
        """Local rank j carries piece j of its node's block to the other nodes."""
        topo = self._topology
        lo, hi = self._piece_bounds(topo.node, topo.local_rank)
        return _start_allgather(self._hvd, block[lo:hi], topo.cross_node_set, _subname(self._name, "cross"))

    def spread(self, pieces):
        return _start_allgather(self._hvd, pieces, self._topology.intra_node_set, _subname(self._name, "spread"))

    def _piece_bounds(self, k, j):
        """Rows [lo, hi) of node k's block that local rank j carries across nodes."""
        total = sum(self._rows[r] for r in self._topology.nodes[k])
        parts = self._topology.local_size
        return j * total // parts, (j + 1) * total // parts

    def _cross_order(self, j):
        """Nodes in the order the cross-node set of local rank j lists them (by global rank)."""
        nodes = self._topology.nodes
        return sorted(range(len(nodes)), key=lambda k: nodes[k][j])

    def assemble(self, gathered):
        """Cut the spread pieces back into node blocks, then into global rank order."""
        topo, fw = self._topology, self._fw
        pieces, offset = {}, 0
        for j in range(topo.local_size):
            for k in self._cross_order(j):
                lo, hi = self._piece_bounds(k, j)
                pieces[k, j] = gathered[offset:offset + hi - lo]
                offset += hi - lo
        blocks = [fw.concat([pieces[k, j] for j in range(topo.local_size)]) for k in range(topo.num_nodes)]
        if topo.contiguous:
            return fw.concat(blocks)
        by_rank = {}
        for k, members in enumerate(topo.nodes):
            start = 0
            for r in members:
                by_rank[r] = blocks[k][start:start + self._rows[r]]
                start += self._rows[r]
        return fw.concat([by_rank[r] for r in range(topo.size)])
