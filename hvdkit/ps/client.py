"""A worker's connection to the servers: parallel requests per shard, liveness pings, failover.

A request goes to the server that currently owns its shard. While answers
are outstanding the client pings their servers every ``ping_interval``; a
server that has sent nothing for ``server_timeout`` counts as dead, and its
shards' requests go again, unchanged (same sequence number, so nothing is
applied twice), to the replica on the next server. A server never heard
from yet gets ``startup_timeout`` instead (it may still be importing).
The pings also tell the servers that this worker is alive while it waits.
"""
import itertools
import logging
import time

import zmq

from hvdkit.ps import transport, wire

__all__ = ["Client", "PSError"]

log = logging.getLogger("hvdkit.ps.client")


class PSError(RuntimeError):
    """The servers cannot answer: every holder of a shard is dead, or a server refused a request."""


class Client:
    def __init__(self, addresses, worker, *, replicated=True, key=None, server_timeout=5.0, ping_interval=0.25,
                 request_timeout=600.0, startup_timeout=60.0):
        self.addresses, self.worker, self.key = list(addresses), worker, key
        self.replicated = replicated and len(addresses) > 1
        self.server_timeout, self.ping_interval, self.request_timeout = server_timeout, ping_interval, request_timeout
        self.startup_timeout = startup_timeout
        self.heard_from = set()  # servers that answered at least once
        self.context = zmq.Context()
        self.sockets = [transport.connect_dealer(self.context, a) for a in self.addresses]
        self.owner = list(range(len(addresses)))  # shard -> the server answering for it
        self.dead = set()
        self.rids = itertools.count(1)
        self.bytes_sent = 0
        self.bytes_received = 0

    def _send(self, server, header, arrays, flags=0):
        frames = wire.encode(header, arrays, self.key)
        try:
            transport.send(self.sockets[server], None, frames, flags)
        except zmq.Again:  # a ping to a server whose queue is full (dead, not yet noticed): skipped
            return
        self.bytes_sent += wire.nbytes(frames)

    def _fail_over(self, server):
        self.dead.add(server)
        for shard, owner in enumerate(self.owner):
            if owner == server:
                replica = (shard + 1) % len(self.addresses)
                if not self.replicated or replica in self.dead:
                    raise PSError(f"parameter server {self.addresses[server]} stopped answering and shard {shard} "
                                  f"has no live replica")
                self.owner[shard] = replica
                log.warning("worker %d: server %s silent; shard %d now from %s", self.worker,
                            self.addresses[server], shard, self.addresses[replica])

    def call(self, requests):
        """``{shard: (header, arrays)}`` -> ``{shard: (header, arrays)}``, answered by each shard's owner."""
        pending = {}  # rid -> [shard, header, arrays, server it went to]
        answers = {}
        for shard, (header, arrays) in requests.items():
            rid = next(self.rids)
            header = dict(header, rid=rid, shard=shard, w=self.worker)
            pending[rid] = [shard, header, arrays, self.owner[shard]]
            self._send(self.owner[shard], header, arrays)
        poller = zmq.Poller()
        for sock in self.sockets:
            poller.register(sock, zmq.POLLIN)
        start = time.monotonic()
        heard = {s: start for s in range(len(self.sockets))}
        pinged = start
        while pending:
            events = dict(poller.poll(int(self.ping_interval * 1000)))
            now = time.monotonic()
            for server, sock in enumerate(self.sockets):
                if sock not in events:
                    continue
                while True:
                    try:
                        _, frames = transport.recv(sock, zmq.NOBLOCK, router=False)
                    except zmq.Again:
                        break
                    self.bytes_received += wire.nbytes(frames)
                    heard[server] = now
                    self.heard_from.add(server)
                    header, arrays = wire.decode(frames, self.key)
                    if header.get("rid") not in pending or header["op"] == "pong":
                        continue
                    shard = pending.pop(header["rid"])[0]
                    if header["op"] == "error":
                        raise PSError(f"server {self.addresses[server]} refused shard {shard}: {header['error']}")
                    answers[shard] = (header, arrays)
            for server in {entry[3] for entry in pending.values()}:
                limit = self.server_timeout if server in self.heard_from else self.startup_timeout
                if now - heard[server] > limit:
                    self._fail_over(server)
                    for entry in pending.values():
                        if entry[3] == server:
                            entry[3] = self.owner[entry[0]]
                            self._send(entry[3], entry[1], entry[2])
                            heard[entry[3]] = now
            if now - pinged >= self.ping_interval:
                pinged = now
                for server in range(len(self.sockets)):  # every live server: each times this worker out
                    if server not in self.dead:
                        self._send(server, {"op": "ping", "w": self.worker}, [], zmq.NOBLOCK)
            if now - start > self.request_timeout:
                raise PSError(f"no answer from the parameter servers in {self.request_timeout:.0f} s")
        return answers

    def stats(self):
        """Every live server's statistics."""
        out = []
        for server in range(len(self.addresses)):
            if server in self.dead:
                continue
            rid = next(self.rids)
            self._send(server, {"op": "stats", "rid": rid, "w": self.worker}, [])
            deadline = time.monotonic() + self.server_timeout
            while self.sockets[server].poll(max(1, int((deadline - time.monotonic()) * 1000))):
                header, _ = wire.decode(transport.recv(self.sockets[server], router=False)[1], self.key)
                if header.get("rid") == rid:
                    out.append(header["stats"])
                    break
        return out

    def close(self):
        for sock in self.sockets:
            sock.close(linger=0)
        self.context.term()
