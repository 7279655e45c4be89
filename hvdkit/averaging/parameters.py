"""Averaging model parameters across ranks, for torch and TensorFlow alike.

The parameters are packed into one flat buffer (hvdkit's fused pack kernel,
through the framework's ``TensorOps``), averaged with one allreduce over the
scope's ranks (hierarchically for ``"world"`` when nodes exist), and written
back (in place for torch; assigned for TensorFlow and Keras variables).
:func:`average_exchange` is that algorithm as an exchange generator, so it runs
on Horovod (:func:`average_parameters`) or on the in-process simulator
(``hvdkit.exchange.simulate``), which the tests compare against numpy.
"""
from hvdkit import topology as topology_module
from hvdkit.compression.tensor_ops import ops_for
from hvdkit.exchange import collectives
from hvdkit.exchange.engine import Flight, HorovodTransport
from hvdkit.exchange.options import hierarchical_links
from hvdkit.exchange.strategies import Link, Links

__all__ = ["SCOPES", "average_exchange", "average_parameters", "scope_links"]

SCOPES = ("node", "world")


def average_exchange(parameters, links, name):
    """Exchange generator: set each parameter to its mean over ``links`` (the node's ranks when
    ``links`` is flat over them; every rank, through the nodes, for hierarchical ``links``)."""
    ops = ops_for(parameters[0])
    tensors = ops.parameter_tensors(parameters)
    flat, _ = ops.pack(tensors, 1.0)
    averaged = yield from collectives.reduce_exchange(flat, links, name, scale=1.0 / links.world.size, inplace=True)
    ops.assign(parameters, ops.unpack(averaged, tensors))


def _check_scope(scope):
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")


def scope_links(scope, hvd, topology):
    """The Links averaging over ``scope`` runs on, or None when the scope is this rank alone."""
    _check_scope(scope)
    if scope == "world":
        return hierarchical_links(hvd, topology, True)
    if topology.local_size == 1:
        return None
    if topology.intra_node_set is None:
        raise ValueError("node-scope averaging needs nodes with equal numbers of ranks; "
                         f"this job's nodes hold {[len(n) for n in topology.nodes]} ranks")
    return Links(Link(topology.intra_node_set, topology.local_size, topology.local_rank))


def average_parameters(parameters, scope="world", hvd=None, topology=None):
    """Replace each parameter (torch parameters or tensors, TensorFlow or Keras variables) with its
    mean over the ranks of ``scope`` (``"node"`` or ``"world"``).

    ``hvd`` and ``topology`` default to the Horovod module and Topology of ``hvdkit.topology.init``."""
    _check_scope(scope)
    parameters = list(parameters)
    if not parameters:
        return
    topo = topology or topology_module.current()
    hvd = hvd or topology_module.horovod()
    links = scope_links(scope, hvd, topo)
    if links is not None:
        Flight(HorovodTransport(hvd), average_exchange(parameters, links, f"hvdkit.average.{scope}")).wait()
