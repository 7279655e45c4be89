"""Where each rank sits: world, node and local ranks, and Horovod process sets.

``init(hvd)`` finds which ranks share a node (mpi4py's
``Split_type(COMM_TYPE_SHARED)`` under an MPI launcher; horovodrun's
``HOROVOD_*`` variables under Gloo), applies hvdkit's Horovod settings
(:mod:`hvdkit.runtime.horovod_env`), and initialises Horovod with two kinds of process
sets so hierarchical collectives run through Horovod itself:

* intra-node: the ranks of one node;
* cross-node: the ranks with the same local rank, one per node.

``HVDKIT_RANKS_PER_NODE=K`` replaces the real layout with emulated nodes of
``K`` consecutive ranks, so the hierarchical paths run on one host.

Nothing here touches MPI at import time; communicators exist only inside
``init``. Horovod's own ``hvd.local_rank()`` knows nothing of emulation: use
the Topology's fields.
"""
import dataclasses
import os
import threading

from hvdkit.runtime import abort
from hvdkit.runtime import horovod_env

ENV_RANKS_PER_NODE = "HVDKIT_RANKS_PER_NODE"

__all__ = ["ENV_RANKS_PER_NODE", "Topology", "current", "horovod", "init"]


@dataclasses.dataclass(frozen=True)
class Topology:
    """This rank's place in the job; the same layout is known on every rank."""

    rank: int  # global rank, as hvd.rank()
    size: int  # world size, as hvd.size()
    local_rank: int  # position among the ranks of this node (sorted by global rank)
    local_size: int  # ranks on this node
    node: int  # this node's index; nodes are numbered by their lowest global rank
    num_nodes: int
    # Horovod ProcessSet over this node's ranks: hvd.global_process_set when
    # there is one node, None when the node has one rank or nodes differ in size.
    intra_node_set: object = None
    # Horovod ProcessSet over the ranks with this local rank: the global set
    # when every node has one rank, None with one node or unequal nodes.
    cross_node_set: object = None
    emulated: bool = False  # nodes come from HVDKIT_RANKS_PER_NODE, not the hardware
    # Global ranks of every node, ``nodes[k]`` sorted: lets collectives map
    # process-set order back to global rank order.
    nodes: tuple = ()
    launcher: str = "mpi"  # "mpi" or "gloo": where the layout came from

    @property
    def homogeneous(self):
        """Every node has the same number of ranks (required for the hierarchical path)."""
        return len({len(n) for n in self.nodes}) <= 1

    @property
    def hierarchical(self):
        """Whether node-then-cluster collectives differ from flat ones here."""
        return self.num_nodes > 1 and self.local_size > 1 and self.homogeneous

    @property
    def contiguous(self):
        """Node ``k`` holds ranks ``k*local_size ... (k+1)*local_size-1`` (block mapping)."""
        flat = [r for n in self.nodes for r in n]
        return flat == list(range(self.size))


def layout_from_node_keys(keys):
    """Group ranks by node key: ``keys[r]`` identifies rank r's node.

    Returns a tuple of sorted rank tuples, nodes ordered by their lowest rank.
    """
    groups = {}
    for rank, key in enumerate(keys):
        groups.setdefault(key, []).append(rank)
    return tuple(sorted(tuple(ranks) for ranks in groups.values()))


def emulated_layout(size, ranks_per_node):
    """Nodes of ``ranks_per_node`` consecutive ranks."""
    return tuple(tuple(range(start, start + ranks_per_node)) for start in range(0, size, ranks_per_node))


def parse_ranks_per_node(value, size):
    """``HVDKIT_RANKS_PER_NODE`` as an int dividing ``size``; None when unset or empty."""
    if value is None or value.strip() == "":
        return None
    valid = [k for k in range(1, size + 1) if size % k == 0]
    try:
        k = int(value)
    except ValueError:
        k = None
    if k is None or k < 1 or size % k != 0:
        raise ValueError(
            f"{ENV_RANKS_PER_NODE}={value!r} must be a positive integer dividing the world size "
            f"{size}; valid values: {', '.join(map(str, valid))}")
    return k


