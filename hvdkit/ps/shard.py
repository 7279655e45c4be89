"""One shard's state on a server, and the mode rules that change it.

A ``Shard`` holds its slice of the parameters and who has pushed what; its
methods apply a request and return what has become answerable. They do no
I/O, so the server loop (``server``) and its replica share them, and the
unit tests drive them directly. Published parameter arrays are never written
in place (each update makes a new array), so a reply still in ZeroMQ's
queue keeps the values it was sent with.
"""
import numpy as np

from hvdkit.ps import modes

__all__ = ["Shard"]


class Shard:
    __slots__ = ("index", "mode", "params", "updates", "round", "acc", "contributors", "result", "clocks",
                 "last_seq", "pulled", "mirror_clock", "members", "dropped_late", "dropped_members",
                 "staleness", "primary", "views", "result_payload", "expected", "joined", "paused", "epoch")

    def __init__(self, index, mode, primary=True, expected=1):
        self.index = index
        self.mode = modes.parse(mode)
        # Workers the job starts with: no step completes (and no ssp worker runs ahead) before that many
        # joined, so the first worker to arrive does not train alone.
        self.expected = expected
        # Workers that ever joined this shard (since the servers started or resumed).
        self.joined = set()
        # This shard's slice of the parameters (sync: the leader's copy at ``mirror_clock``); None until a
        # worker's join brings the initial values.
        self.params = None
        # Applied updates (sync and backup: completed steps; ssp and async: applied deltas): checkpoints
        # are numbered by it.
        self.updates = 0
        # sync/backup: the step being gathered.
        self.round = 0
        # sync/backup: the sum of the current step's pushes, and who pushed.
        self.acc = None
        self.contributors = set()
        # sync: the mean of the last completed step, resent to a worker whose answer was lost.
        self.result = None
        # ssp: steps pushed per worker (its clock).
        self.clocks = {}
        # Highest push sequence number applied per worker: a push resent after a failover is not applied twice.
        self.last_seq = {}
        # async: ``updates`` when each worker last pulled (its next push's staleness).
        self.pulled = {}
        # sync: the step whose starting parameters ``params`` holds (a joining worker needs the current one).
        self.mirror_clock = 0
        # Workers in the job, as this shard sees them.
        self.members = set()
        # Workers out of the membership only for a while (``PSWorker.pause``): a meeting of the workers waits
        # for them too.
        self.paused = set()
        # backup: deltas that arrived after their step completed.
        self.dropped_late = 0
        # Workers removed after a timeout.
        self.dropped_members = []
        # async/ssp: staleness of each applied delta (count, sum, max).
        self.staleness = [0, 0, 0]
        # Whether this server answers workers for the shard (False: a replica, until it takes over).
        self.primary = primary
        # Compressed pulls: worker -> the parameters it holds (what it was sent, decoded).
        self.views = {}
        # sync with compressed pulls: the current result's payload, encoded once for every worker.
        self.result_payload = None
        # Epochs of the job done when this shard was last saved for it (``hvdkit train --mode ps
        # --checkpoint``), so that a restarted job knows where to go on.
        self.epoch = 0

    # --- membership -----------------------------------------------------------------------------
    def leader(self):
        return min(self.members) if self.members else None

    def started(self):
        """Whether the workers the job starts with have all joined (whoever joins for the first time now, a new
        worker or a restarted one, joins a running job)."""
        return len(self.joined) >= self.expected

    def join(self, worker, params):
        """Admit ``worker`` (initialising the shard from ``params`` if it is empty); its starting clock."""
        if self.params is None:
            self.params = np.array(params, dtype=np.float32)
        if params is not None and self.params.shape != np.shape(params):
            raise ValueError(f"shard {self.index} holds {self.params.size} elements, a worker joined with "
                             f"{np.size(params)}: the workers' models differ")
        # a worker joining a running ssp job starts at the slowest member's clock (so it stalls nobody); one of
        # the workers the job starts with starts at 0 like the others
        started = self.started()
        others = [self.clocks.get(w, 0) for w in self.members if w != worker] if started else []
        self.members.add(worker)
        self.joined.add(worker)
        self.paused.discard(worker)
        self.views.pop(worker, None)
        self.last_seq.pop(worker, None)  # a (re)started worker numbers its pushes from 0 again
        if self.mode.name == "ssp":
            self.clocks[worker] = min(others) if others else self.clocks.get(worker, 0)
            return self.clocks[worker]
        self.pulled[worker] = self.updates
        return self.round if self.mode.name in ("sync", "backup") else self.updates

    def leave(self, worker, pause=False):
        """``worker`` leaves the membership: for a while (``pause``: it comes back with a join) or for good."""
        self.members.discard(worker)
        self.clocks.pop(worker, None)
        self.views.pop(worker, None)
        if pause:
            self.paused.add(worker)
        else:
            self.paused.discard(worker)

    def drop(self, worker):
        self.leave(worker)
        self.dropped_members.append(worker)

    # --- pushes ---------------------------------------------------------------------------------
    def seen(self, worker, seq):
        """Whether push ``seq`` of ``worker`` was already applied (a resend after a failover)."""
        return seq <= self.last_seq.get(worker, -1)

    def push_gradient(self, worker, clock, seq, gradient, mirror=None):
        """sync: add ``worker``'s gradient for step ``clock``; 'late' when that step is already done."""
        if clock < self.round or (clock == self.round and worker in self.contributors):
            return "late"
        if clock > self.round:
            raise ValueError(f"worker {worker} pushed step {clock} while shard {self.index} gathers step "
                             f"{self.round}")
        self.members.add(worker)
        self.acc = np.array(gradient, dtype=np.float32) if self.acc is None else np.add(self.acc, gradient,
                                                                                       out=self.acc)
        self.contributors.add(worker)
        self.last_seq[worker] = seq
        if mirror is not None:
            self.params, self.mirror_clock = np.array(mirror, dtype=np.float32), clock
        return "added"

    def push_delta(self, worker, clock, seq, delta):
        """ssp/async/backup: apply (or gather, backup) ``worker``'s delta. Returns 'late' (backup: its step is
        done, the delta is dropped and counted), 'added' (gathered) or the applied (scaled) delta."""
        self.members.add(worker)
        if self.mode.name == "backup":
            if clock < self.round:
                self.dropped_late += 1
                self.last_seq[worker] = seq
                return "late"
            # clock > round: another shard closed its steps sooner and told the worker a later step; the delta
            # joins this shard's current step (each shard gathers its own first N - B, as TF's accumulators do)
            self.acc = np.array(delta, dtype=np.float32) if self.acc is None else np.add(self.acc, delta,
                                                                                        out=self.acc)
            self.contributors.add(worker)
            self.last_seq[worker] = seq
            return "added"
        staleness = self.updates - self.pulled.get(worker, self.updates)
        self.staleness = [self.staleness[0] + 1, self.staleness[1] + staleness, max(self.staleness[2], staleness)]
        applied = np.asarray(delta, dtype=np.float32)
        if self.mode.scaled and staleness > 1:
            applied = applied / np.float32(staleness)
        self.apply(applied)
        self.last_seq[worker] = seq
        if self.mode.name == "ssp":
            self.clocks[worker] = max(self.clocks.get(worker, 0), clock + 1)
        return applied

    def apply(self, delta):
        """params + delta as a new array (published arrays stay unchanged); one more update."""
        self.params = np.add(self.params, delta)
        self.updates += 1

    # --- completing a step ----------------------------------------------------------------------
    def step_complete(self):
        """sync: every member pushed; backup: N - B of them did (and at least one push either way)."""
        if not self.contributors or self.mode.name not in ("sync", "backup") or len(self.joined) < self.expected:
            return False
        if self.mode.name == "sync":
            return self.members <= self.contributors
        return len(self.contributors) >= modes.backup_quorum(len(self.members | self.contributors),
                                                             self.mode.backups)

    def complete_step(self):
        """Close the gathered step: sync keeps the mean gradient, backup applies the mean delta. Returns
        the array the replica must repeat (the sync result, or the applied mean delta)."""
        mean = self.acc / np.float32(len(self.contributors))
        self.acc, self.contributors = None, set()
        self.round += 1
        self.result_payload = None
        if self.mode.name == "sync":
            self.result = mean
            self.updates += 1
        else:
            self.apply(mean)
        return mean

    def ssp_ready(self, clock):
        if len(self.joined) < self.expected:
            return False
        return modes.ssp_ready(clock, [self.clocks.get(w, 0) for w in self.members], self.mode.staleness)

    # --- replication and checkpoints --------------------------------------------------------------
    def meta(self):
        """Everything but the arrays, as JSON-able values (the replica and the checkpoint carry it)."""
        return {"updates": self.updates, "round": self.round, "clocks": {str(k): v for k, v in self.clocks.items()},
                "last_seq": {str(k): v for k, v in self.last_seq.items()}, "mirror_clock": self.mirror_clock,
                "members": sorted(self.members), "paused": sorted(self.paused), "dropped_late": self.dropped_late,
                "pulled": {str(k): v for k, v in self.pulled.items()}, "joined": sorted(self.joined),
                "epoch": self.epoch}

    def load_meta(self, meta):
        self.updates, self.round = int(meta["updates"]), int(meta["round"])
        self.clocks = {int(k): int(v) for k, v in meta["clocks"].items()}
        self.last_seq = {int(k): int(v) for k, v in meta["last_seq"].items()}
        self.pulled = {int(k): int(v) for k, v in meta.get("pulled", {}).items()}
        self.mirror_clock = int(meta["mirror_clock"])
        self.members = set(meta["members"])
        self.paused = set(meta.get("paused", ()))
        self.joined = set(meta.get("joined", ()))
        self.dropped_late = int(meta["dropped_late"])
        self.epoch = int(meta.get("epoch", 0))

    def checkpoint_payload(self):
        return {**self.meta(), "shard": self.index, "mode": str(self.mode), "params": self.params}

    def restore(self, payload):
        """State from a checkpoint of a job whose processes all ended: nobody is a member yet, and sync resumes
        at the step whose starting parameters were saved."""
        if payload["mode"] != str(self.mode):
            raise ValueError(f"shard {self.index}: checkpoint of mode {payload['mode']!r} cannot resume a "
                             f"{self.mode} job")
        self.load_meta(payload)
        self.params = np.array(payload["params"], dtype=np.float32)
        self.members, self.clocks, self.pulled, self.joined, self.last_seq = set(), {}, {}, set(), {}
        self.paused = set()
        if self.mode.name == "sync":
            self.round = self.mirror_clock

    def stats(self):
        count, total, worst = self.staleness
        return {"shard": self.index, "primary": self.primary, "updates": self.updates, "round": self.round,
                "members": sorted(self.members), "clocks": {str(k): v for k, v in self.clocks.items()},
                "dropped_late": self.dropped_late, "dropped_members": list(self.dropped_members),
                "staleness_mean": total / count if count else 0.0, "staleness_max": worst,
                "numel": 0 if self.params is None else int(self.params.size), "started": self.started()}
