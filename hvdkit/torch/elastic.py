"""Elastic training with hvdkit's optimizer: ranks may leave or join, training goes on.

Under ``horovodrun --gloo --min-np A --max-np B --host-discovery-script S``
Horovod restarts itself whenever the set of workers changes. A worker that
dies makes a collective fail on the others (``HorovodInternalError``): they
roll back to the last ``commit()``, restart Horovod with the workers that
remain, take the state of the new rank 0 and go on. A host that appears or
leaves the discovery script's list is noticed at a ``commit()``
(``HostsUpdatedInterrupt``): nothing is rolled back.

:class:`ElasticState` is Horovod's elastic ``State`` for an hvdkit job: the
model, hvdkit's ``DistributedOptimizer`` with its exchange state (error-feedback
residuals, PowerSGD factors, step count), an optional ``ShardedSampler``
and any counters. When the world changes it rebuilds what depends on it:

* the optimizer's exchange gets the new world size and positions
  (``DistributedOptimizer.world_changed``). Error-feedback residuals are
  kept when the size is unchanged and dropped (with one note on rank 0)
  when it changed: each holds its rank's unsent gradient already divided by
  the old size, and the residual of a rank that left is lost anyway, so
  rescaling the rest would not recover the update. Dropping them costs what
  a restart of error feedback costs, a few steps of compression error.
  PowerSGD's factors and the step count (which decides the warm-up and the
  random seeds every rank must agree on) are taken from rank 0.
* a ``ShardedSampler`` is cut for the new world: its position is kept in
  samples of the epoch consumed by all ranks together, and the new ranks
  start at ``consumed // new_size`` each, so no sample of the epoch is
  skipped and fewer than ``new_size`` are read twice.
* :func:`world_topology` gives the new layout, flat. ``hvdkit.topology.init``
  does not serve here: it reads the layout from the launcher's variables
  before Horovod starts, but after an elastic restart Horovod learns rank and
  size from the rendezvous during its start, drops the node process sets
  registered at the first start, and elastic hosts often hold unequal slots,
  which it refuses under Gloo. So hierarchical exchange, local SGD and
  node-scope averaging are not available under elastic.

In a script (``hvdkit.training.elastic_loop`` is the full version)::

    import hvdkit.torch as hvd
    from hvdkit.torch import elastic

    elastic.init()                                  # not hvd.init()
    optimizer = hvd.DistributedOptimizer(base, model.named_parameters(), compression="topk:0.01")
    state = elastic.ElasticState(model, optimizer, epoch=0, batch=0)

    @elastic.run
    def train(state):                               # state.topology: this attempt's world
        for state.epoch in range(state.epoch, epochs):
            ...                                     # steps; state.commit() every N of them
            state.batch = 0
            state.commit()

    train(state)

Two Horovod 0.28.1 facts shape :func:`prepare_environment`. Its parameter
manager keeps its state across a restart, and once both
``HOROVOD_CYCLE_TIME`` and ``HOROVOD_FUSION_THRESHOLD`` are fixed from the
environment the next start writes into an empty vector
(``BayesianParameter::SetValue``): a segfault at the first reset, seen
here. So hvdkit fixes only the cycle time under elastic (the same code then
leaves Horovod's own fusion threshold at 1 MiB after a restart, by reading
of the source; hvdkit hands Horovod one fused bucket per operation, so
little rides on it). And a survivor waiting on a live peer sees no error
until Gloo's timeout expires, which bounds how fast a failure is handled:
hvdkit lowers it from 30 s to 10 s (:data:`ELASTIC_DEFAULTS`).
"""
import copy
import functools
import os
import socket
import sys
import time

import horovod.torch as hvd
from horovod.common.elastic import ObjectState

from hvdkit import topology
from hvdkit.runtime import horovod_env

__all__ = ["ELASTIC_DEFAULTS", "ElasticState", "init", "load_sampler_position", "prepare_environment",
           "resume_start", "run", "sampler_position", "world_topology"]

CYCLE_TIME = "HOROVOD_CYCLE_TIME"
FUSION_THRESHOLD = "HOROVOD_FUSION_THRESHOLD"

GLOO_TIMEOUT = "HOROVOD_GLOO_TIMEOUT_SECONDS"

ELASTIC_DEFAULTS = {
    # How long a Gloo operation waits for a peer before failing. When a worker dies, a survivor
    # waiting on a live peer sees no error until this expires, so it bounds the recovery. Measured
    # from SIGKILL to the first step on the smaller world (3 -> 2 ranks, tests/integration/
    # test_elastic.py's job, a loaded 2-core machine): Horovod's 30 s gave 30.3-30.9 s; 10 s gave
    # 10.4-12.4 s (median 11.1 s of 6; 2.7 s once, when both survivors saw the connection drop);
    # 5 s gave 5.3-6.6 s. It also bounds how far apart the first workers may reach Horovod's start
    # (seconds apart under load), hence 10 s rather than less.
    GLOO_TIMEOUT: "10",
}


