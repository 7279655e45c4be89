"""Averaging model parameters across ranks, for torch and TensorFlow alike.

The parameters are packed into one flat buffer (hvdkit's fused pack kernel,
through the framework's ``TensorOps``), averaged with one Horovod allreduce
over the scope's process set (hierarchically for ``"world"`` when nodes
exist), and written back (in place for torch; assigned for TensorFlow
variables).
"""
from hvdkit import topology as topology_module
from hvdkit.compression.tensor_ops import ops_for
from hvdkit.exchange import collectives

__all__ = ["SCOPES", "average_parameters"]

SCOPES = ("node", "world")


def average_parameters(parameters, scope="world", hvd=None, topology=None):
    """Replace each parameter with its mean over the ranks of ``scope`` (``"node"`` or ``"world"``).

    ``hvd`` and ``topology`` default to the Horovod module and Topology of ``hvdkit.topology.init``."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    parameters = list(parameters)
    if not parameters:
        return
    topo = topology or topology_module.current()
    hvd = hvd or topology_module.horovod()
    ops = ops_for(parameters[0])
    tensors = ops.parameter_tensors(parameters)
    if scope == "node" and topo.local_size == 1:
        return
    if scope == "node" and topo.intra_node_set is None:
        raise ValueError("node-scope averaging needs nodes with equal numbers of ranks; "
                         f"this job's nodes hold {[len(n) for n in topo.nodes]} ranks")
    flat, _ = ops.pack(tensors, 1.0)
    if scope == "node":
        averaged = collectives.allreduce(flat, hvd, "average", name="hvdkit.average.node",
                                         process_set=topo.intra_node_set, inplace=True)
    else:
        averaged = collectives.hierarchical_allreduce(flat, hvd, topo, "average", name="hvdkit.average.world",
                                                      inplace=True)
    ops.assign(parameters, ops.unpack(averaged, tensors))
