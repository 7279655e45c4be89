"""Open MPI's settings for the cluster's shaped TCP links, and why each is there.

Measured on 2 nodes at 1 Gbit/s (``python -m hvdkit.runtime.cluster.busbw``,
allreduce of 32-64 MiB, bus bandwidth, one rank per node): untuned Open MPI
4.1 reached 0.49 of the link rate. Its TCP transport sends a large message
as a rendezvous: 64 KiB eagerly, then 128 KiB fragments, one socket per pair
of ranks carrying both directions; with 4 MiB for the eager part, the
fragments and the pipelined part it reached 0.81-0.86. Larger socket buffers,
a progress thread and the ring algorithm changed nothing; 16 MiB was worse
(0.60). Two sockets per pair (``btl_tcp_links=2``) reached 0.94, but hung
Open MPI 4.1.4 in the large all-to-all exchanges of hvdkit's two-phase
route, so it is not used. A plain TCP stream reached 0.96 both ways at once,
so the shaping was never the limit; Gloo reached 0.85-0.96 untuned and needs
no setting beyond the interface, which horovodrun finds by itself (the nodes'
link shares the bridge's name, :mod:`hvdkit.runtime.cluster.layout`).

Both interface settings keep Open MPI on the cluster's subnet: the launching
host also has Docker's and the machine's own interfaces, which the nodes
cannot reach, and trying them first stalls the daemons' wire-up.
"""
from hvdkit.runtime.cluster.layout import SUBNET

MPI_SETTINGS = {
    "btl_tcp_if_include": SUBNET,
    "oob_tcp_if_include": SUBNET,
    "btl_tcp_eager_limit": str(4 << 20),
    "btl_tcp_rndv_eager_limit": str(4 << 20),
    "btl_tcp_max_send_size": str(4 << 20),
    "btl_tcp_rdma_pipeline_send_length": str(4 << 20),
}


def mpi_environment():
    """``OMPI_MCA_*`` variables for every ``mpirun`` that reaches the nodes."""
    return {f"OMPI_MCA_{name}": value for name, value in MPI_SETTINGS.items()}


def env_file_text(directory):
    """The lines of ``DIR/env``: ``source`` it before a plain ``mpirun --hostfile DIR/hostfile``."""
    lines = [f"export {name}={value}" for name, value in mpi_environment().items()]
    lines.append(f"export HVDKIT_CLUSTER_DIR={directory}")
    return "\n".join(lines) + "\n"


def launch_environment(host_names, environ):
    """Open MPI's settings for a job whose hosts are all nodes of the cluster that is up
    (``HVDKIT_CLUSTER_DIR``, default ``/tmp/hvdkit-cluster``); empty for any other job.
    A value the user set already wins."""
    from hvdkit.runtime import cluster
    from hvdkit.runtime.cluster.layout import DEFAULT_DIR

    record = cluster.load(environ.get("HVDKIT_CLUSTER_DIR", DEFAULT_DIR))
    if record is None or not set(host_names) <= set(record["layout"].hostnames):
        return {}
    return {name: value for name, value in mpi_environment().items() if name not in environ}
