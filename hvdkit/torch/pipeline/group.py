"""``torch.distributed`` inside a Horovod job, from the launcher's ranks.

PyTorch's pipelining sends activations point to point over a ``torch.distributed`` process group,
which ``mpirun``/``horovodrun`` do not set up (no ``MASTER_ADDR``, no ``RANK``). Horovod already
knows every rank, so: rank 0 opens a ``TCPStore`` on a free port (the operating system picks it,
so no other job can take it between choice and use), Horovod broadcasts the address, and every
rank joins a gloo group with its Horovod rank. Ranks all on one host use loopback.
"""
import datetime
import os
import socket
import sys

import torch.distributed as dist

from hvdkit.runtime import horovod_env

__all__ = ["ENV_ADDR", "init_process_group", "pipeline_group"]

ENV_ADDR = "HVDKIT_PIPELINE_ADDR"  # rank 0's address as the other hosts reach it (multi-host jobs)
STALL_VARIABLE = "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS"


def default_timeout():
    """How long a torch collective may wait: Horovod's stall shutdown time, so both give up together."""
    text = os.environ.get(STALL_VARIABLE) or horovod_env.DEFAULTS.get(STALL_VARIABLE, "600")
    return datetime.timedelta(seconds=max(1.0, float(text)))


def _address(hosts):
    if os.environ.get(ENV_ADDR):
        return os.environ[ENV_ADDR]
    if len(set(hosts)) == 1:
        return "127.0.0.1"
    return socket.gethostbyname(socket.gethostname())


def init_process_group(hvd, timeout=None):
    """Start torch's default (gloo) process group over Horovod's ranks; a no-op when it already runs
    with the same rank and size (started by the user, or by an earlier pipeline)."""
    rank, size = hvd.rank(), hvd.size()
    if dist.is_initialized():
        if (dist.get_rank(), dist.get_world_size()) != (rank, size):
            raise RuntimeError(f"torch.distributed already runs as rank {dist.get_rank()} of "
                               f"{dist.get_world_size()}, but Horovod's rank is {rank} of {size}: start it "
                               f"over the same ranks, or let hvdkit start it")
        return
    timeout = default_timeout() if timeout is None else timeout
    hosts = hvd.allgather_object(socket.gethostname(), name="hvdkit.pipeline.hosts")
    store, endpoint = None, None
    if rank == 0:
        address = _address(hosts)
        store = dist.TCPStore(address, 0, size, is_master=True, timeout=timeout, wait_for_workers=False)
        endpoint = (address, store.port)
    address, port = hvd.broadcast_object(endpoint, root_rank=0, name="hvdkit.pipeline.store")
    if store is None:
        store = dist.TCPStore(address, port, size, is_master=False, timeout=timeout)
    if len(set(hosts)) == 1 and not os.environ.get("GLOO_SOCKET_IFNAME"):
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # gloo would otherwise resolve the hostname to an interface
    hook = sys.excepthook
    dist.init_process_group("gloo", store=store, rank=rank, world_size=size, timeout=timeout)
    # torch wraps the hook to prefix "[rankN]:", buffering its output until the hook returns; hvdkit's
    # abort hook (hvdkit.runtime.abort) tags lines itself and ends the job before returning.
    sys.excepthook = hook


def pipeline_group(layout):
    """This rank's pipeline as a torch process group (every rank creates every replica's group, in order,
    as ``new_group`` requires); the default group when there is one replica."""
    if layout.replicas == 1:
        return dist.group.WORLD
    mine = None
    for replica in range(layout.replicas):
        group = dist.new_group(layout.pipeline_ranks(replica))
        if replica == layout.replica:
            mine = group
    return mine
