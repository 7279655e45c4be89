"""A parameter server: one process, one ZeroMQ ROUTER socket, the shards it holds.

Server i is the primary of shard i and, with replication on, the replica of
shard i - 1 (``replication``). The loop is single-threaded: it reads a
message, lets the ``Shard`` apply it, and answers every request that has
become answerable; requests that must wait (a sync step still gathering, an
ssp worker too far ahead, a meeting of the workers not yet complete) are
kept as waiters. A worker not heard from for ``member_timeout`` while others
wait on it is dropped from the membership (logged), so a dead worker costs a
bounded wait, never the job. Shard 0's owner also holds the workers'
meetings (``on_meet``), and every server saves its shards when a worker asks
(``on_save``), besides every K updates.
"""
import argparse
import logging
import os
import signal
import sys
import time

import numpy as np
import zmq

from hvdkit.ps import modes, store, transport, wire
from hvdkit.ps.codec import WireCodec
from hvdkit.ps.replication import ReplicaLink, apply_replicated
from hvdkit.ps.shard import Shard

__all__ = ["Server", "main"]

log = logging.getLogger("hvdkit.ps.server")


class Waiter:
    __slots__ = ("ident", "rid", "worker", "kind", "target")

    def __init__(self, ident, rid, worker, kind, target):
        self.ident, self.rid, self.worker, self.kind, self.target = ident, rid, worker, kind, target