def prepare_environment(environ=None):
    """hvdkit's Horovod settings that survive an elastic restart; returns the values now in effect.

    Exported values win, but exporting both ``HOROVOD_CYCLE_TIME`` and ``HOROVOD_FUSION_THRESHOLD``
    is refused: Horovod 0.28.1 segfaults at the first reset with both set."""
    environ = os.environ if environ is None else environ
    if environ.get(CYCLE_TIME) is not None and environ.get(FUSION_THRESHOLD) is not None:
        raise ValueError(f"{CYCLE_TIME}={environ[CYCLE_TIME]!r} and {FUSION_THRESHOLD}={environ[FUSION_THRESHOLD]!r} "
                         f"are both set: Horovod 0.28.1 crashes (segfault) when an elastic job restarts it with "
                         f"both fixed; unset one of them")
    timeout = environ.get(GLOO_TIMEOUT)
    if timeout is not None and not (timeout.strip().isdigit() and int(timeout) > 0):
        raise ValueError(f"{GLOO_TIMEOUT}={timeout!r}: must be a whole number of seconds >= 1")
    wanted = dict(horovod_env.DEFAULTS, **ELASTIC_DEFAULTS)
    wanted.pop(FUSION_THRESHOLD)  # Horovod's default (128 MiB) instead: the cycle time gains more
    if FUSION_THRESHOLD in environ:
        wanted.pop(CYCLE_TIME)
    return {name: environ.setdefault(name, value) for name, value in wanted.items()}


def init():
    """Start Horovod for an elastic job (in place of ``hvdkit.torch.init()``)."""
    try:
        topology.current()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("hvdkit.torch.elastic.init: hvdkit.torch.init() already ran; its node process sets do not "
                           "survive an elastic restart of Horovod. Call hvdkit.torch.elastic.init() instead.")
    prepare_environment()
    hvd.init()


def world_topology():
    """Collective: the ``hvdkit.topology.Topology`` of the current world (ranks grouped by their
    horovodrun host name; no process sets)."""
    host = os.environ.get("HOROVOD_HOSTNAME") or socket.gethostname()
    hosts = hvd.allgather_object(host, name="hvdkit.torch.elastic.hosts")
    return topology.topology_for(hvd.rank(), topology.layout_from_node_keys(hosts), launcher="gloo")


