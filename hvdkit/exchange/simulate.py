"""Many ranks in one process: hvdkit's exchanges with the collectives computed in memory.

``SimulatedWorld(size, ranks_per_node)`` gives each simulated rank a transport
and the links (world, node, cross-node) of the same layout
``hvdkit.topology`` builds, so ``Reducer``s run unchanged; ``run(fn)`` calls
``fn(rank)`` for every rank in its own thread, where collectives block until
every member has posted, as on real ranks. Sums follow Horovod's order-free
contract in rank order (float16 added pairwise in float32, as Horovod's MPI
float16 sum does). Framework-neutral: torch and TensorFlow tensors are
combined through their ``TensorOps`` (``ops_for``), so one simulator serves both front
ends. Tests compare real multi-rank runs against it; it also answers what-if
questions ("what does topk:0.001 do at 64 ranks?") without MPI.
"""
import itertools
import threading
import time
import types

from hvdkit.compression.tensor_ops import ops_for
from hvdkit.exchange.options import hierarchical_links
from hvdkit.exchange.strategies import Link, Request, shares
from hvdkit.topology import topology_for

__all__ = ["MirrorTransport", "SimulatedWorld"]


class SimulatedWorld:
    """``size`` ranks in nodes of ``ranks_per_node`` consecutive ranks (default: one node), or in the
    explicit ``nodes`` (tuples of global ranks) of any layout a real launch could produce."""

    def __init__(self, size, ranks_per_node=None, timeout=120.0, nodes=None):
        if nodes is None:
            ranks_per_node = ranks_per_node or size
            if size < 1 or size % ranks_per_node:
                raise ValueError(f"ranks_per_node={ranks_per_node} must divide size={size}")
            nodes = [tuple(range(s, s + ranks_per_node)) for s in range(0, size, ranks_per_node)]
        elif sorted(r for n in nodes for r in n) != list(range(size)):
            raise ValueError(f"nodes {nodes!r} must hold each of the ranks 0..{size - 1} once")
        self.size = size
        self.nodes = sorted(tuple(sorted(n)) for n in nodes)
        self.timeout = timeout  # seconds a collective may wait for its members
        self._cond = threading.Condition()
        self._posted = {}  # (ranks of the set, request name) -> {rank: Request} until every member posted
        self._results = {}  # (ranks of the set, request name, rank) -> output, until that rank collects it
        self._asked = {}  # (ranks of the set, request name, rank) -> when done() was first asked about it
        self._failed = False  # a rank raised: the others stop waiting

    # --- layout ------------------------------------------------------------------
    def topology(self, rank):
        """``rank``'s Topology, built as ``hvdkit.topology`` builds it; process sets are sorted rank tuples."""
        return topology_for(rank, self.nodes, process_set=lambda ranks: tuple(sorted(ranks)))

    def links(self, rank, hierarchical=False):
        """Links of ``rank``; node and cross-node sets only when ``hierarchical`` and useful."""
        horovod = types.SimpleNamespace(global_process_set=tuple(range(self.size)))
        return hierarchical_links(horovod, self.topology(rank), bool(hierarchical))

    def transport(self, rank):
        return _Transport(self, rank)

    def run(self, fn):
        """[fn(0), ..., fn(size-1)], each in its own thread; re-raises the first failure."""
        results, errors = [None] * self.size, []

        def body(rank):
            try:
                results[rank] = fn(rank)
            except BaseException as err:  # noqa: BLE001  (reported to the caller below)
                errors.append(err)
                with self._cond:
                    self._failed = True
                    self._cond.notify_all()

        threads = [threading.Thread(target=body, args=(r,), name=f"sim-rank-{r}") for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._failed = False
        if errors:
            raise errors[0]
        return results

    # --- collectives ---------------------------------------------------------------
    def _post(self, rank, request):
        """Post ``rank``'s part of a collective; returns the key to collect its output with.
        Names are scoped by process set, as Horovod's are."""
        members = request.link.process_set
        key = (members, request.name)
        with self._cond:
            posted = self._posted.setdefault(key, {})
            posted[rank] = request
            if len(posted) == len(members):
                del self._posted[key]
                ordered = [posted[r] for r in members]
                for r, output in zip(members, _compute(ordered, members)):
                    self._results[key + (r,)] = output
                self._cond.notify_all()
        return key + (rank,)

    def _ready(self, key):
        """Whether collecting ``key`` would not block: its result is in, a rank failed, or it has
        waited past the timeout (collecting then raises)."""
        with self._cond:
            first = self._asked.setdefault(key, time.monotonic())
            return key in self._results or self._failed or time.monotonic() - first > self.timeout

    def _collect(self, key):
        with self._cond:
            self._cond.wait_for(lambda: key in self._results or self._failed, self.timeout)
            if key not in self._results:
                reason = "another rank failed" if self._failed else f"waited {self.timeout} s"
                raise TimeoutError(f"simulated collective {key[1]!r} over ranks {key[0]}: rank {key[2]} stopped "
                                   f"waiting ({reason})")
            result = self._results.pop(key)
            self._asked.pop(key, None)
        if isinstance(result, _Refused):
            raise RuntimeError(f"simulated collective {key[1]!r}: {result.message}")
        return result


class _Refused:
    """What every member gets when their tensors do not match (Horovod raises on every rank then)."""

    def __init__(self, message):
        self.message = message


def _dtype_name(tensor):
    return getattr(tensor.dtype, "name", str(tensor.dtype).replace("torch.", ""))


def _mismatch(kind, tensors, fw):
    """Horovod's own check: a reduction needs one dtype and one shape on every rank."""
    if kind not in ("allreduce", "reducescatter"):
        return None
    dtypes = sorted({_dtype_name(t) for t in tensors})
    if len(dtypes) > 1:
        return f"Mismatched data types: the ranks sent {', '.join(dtypes)}"
    shapes = sorted({tuple(fw.shape(t)) for t in tensors})
    if len(shapes) > 1:
        return f"Mismatched {kind} tensor shapes: the ranks sent {', '.join(map(str, shapes))}"
    return None


def _sum(tensors):
    fw = ops_for(tensors[0])
    total = fw.copy(tensors[0])
    for t in tensors[1:]:
        total = fw.add_ranks(total, t)
    return total


def _compute(requests, members):
    """Outputs for every member, in member order."""
    kind = requests[0].kind
    tensors = [r.tensor for r in requests]
    if kind == "object":
        return [list(tensors) for _ in members]
    fw = ops_for(tensors[0])
    refused = _mismatch(kind, tensors, fw)
    if refused is not None:
        return [_Refused(refused) for _ in members]
    if kind == "allreduce":
        total = _sum(tensors)
        if requests[0].scale != 1.0:  # Horovod's postscale_factor
            total = fw.scale(total, requests[0].scale)
        return [fw.copy(total) for _ in members]
    if kind == "allgather":
        gathered = fw.concat_rows([fw.reshape(t, (-1,)) if len(fw.shape(t)) <= 1 else t for t in tensors])
        return [fw.copy(gathered) for _ in members]
    if kind == "alltoall":
        return _alltoall(requests, fw)
    if kind == "reducescatter":
        total = _sum(tensors)
        bounds = list(itertools.accumulate([0] + shares(fw.numel(total), len(members))))
        return [fw.copy(total[bounds[i]:bounds[i + 1]]) for i in range(len(members))]
    raise ValueError(f"unknown collective {kind!r}")


def _alltoall(requests, fw):
    """Member j receives every member's j-th piece (its ``splits[j]`` rows), in member order."""
    pieces = []
    for request in requests:
        bounds = list(itertools.accumulate([0] + list(request.splits)))
        pieces.append([request.tensor[bounds[j]:bounds[j + 1]] for j in range(len(requests))])
    return [fw.concat_rows([pieces[r][j] for r in range(len(requests))]) for j in range(len(requests))]


class _Transport:
    """One simulated rank's view of the world (the interface of hvdkit.exchange.engine.HorovodTransport)."""

    def __init__(self, world, rank):
        self.world = world
        self.rank = rank
        self.started = 0  # collectives this rank started (Horovod needs equal counts on every rank)
        self._objects = itertools.count()  # names allgather_object calls in order (same on every rank)

    def start(self, request):
        self.started += 1
        return self.world._post(self.rank, request)

    def done(self, key):
        return self.world._ready(key)

    def result(self, key):
        return self.world._collect(key)

    def allgather_object(self, obj):
        everyone = Link(tuple(range(self.world.size)), self.world.size, self.rank)
        name = f"object.{next(self._objects)}"
        return self.result(self.start(Request("object", obj, everyone, name)))


class MirrorTransport:
    """One rank of a world in which every rank holds what this one holds.

    Runs the real exchanges of worlds far too large to simulate rank by rank (1,024 ranks) with outputs
    of the right shapes and plausible values (a sum is ``size`` times this rank's tensor), and records
    every request it is given: the scale model (:mod:`hvdkit.exchange.scale`) counts each hop's bytes
    from them. Each request's link says the group size and this rank's position in it.
    """

    def __init__(self):
        self.requests = []  # every Request started, in order

    def start(self, request):
        self.requests.append(request)
        return _mirrored(request)

    def done(self, output):
        return True

    def result(self, output):
        return output

    def allgather_object(self, obj):
        raise RuntimeError("MirrorTransport has no peers to compare objects with")


def _mirrored(request):
    """This rank's output of ``request`` when every member sent the same tensor."""
    fw, size, tensor = ops_for(request.tensor), request.link.size, request.tensor
    if request.kind == "allreduce":
        return fw.scale(tensor, size * request.scale)
    if request.kind == "reducescatter":
        bounds = list(itertools.accumulate([0] + shares(fw.numel(tensor), size)))
        position = request.link.position
        return fw.scale(tensor[bounds[position]:bounds[position + 1]], size)
    if request.kind == "allgather":
        return fw.concat_rows([fw.reshape(tensor, (-1,)) if len(fw.shape(tensor)) <= 1 else tensor] * size)
    if request.kind == "alltoall":
        bounds = list(itertools.accumulate([0] + list(request.splits)))
        position = request.link.position
        return fw.concat_rows([tensor[bounds[position]:bounds[position + 1]]] * size)
    raise ValueError(f"unknown collective {request.kind!r}")
