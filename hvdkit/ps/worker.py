"""The framework-neutral half of a worker: flat numpy vectors in, flat numpy vectors out.

``PSWorker`` cuts a flat vector into the shards, compresses each push with
its own error-feedback state, and puts the answers back together. The
framework shims (``torch_worker``, ``keras_worker``) only flatten and
unflatten and run the framework's own optimizer.
"""
import os

import numpy as np

from hvdkit.ps import modes, sharding, transport
from hvdkit.ps.client import Client, PSError
from hvdkit.ps.codec import WireCodec

__all__ = ["PSWorker", "from_env"]

RANK_VARIABLES = ("HVDKIT_PS_WORKER", "HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


class PSWorker:
    def __init__(self, numel, mode, addresses, worker, *, compression="none", replicated=True, key=None,
                 server_timeout=5.0, startup_timeout=60.0):
        if not addresses:
            raise ValueError("a parameter-server worker needs at least one server address")
        self.mode = modes.parse(mode)
        self.worker = int(worker)
        self.edges = sharding.bounds(numel, len(addresses))
        self.client = Client(addresses, self.worker, replicated=replicated, key=key, server_timeout=server_timeout,
                             startup_timeout=startup_timeout)
        self.codec = WireCodec(compression)
        # Error feedback of this worker's pushes, one state per shard.
        self.residuals = [self.codec.state(hi - lo, peer=self.worker) for lo, hi in zip(self.edges, self.edges[1:])]
        self.held = [None] * (len(self.edges) - 1)  # compressed pulls: the parameters this worker holds per shard
        self.clock = 0  # the step this worker computes next
        self.seq = 0  # pushes sent: servers apply each sequence number once
        # sync: this worker sends its parameters with its next gradient (the servers' copy, for joining workers
        # and checkpoints): it is the leader (lowest id) and the servers asked
        self.sends_params = False
        self.dropped = 0  # backup: this worker's deltas that arrived after their step closed
        self.epoch = 0  # epochs of the job done when the servers last saved for one (``save``), as ``join`` saw
        self.steps = 0
        # Staleness as this worker sees it: updates the servers applied (shard 0's count) between two of its pulls,
        # besides its own step. async: the staleness of its push (as the servers count it); ssp: the others' updates
        # its pull caught up with; sync and backup count steps, so 0 unless steps closed without it (a dropped delta).
        self.updates = None  # shard 0's update count in the last answer
        self.staleness = [0, 0, 0]  # answers counted, their staleness summed, the largest

    def _shards(self, flat):
        return sharding.slices(np.ascontiguousarray(flat, dtype=np.float32).reshape(-1), self.edges)

    def _params(self, answers):
        for shard, (header, arrays) in answers.items():
            if header.get("full", True):
                self.held[shard] = np.array(arrays[0], dtype=np.float32)
            else:
                self.held[shard] = self.held[shard] + self.codec.decode(arrays, header["enc"])
        return np.concatenate(self.held)

    def _clock(self, answers):
        clocks = {header["clock"] for header, _ in answers.values()}
        if self.mode.name == "sync" and len(clocks) > 1:
            raise PSError(f"worker {self.worker}: the shards are at different steps {sorted(clocks)}")
        return max(clocks)

    def _observe(self, answers):
        updates = answers[0][0].get("updates")
        if updates is not None and self.updates is not None:
            stale = max(0, updates - self.updates - 1)
            self.staleness = [self.staleness[0] + 1, self.staleness[1] + stale, max(self.staleness[2], stale)]
        self.updates = updates

    def join(self, params):
        """Join the job: the servers' current parameters (this worker's own become them if the servers
        were empty), as a flat float32 array. Also after ``pause``: back in the membership, with the current
        parameters."""
        answers = self.client.call({s: ({"op": "join"}, [part]) for s, part in enumerate(self._shards(params))})
        flat = self._params(answers)
        self.clock = self._clock(answers)
        self.updates = answers[0][0].get("updates")
        # epochs of the job done as of the servers' last save for one (a shard may lag if a save was cut short)
        self.epoch = min(header.get("epoch", 0) for header, _ in answers.values())
        return flat

    def _push(self, flat, extra_arrays=None):
        requests = {}
        for s, part in enumerate(self._shards(flat)):
            frames, meta = self.codec.encode(part, self.residuals[s])
            header = {"op": "step", "clock": self.clock, "seq": self.seq, "enc": meta}
            if extra_arrays is not None:
                header["mirror"] = True
                frames = [*frames, extra_arrays[s]]
            requests[s] = (header, frames)
        answers = self.client.call(requests)
        self.seq += 1
        self.steps += 1
        self._observe(answers)
        return answers

    def exchange_gradient(self, gradient, params=None):
        """sync: this worker's flat gradient -> the mean over the workers. ``params``: this worker's parameters
        when ``sends_params`` (the servers keep them for joining workers and checkpoints)."""
        mirror = self._shards(params) if self.sends_params and params is not None else None
        answers = self._push(gradient, mirror)
        mean = np.concatenate([self.codec.decode(arrays, header["enc"]) for _, (header, arrays) in
                               sorted(answers.items())])
        self.sends_params = answers[0][0].get("leader") == self.worker and any(
            header.get("mirror") for header, _ in answers.values())
        self.clock += 1
        return mean

    def exchange_delta(self, delta):
        """ssp/async/backup: push the change of a local optimizer step, get the parameters to go on from."""
        answers = self._push(delta)
        if any(header.get("dropped") for header, _ in answers.values()):
            self.dropped += 1
        params = self._params(dict(sorted(answers.items())))
        self.clock = self._clock(answers)
        if self.mode.name == "async":
            self.clock = self.steps
        return params

    def _mirror(self, params):
        """sync: ``params`` cut into the shards, to become the servers' copy; None in the delta modes (the
        servers hold the parameters there) or without ``params``."""
        return self._shards(params) if params is not None and self.mode.pushes_gradients else None

    def job_started(self):
        """Whether the workers the job starts with have all joined already: a worker asking before its first
        ``join`` would join a running job (as a new worker, or as a restarted one)."""
        return any(shard["started"] for server in self.client.stats() for shard in server["shards"]
                   if shard["shard"] == 0 and shard["primary"])

    def meet(self, tag, payload=None):
        """Wait until every worker in the job came to meeting ``tag`` (a worker that died is dropped by the
        servers after their member timeout, so the wait is bounded); ``[(worker, payload), ...]`` of those
        who came, by worker. ``payload``: anything JSON can carry. Replaces a collective among the workers
        that must not end with one of them (an MPI job does)."""
        header, _ = self.client.call({0: ({"op": "meet", "tag": tag, "payload": payload}, [])})[0]
        return [(int(worker), value) for worker, value in header["payloads"]]

    def save(self, epoch, params=None):
        """Have every server checkpoint its shards now, as of ``epoch`` epochs of the job done (servers started
        with a checkpoint directory); a restarted job's ``join`` then reports that epoch. sync: ``params``, this
        worker's parameters, are what is saved. Returns the servers' update count per shard."""
        parts = self._mirror(params)
        answers = self.client.call({s: ({"op": "save", "epoch": int(epoch)}, [parts[s]] if parts else [])
                                    for s in range(len(self.edges) - 1)})
        return [answers[s][0]["updates"] for s in sorted(answers)]

    def stats(self):
        count, total, worst = self.staleness
        return {"worker": self.worker, "clock": self.clock, "steps": self.steps, "dropped": self.dropped,
                "bytes_sent": self.client.bytes_sent, "bytes_received": self.client.bytes_received,
                "staleness_count": count, "staleness_sum": total, "staleness_max": worst}

    def pause(self, params=None):
        """Leave the membership but keep the connection: nobody waits for this worker until it ``join``s again
        (a backup:B step closes with the workers still pushing), and meetings wait for it. ``params`` as
        for ``leave``."""
        self._leave(params, pause=True)

    def _leave(self, params, pause):
        parts = self._mirror(params)
        self.client.call({s: ({"op": "leave", "clock": self.clock, "pause": pause}, [parts[s]] if parts else [])
                          for s in range(len(self.edges) - 1)})

    def leave(self, params=None):
        """Leave the membership (others stop waiting for this worker) and close the sockets. sync: a worker's
        ``params`` become the servers' copy, so a worker joining an idle job starts from them."""
        try:
            self._leave(params, pause=False)
        finally:
            self.client.close()


def from_env(numel, environ=os.environ):
    """A PSWorker configured by the launcher's variables (``HVDKIT_PS_SERVERS``, ``HVDKIT_PS_MODE``, ...)."""
    servers = environ.get("HVDKIT_PS_SERVERS", "")
    if not servers:
        raise ValueError("HVDKIT_PS_SERVERS is not set: start the servers with `hvdkit ps serve` or "
                         "hvdkit.ps.launch.start_servers and pass their addresses")
    worker = next((environ[v] for v in RANK_VARIABLES if v in environ), "0")
    return PSWorker(numel, environ.get("HVDKIT_PS_MODE", "sync"), servers.split(","), int(worker),
                    compression=environ.get("HVDKIT_PS_COMPRESSION", "none"),
                    replicated=environ.get("HVDKIT_PS_REPLICATE", "1") != "0", key=transport.job_key(environ),
                    server_timeout=float(environ.get("HVDKIT_PS_SERVER_TIMEOUT", "5")),
                    startup_timeout=float(environ.get("HVDKIT_PS_STARTUP_TIMEOUT", "60")))