def resume_start(consumed, size, capacity):
    """Indices each of ``size`` ranks skips to resume an epoch of which ``consumed`` samples are done
    (strided shards: rank r's first k indices are positions r, r+size, ...); at most ``capacity``."""
    return min(consumed // size, capacity)


def sampler_position(sampler):
    """A ``ShardedSampler``'s place in its epoch, independent of the world size:
    ``{"epoch", "consumed"}`` with ``consumed`` counted over all ranks."""
    saved = sampler.state_dict()
    return {"epoch": saved["epoch"], "consumed": saved["start"] * sampler.num_replicas}


def load_sampler_position(sampler, position):
    """Make ``sampler`` (cut for its current ``num_replicas``/``rank``) resume at ``position``."""
    from hvdkit.data import sharding

    capacity = sharding.shard_capacity(len(sampler.dataset), sampler.num_replicas, sampler.remainder)
    start = resume_start(position["consumed"], sampler.num_replicas, capacity)
    sampler.load_state_dict({"epoch": position["epoch"], "start": start, "seed": sampler.seed})


def _bucket_states(optimizer_state):
    return optimizer_state.get("hvdkit", {}).get("buckets", {}).values()


def _drop_residuals(optimizer_state):
    for bucket_state in _bucket_states(optimizer_state):
        bucket_state["residual"] = None


def _shared_exchange(exchange):
    """What of an optimizer's exchange state every rank must hold alike (no residuals)."""
    return {"steps": exchange["steps"],
            "buckets": {key: {"numel": s["numel"], "memory": s["memory"], "steps": s["steps"]}
                        for key, s in exchange["buckets"].items()}}


class ElasticState(ObjectState):
    """Horovod elastic state for hvdkit: ``model``, ``optimizer`` (hvdkit's or a torch optimizer),
    ``sampler`` (a ``ShardedSampler``) and ``counters`` (small picklable values, e.g. ``epoch=0``),
    all exposed as attributes. ``commit()`` snapshots them in memory; a failed collective restores
    the snapshot. ``topology`` is the current world's layout, refreshed at each (re)start by
    :func:`run`. The sampler's position at a commit is what it has yielded this epoch: commit while
    iterating it (exact with ``DataLoader(num_workers=0)``; workers that prefetch run ahead)."""

    def __init__(self, model, optimizer=None, sampler=None, **counters):
        import torch

        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"ElasticState: model must be a torch.nn.Module, got {type(model).__name__}")
        if getattr(optimizer, "local_sgd", None) is not None:
            raise ValueError("ElasticState: local SGD (DistributedOptimizer(local_sgd=...)) averages over node "
                             "process sets that an elastic restart drops; use per-step gradient averaging")
        if sampler is not None and not hasattr(sampler, "num_replicas"):
            raise ValueError(f"ElasticState: sampler must be a hvdkit ShardedSampler, got {type(sampler).__name__}")
        reserved = {"model", "optimizer", "sampler", "topology", "world_size"} & set(counters)
        if reserved:
            raise ValueError(f"ElasticState: counter names {sorted(reserved)} are taken by the state itself")
        self.model = model  # parameters and buffers: broadcast from rank 0 at every (re)start
        self.optimizer = optimizer  # its state_dict carries hvdkit's exchange state under "hvdkit"
        self.sampler = sampler  # re-cut for every new world
        self.topology = None  # the current world (hvdkit.topology.Topology), set by run()
        self.world_size = hvd.size()  # the size the exchange and sampler are cut for
        self.resets = []  # (seconds from failure or interrupt to restarted Horovod, old size, new size)
        self._failed_at = None  # when the last failure or host change was caught
        self._snapshot = None  # model, optimizer and sampler at the last commit
        super().__init__(bcast_object=hvd.broadcast_object, get_rank=hvd.rank, **counters)
        self.save()

    # --- Horovod's State interface ------------------------------------------------
    def save(self):
        """Snapshot everything in host memory (deep copies: training goes on updating the live ones)."""
        snapshot = {"model": copy.deepcopy(self.model.state_dict())}
        if self.optimizer is not None:
            snapshot["optimizer"] = copy.deepcopy(self.optimizer.state_dict())
        if self.sampler is not None:
            snapshot["sampler"] = sampler_position(self.sampler)
        self._snapshot = snapshot
        self._saved_state = {name: copy.deepcopy(getattr(self, name)) for name in self._saved_state}

    def restore(self):
        """Back to the last commit (a collective failed: this step's updates may be partial)."""
        self._failed_at = time.perf_counter()
        self.model.load_state_dict(self._snapshot["model"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(copy.deepcopy(self._snapshot["optimizer"]))
        if self.sampler is not None:
            load_sampler_position(self.sampler, self._snapshot["sampler"])
        for name, value in self._saved_state.items():
            setattr(self, name, copy.deepcopy(value))

    def check_host_updates(self):
        try:
            super().check_host_updates()
        except Exception:
            self._failed_at = time.perf_counter()
            raise

    def reset(self):
        """Horovod restarted with another world: re-cut what depends on it (no collectives here)."""
        old, new = self.world_size, hvd.size()
        keep = old == new
        if self.optimizer is not None and hasattr(self.optimizer, "world_changed"):
            had_residuals = any(s["residual"] is not None for s in _bucket_states(self.optimizer.state_dict()))
            self.optimizer.world_changed(keep_residuals=keep)
            if not keep:
                _drop_residuals(self._snapshot["optimizer"])
                if hvd.rank() == 0 and had_residuals:
                    print(f"hvdkit elastic: world size {old} -> {new}: error-feedback residuals reset (they were "
                          f"divided by {old}, and the departed ranks' shares are gone)", file=sys.stderr, flush=True)
        if self.sampler is not None:
            self.sampler.num_replicas, self.sampler.rank = new, hvd.rank()
            load_sampler_position(self.sampler, self._snapshot["sampler"])
        self.world_size = new
        if self._failed_at is not None:
            self.resets.append((time.perf_counter() - self._failed_at, old, new))
            self._failed_at = None

    def sync(self):
        """Collective: every rank takes rank 0's state (residuals stay per rank)."""
        from hvdkit.torch.state_sync import broadcast_optimizer_state

        hvd.broadcast_parameters(self.model.state_dict(), root_rank=0)
        if self.optimizer is not None:
            broadcast_optimizer_state(self.optimizer, root_rank=0, model=self.model)
            self._sync_exchange()
        if self.sampler is not None:  # the committed position: a sampler not iterated since a load reports stale
            position = hvd.broadcast_object(self._snapshot["sampler"], 0, name="hvdkit.torch.elastic.sampler")
            load_sampler_position(self.sampler, position)
        super().sync()

    def _sync_exchange(self):
        state = self.optimizer.state_dict()
        mine = state.get("hvdkit")
        if mine is None:
            return
        shared = hvd.broadcast_object(_shared_exchange(mine), 0, name="hvdkit.torch.elastic.exchange")
        for key, bucket_state in shared["buckets"].items():
            bucket_state["residual"] = mine["buckets"].get(key, {}).get("residual")
        state["hvdkit"] = dict(mine, steps=shared["steps"], buckets=shared["buckets"])
        self.optimizer.load_state_dict(state)


def run(func):
    """Decorator: Horovod's ``hvd.elastic.run`` for an :class:`ElasticState` (the first argument),
    which also refreshes ``state.topology`` before each attempt of ``func``."""
    @functools.wraps(func)
    def attempt(state, *args, **kwargs):
        state.topology = world_topology()
        return func(state, *args, **kwargs)

    return hvd.elastic.run(attempt)


def _export_horovod_elastic():
    """``hvd.elastic.TorchState``, ``ElasticSampler``, ... keep working with ``import hvdkit.torch as hvd``."""
    import horovod.torch.elastic as horovod_elastic

    from hvdkit import dropin

    dropin.export_horovod_names(horovod_elastic, globals())


_export_horovod_elastic()
