"""What a front end checks before it builds an exchange, and the process sets the exchange runs over.

One set of defaults and argument checks for the torch optimizer, the
TensorFlow tape and exchange, and the Keras optimizer, so that all accept the
same values and word their errors the same way.
"""
from hvdkit import topology as _topology
from hvdkit.exchange.strategies import Link, Links

__all__ = ["DEFAULT_FUSION_MB", "NONFINITE_POLICIES", "check_exchange_arguments", "links", "process_set_links",
           "refuse_horovod_only_arguments"]

# Bucket size cap. Smaller buckets start communicating earlier in backward (more overlap) but pay
# Horovod's per-op latency more often; 25 MB is PyTorch DDP's default and a good middle.
DEFAULT_FUSION_MB = 25
NONFINITE_POLICIES = ("skip", "raise", "pass")
HIERARCHICAL_MODES = (True, False, "auto")


def check_nonfinite(nonfinite):
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {', '.join(map(repr, NONFINITE_POLICIES))}, got {nonfinite!r}")
    return nonfinite


def check_exchange_arguments(hierarchical, fusion_mb, nonfinite):
    """The arguments every front end shares: a bad value fails where it is given, naming it."""
    if hierarchical not in HIERARCHICAL_MODES or not isinstance(hierarchical, (bool, str)):
        raise ValueError(f"hierarchical must be True, False or 'auto', got {hierarchical!r}")
    if isinstance(fusion_mb, bool) or not isinstance(fusion_mb, (int, float)) or fusion_mb < 0:
        raise ValueError(f"fusion_mb must be a number >= 0, got {fusion_mb!r}")
    check_nonfinite(nonfinite)


def refuse_horovod_only_arguments(hvd, where, gradient_predivide_factor, groups, num_groups, process_set,
                                  process_sets_supported=False):
    """Horovod arguments the front ends accept for its call pattern but cannot honour: a clear error
    naming the argument (``where``: what is being built, e.g. "DistributedOptimizer")."""
    if gradient_predivide_factor != 1.0:
        raise ValueError(f"gradient_predivide_factor={gradient_predivide_factor!r} is not supported: hvdkit "
                         f"always divides by the world size before summing (so fp16 cannot overflow)")
    if groups is not None or num_groups:
        raise ValueError("groups / num_groups are not supported; use fusion_mb to size the fused buckets")
    if process_set is not None and process_set is not hvd.global_process_set and not process_sets_supported:
        raise ValueError(f"process_set: hvdkit's {where} reduces over all ranks only")


def hierarchical_links(hvd, topology, hierarchical):
    """``Links`` for the requested mode: ``True`` uses the node layout whenever it has several
    nodes of several ranks (emulated nodes included), ``"auto"`` only for real ones, ``False`` never."""
    if hierarchical not in HIERARCHICAL_MODES:
        raise ValueError(f"hierarchical must be True, False or 'auto', got {hierarchical!r}")
    per_node = topology.size // topology.num_nodes if topology.num_nodes > 1 else None  # for the step stats
    world = Link(hvd.global_process_set, topology.size, topology.rank, per_node)
    use = topology.hierarchical and (hierarchical is True or (hierarchical == "auto" and not topology.emulated))
    if not use:
        return Links(world)
    intra = Link(topology.intra_node_set, topology.local_size, topology.local_rank)
    cross_ranks = sorted(node[topology.local_rank] for node in topology.nodes)  # Horovod's order: by rank
    cross = Link(topology.cross_node_set, topology.num_nodes, cross_ranks.index(topology.rank), 1)
    return Links(world, intra, cross)


def process_set_links(hvd, process_set, hierarchical, init_name):
    """The Links of an exchange over ``process_set`` (None or the global set: ``links``). A smaller set
    exchanges flat among its ranks: its node sets are not registered. A rank outside the set exchanges
    nothing (a world of one), as Horovod's optimizer skips the allreduce there."""
    if process_set is None or process_set is hvd.global_process_set or process_set.process_set_id == 0:
        return links(hvd, hierarchical, init_name)
    if hierarchical is True:
        raise ValueError("hierarchical=True applies to the global process set only; a DistributedOptimizer on "
                         f"process set {process_set.ranks} exchanges flat among its ranks (pass hierarchical=False)")
    if not hvd.is_initialized():
        raise RuntimeError(f"hvdkit: Horovod is not initialised; call {init_name} first")
    ranks = process_set.ranks
    if ranks is not None and (hvd.rank() not in ranks or list(ranks) == [hvd.rank()]):
        return Links(Link(process_set, 1, 0))  # outside the set (as Horovod's) or alone in it: nothing to send
    if ranks is None or process_set.process_set_id is None:
        raise ValueError(f"process_set {ranks} is not registered: pass it to hvdkit.torch.init(process_sets=...) "
                         f"or add it with hvd.add_process_set")
    return Links(Link(process_set, len(ranks), sorted(ranks).index(hvd.rank())))


def links(hvd, hierarchical, init_name):
    """The Links of this rank for ``hierarchical``. Without hvdkit's topology (Horovod started by
    ``hvd.init()``) only the flat world is known; ``init_name`` is the call that would start it
    properly (e.g. ``"hvdkit.torch.init()"``), for the errors."""
    try:
        topo = _topology.current()
    except RuntimeError:
        if not hvd.is_initialized():
            raise RuntimeError(f"hvdkit: Horovod is not initialised; call {init_name} first") from None
        if hierarchical is True:
            raise ValueError(f"hierarchical=True needs {init_name} (not hvd.init()), which registers "
                             "the node process sets") from None
        return Links(Link(hvd.global_process_set, hvd.size(), hvd.rank()))
    return hierarchical_links(hvd, topo, hierarchical)
