"""Primary-backup replication of a shard's applied state.

Server i's primary shard is repeated on server i + 1: every change that
answers a worker (a delta applied, a sync step's mean, the leader's
parameters, the membership) goes to the replica as the same operation on the
same values, so the replica's arrays are bit-identical. The primary holds
each answer until the replica acknowledged the change it reports, so an
acknowledged update survives the primary's death. A replica silent for
``timeout`` counts as dead: held answers go out and the shard goes on
unreplicated (logged).
"""
import logging
import time

import numpy as np
import zmq

from hvdkit.ps import transport, wire

__all__ = ["ReplicaLink", "apply_replicated"]

log = logging.getLogger("hvdkit.ps.replication")


class ReplicaLink:
    __slots__ = ("socket", "key", "timeout", "sent", "acked", "held", "alive", "owner")

    def __init__(self, context, address, owner, key, timeout):
        self.socket = transport.connect_dealer(context, address)
        self.key, self.timeout, self.owner = key, timeout, owner
        self.sent = 0  # sequence number of the last change sent
        self.acked = 0  # ... and of the last one the replica acknowledged
        self.held = []  # (sequence number needed, identity, frames, time held) of answers not yet sent
        self.alive = True

    def acknowledged(self, seq):
        return not self.alive or seq <= self.acked

    def send(self, shard, meta, ops, arrays):
        if not self.alive:
            return 0
        self.sent += 1
        header = {"op": "replicate", "shard": shard, "rseq": self.sent, "meta": meta, "ops": list(ops)}
        transport.send(self.socket, None, wire.encode(header, arrays, self.key))
        return self.sent

    def hold(self, seq, ident, frames):
        self.held.append((seq, ident, frames, time.monotonic()))

    def poll(self, events):
        """Read acknowledgements; the held answers that may now go out, as (identity, frames)."""
        if self.socket in events:
            while True:
                try:
                    _, frames = transport.recv(self.socket, zmq.NOBLOCK, router=False)
                except zmq.Again:
                    break
                header, _ = wire.decode(frames, self.key)
                if header.get("op") == "ack":
                    self.acked = max(self.acked, header["rseq"])
        if self.alive and self.held and time.monotonic() - self.held[0][3] > self.timeout:
            self.alive = False
            log.warning("server %d: replica silent for %.1f s; shard %d goes on unreplicated", self.owner,
                        self.timeout, self.owner)
        ready = [(ident, frames) for seq, ident, frames, _ in self.held if self.acknowledged(seq)]
        self.held = [entry for entry in self.held if not self.acknowledged(entry[0])]
        return ready


def apply_replicated(shard, header, arrays):
    """Repeat a primary's change on this server's replica ``shard``."""
    if shard is None:
        raise ValueError(f"replication of shard {header.get('shard')} reached a server without its replica")
    for op, array in zip(header["ops"], arrays):
        if op in ("init", "mirror"):
            shard.params = np.array(array, dtype=np.float32)
        elif op == "add":
            shard.params = np.add(shard.params, array)
        elif op == "result":
            shard.result = np.array(array, dtype=np.float32)
            shard.result_payload = None
    shard.load_meta(header["meta"])