class Server:
    def __init__(self, index, addresses, mode, *, replicate=True, checkpoint=None, checkpoint_every=0,
                 member_timeout=10.0, replica_timeout=5.0, compression="none", key=None, exit_with=None, workers=1,
                 startup_timeout=120.0):
        if not 0 <= index < len(addresses):
            raise ValueError(f"server index {index} is not in 0..{len(addresses) - 1}")
        self.index, self.addresses, self.mode = index, list(addresses), modes.parse(mode)
        self.key = key
        self.codec = WireCodec(compression)
        self.codec.prepare()
        self.member_timeout, self.checkpoint, self.checkpoint_every = member_timeout, checkpoint, checkpoint_every
        # How long after the first worker joined the others the job starts with may take to join (imports, model
        # building on a loaded machine) before the job goes on without them.
        self.startup_timeout = max(startup_timeout, member_timeout)
        self.exit_with = exit_with
        count = len(addresses)
        self.shards = {index: Shard(index, self.mode, primary=True, expected=workers)}
        self.replica_of = (index - 1) % count if replicate and count > 1 else None
        if self.replica_of is not None:
            self.shards[self.replica_of] = Shard(self.replica_of, self.mode, primary=False, expected=workers)
        self.saved = {}  # shard -> updates at its last checkpoint
        self.server_states = {}  # shard -> error-feedback state of compressed sync results
        for s, shard in self.shards.items():
            if checkpoint:
                payload = store.load(checkpoint, s)
                if payload is not None:
                    shard.restore(payload)
                    self.saved[s] = shard.updates
                    log.info("server %d: shard %d resumed at update %d", index, s, shard.updates)
        self.context = zmq.Context()
        self.socket = transport.bind_router(self.context, addresses[index])
        self.link = None
        if replicate and count > 1:
            self.link = ReplicaLink(self.context, addresses[(index + 1) % count], index, key, replica_timeout)
        self.waiters = {s: [] for s in self.shards}
        self.meetings = {}  # tag -> {worker: payload} of the workers at that meeting so far (shard 0's owner)
        self.first_join = None  # when the first worker joined: the others the job starts with get startup_timeout
        self.last_seen = {}
        self.counters = {"refused": 0, "bytes_in": 0, "bytes_out": 0, "messages": 0}
        self.running = True

    # --- sending ----------------------------------------------------------------------------------
    def reply(self, ident, header, arrays=(), after=0):
        """Send now, or once the replica acknowledged replication message ``after`` (an acknowledged
        answer then never names an update the replica lacks)."""
        frames = wire.encode(header, arrays, self.key)
        self.counters["bytes_out"] += wire.nbytes(frames)
        if self.link is not None and not self.link.acknowledged(after):
            self.link.hold(after, ident, frames)
        else:
            transport.send(self.socket, ident, frames)

    def replicate(self, shard, ops=(), arrays=()):
        """Repeat a change of a primary shard on its replica; the sequence number replies must wait for."""
        if self.link is None or shard.index != self.index:
            return 0
        return self.link.send(shard.index, shard.meta(), ops, arrays)

    def send_params(self, ident, rid, shard, worker, extra, after):
        """Parameters to ``worker``: dense, or the compressed change since what it holds."""
        header = {"op": "params", "rid": rid, "shard": shard.index, "updates": shard.updates,
                  "leader": shard.leader(), "epoch": shard.epoch, **extra}
        view = shard.views.get(worker)
        if self.codec.dense or view is None:
            if not self.codec.dense:
                shard.views[worker] = shard.params
            self.reply(ident, dict(header, full=True), [shard.params], after)
        else:
            frames, meta = self.codec.encode(shard.params - view, self.codec.state(view.size))
            shard.views[worker] = view + self.codec.decode(frames, meta)
            self.reply(ident, dict(header, full=False, enc=meta), frames, after)
        shard.pulled[worker] = shard.updates

    def send_result(self, ident, rid, shard, clock, after):
        """sync: the mean gradient of step ``clock`` (compressed once per step, for every worker alike)."""
        if shard.result_payload is None:
            state = self.server_states.setdefault(shard.index, self.codec.state(shard.result.size))
            shard.result_payload = self.codec.encode(shard.result, state)
        frames, meta = shard.result_payload
        self.reply(ident, {"op": "result", "rid": rid, "shard": shard.index, "clock": clock, "leader": shard.leader(),
                           "mirror": self.wants_mirror(shard), "updates": shard.updates, "enc": meta}, frames, after)

    def take_mirror(self, shard, params):
        """sync: a worker's ``params`` at the step being gathered become the servers' copy (for joining workers
        and checkpoints), on the replica too; the replication sequence number replies must wait for."""
        shard.params, shard.mirror_clock = np.array(params, dtype=np.float32), shard.round
        return self.replicate(shard, ["mirror"], [shard.params])

    def wants_mirror(self, shard):
        """sync: whether the leader should send its parameters with its next push: a joining worker waits for
        them, or the next step's checkpoint will save them (otherwise the servers' copy may lag)."""
        due = self.checkpoint and self.checkpoint_every and \
            shard.updates + 1 - self.saved.get(shard.index, 0) >= self.checkpoint_every
        return bool(due or any(w.kind == "mirror" for w in self.waiters[shard.index]))

    # --- requests ---------------------------------------------------------------------------------
    def handle(self, ident, frames):
        self.counters["messages"] += 1
        self.counters["bytes_in"] += wire.nbytes(frames)
        try:
            header, arrays = wire.decode(frames, self.key)
        except wire.WireError as err:
            self.counters["refused"] += 1
            log.warning("server %d: refused a message (%s); %d refused so far", self.index, err,
                        self.counters["refused"])
            return
        op, rid = header.get("op"), header.get("rid")
        if "w" in header:
            self.last_seen[header["w"]] = time.monotonic()
        if op == "ping":
            return self.reply(ident, {"op": "pong", "rid": rid})
        if op == "stats":
            return self.reply(ident, {"op": "stats", "rid": rid, "stats": self.stats()})
        if op == "shutdown":
            self.running = False
            return self.reply(ident, {"op": "bye", "rid": rid})
        if op == "replicate":
            shard = self.shards.get(header["shard"])
            if shard is not None and shard.primary:
                log.warning("server %d: ignores replication of shard %d, which it took over", self.index, shard.index)
            else:
                apply_replicated(shard, header, arrays)
            return self.reply(ident, {"op": "ack", "rseq": header["rseq"]})
        shard = self.shards.get(header.get("shard"))
        if shard is None or op not in ("join", "step", "leave", "meet", "save"):
            return self.reply(ident, {"op": "error", "rid": rid,
                                      "error": f"server {self.index} holds no shard {header.get('shard')!r} "
                                               f"or knows no op {op!r}"})
        if not shard.primary:
            shard.primary = True
            log.warning("server %d: takes over shard %d (its primary stopped answering)", self.index, shard.index)
        try:
            getattr(self, "on_" + op)(ident, rid, shard, header, arrays)
        except ValueError as err:
            self.reply(ident, {"op": "error", "rid": rid, "error": str(err)})
        except Exception as err:  # a bug must fail the request loudly, not stop the server for everyone
            log.exception("server %d: %s of worker %s failed", self.index, op, header.get("w"))
            self.reply(ident, {"op": "error", "rid": rid, "error": f"{type(err).__name__}: {err}"})

    def on_join(self, ident, rid, shard, header, arrays):
        worker, fresh = header["w"], shard.params is None
        if self.mode.name == "sync" and not fresh and shard.mirror_clock != shard.round:
            # the servers' copy is older than the current step: admitted (and answered) once the leader sent its
            # parameters of a step not yet closed (``wants_mirror`` asks for them)
            self.waiters[shard.index].append(Waiter(ident, rid, worker, "mirror", shard.round))
            return
        clock = shard.join(worker, arrays[0] if arrays else None)
        self.first_join = self.first_join or time.monotonic()
        after = self.replicate(shard, ["init"] if fresh else [], [shard.params] if fresh else [])
        self.send_params(ident, rid, shard, worker, {"clock": clock}, after)

    def on_leave(self, ident, rid, shard, header, arrays):
        shard.leave(header["w"], pause=bool(header.get("pause")))
        if arrays and self.mode.name == "sync" and header["clock"] == shard.round:
            self.settle(shard, self.take_mirror(shard, arrays[0]))
        else:
            self.settle(shard, self.replicate(shard))
        self.reply(ident, {"op": "bye", "rid": rid})

    def on_step(self, ident, rid, shard, header, arrays):
        worker, clock, seq = header["w"], header["clock"], header["seq"]
        count = len(arrays) - (1 if header.get("mirror") else 0)
        value = self.codec.decode(arrays[:count], header.get("enc"))
        name = self.mode.name
        if name == "sync":
            mirror = arrays[-1] if header.get("mirror") else None
            outcome = shard.push_gradient(worker, clock, seq, value, mirror)
            if outcome == "late":
                if clock == shard.round - 1 and shard.result is not None:
                    return self.send_result(ident, rid, shard, clock, 0)
                return self.reply(ident, {"op": "error", "rid": rid, "error":
                                          f"worker {worker} pushed step {clock}, shard {shard.index} is at step "
                                          f"{shard.round}: it was dropped; restart it to rejoin"})
            after = self.replicate(shard, ["mirror"], [mirror]) if mirror is not None else 0
            self.waiters[shard.index].append(Waiter(ident, rid, worker, "round", clock))
            return self.settle(shard, after)
        if shard.seen(worker, seq):
            outcome = "resent"
        else:
            outcome = shard.push_delta(worker, clock, seq, value)
        if name == "backup":
            if outcome == "late" or outcome == "resent" and clock < shard.round:
                after = self.replicate(shard)
                extra = {"clock": shard.round, "dropped": outcome == "late"}
                return self.send_params(ident, rid, shard, worker, extra, after)
            # answered when the step it joined closes (the current one, even if the worker named a later one)
            self.waiters[shard.index].append(Waiter(ident, rid, worker, "round", min(clock, shard.round)))
            return self.settle(shard, 0)
        after = self.replicate(shard, ["add"], [outcome]) if isinstance(outcome, np.ndarray) else 0
        if name == "ssp":
            self.waiters[shard.index].append(Waiter(ident, rid, worker, "ssp", clock + 1))
            return self.settle(shard, after)
        self.send_params(ident, rid, shard, worker, {"clock": shard.updates}, after)
        self.maybe_checkpoint(shard)

    def on_save(self, ident, rid, shard, header, arrays):
        """Checkpoint the shard now, as of ``epoch`` epochs of the job done (``PSWorker.save``); sync takes the
        sender's parameters first (the servers' copy may be older)."""
        if not self.checkpoint:
            raise ValueError(f"server {self.index} was started without a checkpoint directory")
        shard.epoch = int(header["epoch"])
        after = self.take_mirror(shard, arrays[0]) if arrays and self.mode.name == "sync" else self.replicate(shard)
        store.save(self.checkpoint, shard.index, shard.updates, shard.checkpoint_payload())
        self.saved[shard.index] = shard.updates
        self.reply(ident, {"op": "saved", "rid": rid, "updates": shard.updates}, (), after)

    def on_meet(self, ident, rid, shard, header, arrays):
        """A meeting of the job's workers (``PSWorker.meet``), held by shard 0's owner: answered, to everyone
        at once, when every member of the shard, paused ones included, is there (the dead are dropped after
        ``member_timeout``)."""
        if shard.index != 0:
            raise ValueError(f"meetings are held by shard 0, not shard {shard.index}")
        self.meetings.setdefault(header["tag"], {})[header["w"]] = header.get("payload")
        self.waiters[0].append(Waiter(ident, rid, header["w"], "meet", header["tag"]))
        self.settle(shard, 0)

    def _close_meetings(self, shard, waiters):
        """Answer the meetings every member of ``shard`` came to; the waiters still waiting."""
        ready = {w.target for w in waiters if w.kind == "meet" and len(shard.joined) >= shard.expected
                 and shard.members | shard.paused <= set(self.meetings[w.target])}
        for tag in ready:
            payloads = self.meetings.pop(tag)
            header = {"op": "met", "tag": tag, "payloads": [[w, p] for w, p in sorted(payloads.items())]}
            for w in waiters:
                if w.kind == "meet" and w.target == tag:
                    self.reply(w.ident, dict(header, rid=w.rid))
        return [w for w in waiters if not (w.kind == "meet" and w.target in ready)]

    # --- waiting and timeouts ----------------------------------------------------------------------
    def settle(self, shard, after):
        """Admit sync workers whose starting parameters arrived (before the step can close without them), complete
        the gathered step if it can be, then answer every waiter that can be answered."""
        if shard.mirror_clock == shard.round and any(w.kind == "mirror" for w in self.waiters[shard.index]):
            joining = [w for w in self.waiters[shard.index] if w.kind == "mirror"]
            self.waiters[shard.index] = [w for w in self.waiters[shard.index] if w.kind != "mirror"]
            for w in joining:
                shard.join(w.worker, None)
            after = max(after, self.replicate(shard))
            for w in joining:
                self.send_params(w.ident, w.rid, shard, w.worker, {"clock": shard.round}, after)
        if shard.step_complete():
            mean = shard.complete_step()
            after = self.replicate(shard, ["result" if self.mode.name == "sync" else "add"], [mean])
        waiting = []
        for w in self.waiters[shard.index]:
            if w.kind == "round" and shard.round > w.target:
                if self.mode.name == "sync":
                    self.send_result(w.ident, w.rid, shard, w.target, after)
                else:
                    self.send_params(w.ident, w.rid, shard, w.worker, {"clock": shard.round}, after)
            elif w.kind == "ssp" and shard.ssp_ready(w.target):
                self.send_params(w.ident, w.rid, shard, w.worker, {"clock": w.target}, after)
            else:
                waiting.append(w)
        self.waiters[shard.index] = self._close_meetings(shard, waiting) if shard.index == 0 else waiting
        self.maybe_checkpoint(shard)

    def drop_silent(self):
        """Drop members not heard from for ``member_timeout``: in sync only while someone waits on them (a dropped
        sync worker cannot come back), in the delta modes always (a push re-admits a worker)."""
        now = time.monotonic()
        for shard in self.shards.values():
            if not shard.primary or not (self.waiters[shard.index] or self.mode.name != "sync"):
                continue
            if len(shard.joined) < shard.expected and self.first_join and now - self.first_join > self.startup_timeout:
                log.warning("server %d: %d of the %d workers the job starts with joined shard %d within %.1f s; "
                            "going on without the others", self.index, len(shard.joined), shard.expected,
                            shard.index, self.startup_timeout)
                shard.expected = len(shard.joined)
                self.settle(shard, self.replicate(shard))
            # a member known only from replication or a checkpoint is timed from when this server first looks
            silent = [w for w in shard.members | shard.paused
                      if now - self.last_seen.setdefault(w, now) > self.member_timeout]
            for worker in silent:
                shard.drop(worker)
                log.warning("server %d: worker %d silent for %.1f s, dropped from shard %d (%d members left)",
                            self.index, worker, now - self.last_seen[worker], shard.index, len(shard.members))
            if silent:
                self.settle(shard, self.replicate(shard))

    def maybe_checkpoint(self, shard, force=False):
        if not (self.checkpoint and self.checkpoint_every and shard.primary and shard.params is not None):
            return
        if force or shard.updates - self.saved.get(shard.index, 0) >= self.checkpoint_every:
            store.save(self.checkpoint, shard.index, shard.updates, shard.checkpoint_payload())
            self.saved[shard.index] = shard.updates

    def stats(self):
        return {"server": self.index, **self.counters, "shards": [s.stats() for s in self.shards.values()],
                "replica_alive": None if self.link is None else self.link.alive}

    # --- the loop ---------------------------------------------------------------------------------
    def serve(self):
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        if self.link is not None:
            poller.register(self.link.socket, zmq.POLLIN)
        next_tick = 0.0
        while self.running:
            events = dict(poller.poll(50))
            if self.socket in events:
                for _ in range(64):
                    try:
                        ident, frames = transport.recv(self.socket, zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.handle(ident, frames)
            if self.link is not None:
                for ident, frames in self.link.poll(events):
                    transport.send(self.socket, ident, frames)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + 0.1
                self.drop_silent()
                if self.exit_with and not _alive(self.exit_with):
                    log.warning("server %d: process %d ended, so does this server", self.index, self.exit_with)
                    self.running = False
        self.close()

    def close(self):
        """Stop: a last checkpoint of every primary shard changed since its previous one, then the sockets."""
        for shard in self.shards.values():
            if shard.updates != self.saved.get(shard.index, 0):
                self.maybe_checkpoint(shard, force=True)
        self.socket.close(linger=0)
        if self.link is not None:
            self.link.socket.close(linger=0)
        self.context.term()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def add_arguments(parser):
    parser.add_argument("--index", type=int, required=True, help="this server's position in --addresses")
    parser.add_argument("--addresses", required=True, help="every server's tcp://HOST:PORT, comma-separated")
    parser.add_argument("--mode", default="sync", help=f"update mode: {modes.CHOICES}")
    parser.add_argument("--no-replicate", action="store_true", help="no replica of each shard on the next server")
    parser.add_argument("--checkpoint", default=None, help="directory of the servers' checkpoints")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint every K updates (0: never)")
    parser.add_argument("--member-timeout", type=float, default=10.0,
                        help="seconds of silence after which a worker others wait on is dropped")
    parser.add_argument("--replica-timeout", type=float, default=5.0,
                        help="seconds without an acknowledgement after which a replica counts as dead")
    parser.add_argument("--compression", default="none", help="compression spec of pulls (the workers' pushes "
                                                              "name their own)")
    parser.add_argument("--workers", type=int, default=1,
                        help="workers the job starts with: steps wait until that many joined")
    parser.add_argument("--exit-with", type=int, default=None, help="end when this process id ends")


def run(args):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    server = Server(args.index, args.addresses.split(","), args.mode, replicate=not args.no_replicate,
                    checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
                    member_timeout=args.member_timeout, replica_timeout=args.replica_timeout,
                    compression=args.compression, key=transport.job_key(), exit_with=args.exit_with,
                    workers=args.workers)
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "running", False))
    signal.signal(signal.SIGINT, lambda *_: setattr(server, "running", False))
    print(f"hvdkit ps server {args.index} listening on {server.addresses[args.index]} ({server.mode})",
          file=sys.stderr, flush=True)
    server.serve()
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m hvdkit.ps.server", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