def process_set_ranks(nodes):
    """The rank lists to register with Horovod for this layout.

    Only sets with more than one rank and fewer than all ranks are listed
    (one rank needs no communication; all ranks is the global set, which
    Horovod refuses to register twice), and only for equal-sized nodes: the
    cross-node sets pair up equal shares of a buffer, which needs every node
    to cut it into the same number of pieces.
    """
    size = sum(len(n) for n in nodes)
    local_size = len(nodes[0]) if nodes else 0
    if any(len(n) != local_size for n in nodes):
        return []
    intra = [list(n) for n in nodes]
    cross = [[n[i] for n in nodes] for i in range(local_size)]
    return [ranks for ranks in intra + cross if 1 < len(ranks) < size]


def topology_for(rank, nodes, emulated=False, launcher="mpi", process_set=None):
    """The Topology of ``rank`` in layout ``nodes``.

    ``process_set(ranks)`` maps a rank list to its Horovod ProcessSet (or the
    global set); without it the set fields stay None (used before Horovod
    starts and in tests of the layout logic).
    """
    size = sum(len(n) for n in nodes)
    node = next(k for k, members in enumerate(nodes) if rank in members)
    members = nodes[node]
    local_rank = members.index(rank)
    homogeneous = len({len(n) for n in nodes}) == 1
    intra = cross = None
    if process_set is not None and homogeneous:
        if len(members) > 1:
            intra = process_set(list(members))
        if len(nodes) > 1:
            cross = process_set([n[local_rank] for n in nodes])
    return Topology(rank=rank, size=size, local_rank=local_rank, local_size=len(members), node=node,
                    num_nodes=len(nodes), intra_node_set=intra, cross_node_set=cross, emulated=emulated,
                    nodes=tuple(nodes), launcher=launcher)


def detect_launcher(environ=None):
    """``"gloo"`` under horovodrun's Gloo controller, else ``"mpi"``."""
    environ = os.environ if environ is None else environ
    if "HOROVOD_GLOO_RENDEZVOUS_ADDR" in environ or environ.get("HOROVOD_CONTROLLER", "").lower() == "gloo":
        return "gloo"
    return "mpi"


def _gloo_world(environ):
    """(rank, size, nodes) from horovodrun's variables.

    horovodrun numbers ranks host by host, so with equal slots per host node
    ``k`` holds ranks ``k*L ... k*L+L-1``. A rank cannot see other hosts' slot
    counts before Horovod starts, so unequal hosts are refused here (any rank
    that notices fails, and horovodrun stops the others).
    """
    rank, size = _gloo_rank_size(environ)
    local_size = int(environ.get("HOROVOD_LOCAL_SIZE", size))
    cross_size = int(environ.get("HOROVOD_CROSS_SIZE", 1))
    if local_size * cross_size != size:
        raise RuntimeError(
            f"hvdkit under horovodrun --gloo needs the same number of slots on every host: this rank sees "
            f"HOROVOD_LOCAL_SIZE={local_size}, HOROVOD_CROSS_SIZE={cross_size}, HOROVOD_SIZE={size}; "
            f"launch with mpirun, give every host equal slots, or set {ENV_RANKS_PER_NODE}")
    return rank, size, emulated_layout(size, local_size)


def _gloo_rank_size(environ):
    try:
        return int(environ["HOROVOD_RANK"]), int(environ["HOROVOD_SIZE"])
    except KeyError as err:
        raise RuntimeError(
            f"Horovod's Gloo controller is selected but {err.args[0]} is not set: launch with "
            "horovodrun --gloo (or hvdkit run --gloo)") from None


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise RuntimeError(f"hvdkit needs mpi4py to read the rank layout under MPI: {err}") from err
    return MPI


def _mpi_world():
    """(rank, size, nodes) from MPI: ranks sharing memory share a node."""
    MPI = _mpi()
    world = MPI.COMM_WORLD
    local = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.Get_rank())
    try:
        leader = local.bcast(world.Get_rank(), root=0)  # the node's lowest global rank
    finally:
        local.Free()
    keys = world.allgather(leader)
    return world.Get_rank(), world.Get_size(), layout_from_node_keys(keys)


def _world_without_layout(launcher, environ):
    """(rank, size) without building any communicator beyond MPI's world."""
    if launcher == "gloo":
        return _gloo_rank_size(environ)
    world = _mpi().COMM_WORLD
    return world.Get_rank(), world.Get_size()


def discover(environ=None):
    """(rank, nodes, emulated, launcher) for this process, before Horovod starts."""
    environ = os.environ if environ is None else environ
    launcher = detect_launcher(environ)
    if environ.get(ENV_RANKS_PER_NODE, "").strip():
        rank, size = _world_without_layout(launcher, environ)
        k = parse_ranks_per_node(environ[ENV_RANKS_PER_NODE], size)
        return rank, emulated_layout(size, k), True, launcher
    if launcher == "gloo":
        rank, _, nodes = _gloo_world(environ)
    else:
        rank, _, nodes = _mpi_world()
    return rank, nodes, False, launcher


_lock = threading.Lock()
_current = None  # the Topology init() built; None until then
_framework = None  # the Horovod module init() initialised (one per process)


def init(hvd, process_sets=None):
    """Compute the topology, start Horovod with its process sets, return the Topology.

    ``hvd`` is ``horovod.torch`` or ``horovod.tensorflow``; ``process_sets``: the user's own
    ``hvd.ProcessSet`` objects (or rank lists), registered with hvdkit's node sets, as
    ``hvd.init(process_sets=...)`` takes them (a user set equal to a node set is that set). Idempotent: later
    calls with the same module return the same Topology. If Horovod was
    already initialised by ``hvd.init()``, this works only where the layout
    needs no process sets beyond the global one (one node, or one rank per
    node): Horovod registers process sets only at init.
    """
    global _current, _framework
    with _lock:
        if _current is not None:
            if hvd is not _framework:
                raise RuntimeError(
                    f"hvdkit.topology.init: already initialised with {_framework.__name__}; "
                    f"one Horovod framework per process (got {getattr(hvd, '__name__', hvd)!r})")
            return _current
        abort_on_exception = abort.wanted()  # a bad HVDKIT_ABORT_ON_EXCEPTION stops here, before MPI starts
        already = hvd.is_initialized()
        if not already:
            horovod_env.apply_defaults()  # before discover(): MPI reads its settings when it starts
        rank, nodes, emulated, launcher = discover()
        if abort_on_exception:
            abort.install(rank, launcher)  # from here an uncaught exception ends the job, not just this rank
        wanted = process_set_ranks(nodes)
        if already:
            if wanted:
                raise RuntimeError(
                    "hvdkit.topology.init: Horovod is already initialised, so hvdkit cannot register the "
                    f"process sets this layout needs ({len(wanted)} sets over nodes {list(nodes)}); "
                    "call hvdkit.topology.init(hvd) instead of hvd.init()")
            registered = {}
        else:
            own = [s if isinstance(s, hvd.ProcessSet) else hvd.ProcessSet(s) for s in (process_sets or [])]
            registered = {tuple(ranks): hvd.ProcessSet(ranks) for ranks in wanted}
            registered.update({tuple(sorted(s.ranks)): s for s in own if tuple(sorted(s.ranks)) in registered})
            hvd.init(process_sets=list(registered.values()) + [s for s in own if s not in registered.values()])
        size = sum(len(n) for n in nodes)
        if (hvd.rank(), hvd.size()) != (rank, size):
            raise RuntimeError(
                f"hvdkit.topology.init: Horovod reports rank {hvd.rank()} of {hvd.size()}, but the launcher "
                f"gave rank {rank} of {size}")

        def process_set(ranks):
            return hvd.global_process_set if len(ranks) == size else registered[tuple(ranks)]

        _current = topology_for(rank, nodes, emulated, launcher, process_set)
        _framework = hvd
        return _current


def current():
    """The Topology ``init`` built; a RuntimeError before ``init``."""
    if _current is None:
        raise RuntimeError(
            "hvdkit topology is not initialised: call hvdkit.topology.init(hvd) first "
            "(hvd = horovod.torch or horovod.tensorflow)")
    return _current


def horovod():
    """The Horovod module ``init`` started (``horovod.torch`` or ``horovod.tensorflow``)."""
    current()
    return _framework
