"""``hvdkit train --mode ps``: the job trained through parameter servers, for both frameworks.

The servers (:mod:`hvdkit.ps`) hold the model and apply the workers' updates.
``hvdkit train -np N --mode ps`` starts the servers in its own process and
each of the N workers as a launch of its own (:mod:`hvdkit.training.ps_job`),
so that a worker's death ends no other: the servers drop it and the rest go
on. The workers meet through the servers, never through a collective of
theirs. Started by a launcher of the user's own (``mpirun -np N hvdkit train
--mode ps``) with no ``HVDKIT_PS_SERVERS`` given, rank 0 starts the servers
instead and stops them at the end; with ``HVDKIT_PS_SERVERS`` given
(``hvdkit ps serve``), the job uses those. Under one MPI launch the
launcher, not hvdkit, decides what a dead rank ends.

Each worker trains on its shard of the data as the allreduce job does
(same models, data, sharding and records: the framework parts
:mod:`hvdkit.training.ps_torch` and :mod:`hvdkit.training.ps_tf` reuse the
allreduce loops' helpers), with the framework's own optimizer stepped through
``hvdkit.ps``'s shim. Within an epoch each worker runs at the pace its
``--update`` mode allows; at each epoch's end the workers still alive meet
(``PSWorker.meet``): in the delta modes every worker then takes the servers'
parameters (so all go on from the same model), and a ``backup:B`` worker
leaves the membership while it waits there, so the others' last steps close
without it. Worker 0, the chief, then scores the whole test set and writes the
allreduce job's records (``metrics.jsonl``, TensorBoard, the epoch lines)
from everyone's totals, plus the servers' side: each worker's clock,
staleness and late updates dropped (:func:`ps_fields`).
"""
import collections
import os
import socket
import sys

from hvdkit.errors import UsageError
from hvdkit.ps import launch
from hvdkit.ps import worker as ps_worker
from hvdkit.runtime import env_check
from hvdkit.training import metrics

__all__ = ["SERVERS_LOG", "FrameworkPart", "Place", "StepMeter", "check_checkpoint", "member_timeout", "place",
           "ps_fields", "start_servers", "train"]

SERVERS_LOG = "ps-servers.log"  # in --log-dir: what the servers log (start, dropped workers, failovers)
# Seconds a worker others wait on may stay silent before the servers drop it. Generous: a worker computes
# a step without a word to the servers (a large model's step on a busy CPU), and a dropped sync worker
# cannot come back. HVDKIT_PS_MEMBER_TIMEOUT replaces it.
MEMBER_TIMEOUT = 30.0
# Set by hvdkit train for workers launched one by one: the job's worker count and its hosts. Unset, the
# workers are the ranks of one launch, and Horovod knows both.
WORKERS_ENV, NODES_ENV = "HVDKIT_PS_WORKERS", "HVDKIT_PS_NODES"

Place = collections.namedtuple("Place", "rank size num_nodes")

StepStats = collections.namedtuple(
    "StepStats", "bytes_sent dense_bytes intra_node_bytes cross_node_bytes dense_cross_node_bytes")


def start_servers(config, workers, hosts, exit_with=None):
    """Start ``config.servers`` servers on this host for ``workers`` ranks running on ``hosts`` (names);
    the ``hvdkit.ps.launch.ServerGroup``, whose ``env`` the workers need. They end with the process
    ``exit_with`` (default: this one) at the latest, and log to ``--log-dir``/ps-servers.log."""
    os.makedirs(config.log_dir, exist_ok=True)
    with open(os.path.join(config.log_dir, SERVERS_LOG), "a") as log:  # the servers keep their own descriptor
        return launch.start_servers(config.servers, config.update, workers, host=launch.listen_host(hosts),
                                    compression=config.compression, member_timeout=member_timeout(),
                                    checkpoint=config.checkpoint, exit_with=exit_with or os.getpid(), stderr=log)


def check_checkpoint(config):
    """A ``--checkpoint`` directory that holds servers' shards must be this job's: as many shards as
    ``--servers`` and saved in its ``--update`` mode (UsageError naming both otherwise)."""
    import glob

    from hvdkit.ps import modes, store
    from hvdkit.state import checkpoint

    if not config.checkpoint:
        return
    found = sorted(glob.glob(os.path.join(glob.escape(config.checkpoint), "shard-*")))
    if not found:
        return
    if len(found) != config.servers:
        raise UsageError(f"--checkpoint {config.checkpoint} holds the shards of {len(found)} parameter server(s); "
                         f"resume it with --servers {len(found)}, not {config.servers}")
    for shard in range(len(found)):
        try:
            saved = store.load(config.checkpoint, shard)
        except checkpoint.CheckpointError as err:
            raise UsageError(f"--checkpoint {config.checkpoint}: {err}") from None
        if saved is not None and saved["mode"] != str(modes.parse(config.update)):
            raise UsageError(f"--checkpoint {config.checkpoint} was saved by a job with --update {saved['mode']}; "
                             f"resume it with that mode, not --update {config.update}")


def member_timeout(environ=os.environ):
    """``HVDKIT_PS_MEMBER_TIMEOUT`` (checked with the other variables: ``hvdkit.runtime.env_check``), or
    ``MEMBER_TIMEOUT``."""
    value = env_check.value(env_check.PS_MEMBER_TIMEOUT, environ)
    return MEMBER_TIMEOUT if value is None else value


def place(topology, environ=os.environ):
    """This worker's index, the job's worker count and its nodes: hvdkit train's (one launch per worker,
    ``HVDKIT_PS_WORKERS``), or else the launch's own, from Horovod's ``topology``."""
    if environ.get(WORKERS_ENV):
        return Place(int(environ["HVDKIT_PS_WORKER"]), int(environ[WORKERS_ENV]), int(environ.get(NODES_ENV, "1")))
    return Place(topology.rank, topology.size, topology.num_nodes)


def stop_servers(group, log_dir, prog="hvdkit train"):
    """Stop ``group``, saying which servers had already ended on their own (and where their log is)."""
    for index, process in enumerate(group.processes):
        if process.poll() is not None:
            print(f"{prog}: parameter server {index} ({group.addresses[index]}) ended during the job with exit "
                  f"code {process.returncode}; its log: {os.path.join(log_dir, SERVERS_LOG)}", file=sys.stderr)
    group.stop()


class StepMeter:
    """A worker's traffic per step, from its client's byte counters: the payload it sent (pushes, pings) and,
    as the dense figure, one fp32 push of the model."""

    def __init__(self, ps, dense_bytes):
        self.ps, self.dense_bytes = ps, dense_bytes
        self.sent = ps.client.bytes_sent

    def start(self):
        """At the start of an epoch: the joins and leaves between epochs are no step's traffic."""
        self.sent = self.ps.client.bytes_sent

    def step(self):
        sent, self.sent = self.ps.client.bytes_sent - self.sent, self.ps.client.bytes_sent
        return StepStats(sent, self.dense_bytes, 0, 0, 0)


def _epoch_stats(ps, before):
    """This worker's counters for the epoch since ``before`` (its stats at the previous epoch's end); its
    staleness counts start again."""
    now = ps.stats()
    ps.staleness = [0, 0, 0]
    return now, {"worker": now["worker"], "clock": now["clock"], "steps": now["steps"] - before["steps"],
                 "dropped": now["dropped"] - before["dropped"],
                 "bytes_received": now["bytes_received"] - before["bytes_received"],
                 "staleness_count": now["staleness_count"], "staleness_sum": now["staleness_sum"],
                 "staleness_max": now["staleness_max"]}


def ps_fields(config, gathered):
    """The parameter-server fields of an epoch's record, from the epoch stats of every worker at its end
    (``workers``, by index: a worker that died is missing): ``worker_clocks`` (each worker's clock at the
    epoch's end: steps for ssp and async, the servers' step for sync and backup), ``worker_staleness`` and
    ``worker_staleness_max`` (per answer: updates the servers applied besides the worker's own between two of
    its pulls), ``worker_dropped`` (backup: its late updates the servers dropped), and their summaries
    ``clock_min``, ``clock_max``, ``staleness_mean``, ``staleness_max``, ``dropped_updates``, plus
    ``bytes_received_per_step`` (pulls, per worker and step)."""
    clocks = [g["clock"] for g in gathered]
    answers = sum(g["staleness_count"] for g in gathered)
    return {
        "update": config.update, "servers": config.servers, "workers": [g["worker"] for g in gathered],
        "worker_clocks": clocks, "clock_min": min(clocks), "clock_max": max(clocks),
        "worker_staleness": [g["staleness_sum"] / g["staleness_count"] if g["staleness_count"] else 0.0
                             for g in gathered],
        "worker_staleness_max": [g["staleness_max"] for g in gathered],
        "staleness_mean": sum(g["staleness_sum"] for g in gathered) / answers if answers else 0.0,
        "staleness_max": max(g["staleness_max"] for g in gathered),
        "worker_dropped": [g["dropped"] for g in gathered],
        "dropped_updates": sum(g["dropped"] for g in gathered),
        "bytes_received_per_step": sum(g["bytes_received"] for g in gathered) / max(1, sum(g["steps"]
                                                                                          for g in gathered)),
    }


def format_epoch(record):
    """The allreduce job's epoch line, then the clocks, staleness and late updates of the servers' side."""
    low, high = record["clock_min"], record["clock_max"]
    return (metrics.format_epoch(record) + f"  clock {low}" + (f"..{high}" if high != low else "")
            + f"  staleness {record['staleness_mean']:.2f} (max {record['staleness_max']})"
            + f"  dropped {record['dropped_updates']}")


class FrameworkPart:
    """What the framework parts share: the allreduce loop's (``loop``: ``torch_loop`` or ``tf_loop``) test
    scoring on ``model``, ``x_test``, ``y_test``; Horovod's object collectives, for a launch of all workers."""

    loop = None

    def accuracy(self):
        """The chief's: the whole test set, scored alone (the other workers may be gone)."""
        return self.loop.correct(self.model, self.x_test, self.y_test) / len(self.y_test)

    def allgather_object(self, obj, name):
        return self.hvd.allgather_object(obj, name=name)

    def broadcast_object(self, obj, name):
        return self.hvd.broadcast_object(obj, root_rank=0, name=name)


def _connect(config, part):
    """(the servers' variables for this worker, the ServerGroup this rank started or None, whether rank 0 of
    this launch started servers). Without ``HVDKIT_PS_SERVERS`` (the user's own launcher), rank 0 starts the
    servers: loopback when every rank runs on its host, else the address the ranks' hosts reach."""
    if os.environ.get("HVDKIT_PS_SERVERS"):
        return dict(os.environ), None, False
    hosts = part.allgather_object(socket.gethostname(), "hvdkit.ps.hosts")
    group = start_servers(config, part.size, hosts) if part.rank == 0 else None
    env = part.broadcast_object(None if group is None else group.env, "hvdkit.ps.env")
    return dict(os.environ, **env), group, True


def _describe(config, part, ps, started):
    servers = len(ps.edges) - 1
    where = "started by rank 0" if started else "beside the job"
    return (f"hvdkit train: {config.model} on {config.dataset} ({part.dataset.describe()}), {part.size} workers "
            f"on {part.place.num_nodes} node(s), {servers} parameter server(s) {where} "
            f"({', '.join(ps.client.addresses)}{', replicated' if ps.client.replicated else ''}), update "
            f"{ps.mode}, compression {config.compression}")


def run(config, part):
    """Train on this worker through the servers. ``part``: the framework's side (``ps_torch.Part``,
    ``ps_tf.Part``): its model and data set up, ``place`` (``rank``, ``size``)/``dataset``/``numel``/
    ``dense_bytes``/``framework``, and ``shim(ps)``, ``train_epoch(epoch, totals, meter)``, ``accuracy()``,
    ``allgather_object``/``broadcast_object(obj, name)``."""
    environ, group, started = _connect(config, part)
    try:
        ps = ps_worker.from_env(part.numel, dict(environ, HVDKIT_PS_WORKER=str(part.rank)))
        shim = part.shim(ps)
        writer = metrics.MetricsWriter(config.log_dir, part.framework) if part.rank == 0 else None
        if writer is not None:
            print(_describe(config, part, ps, started), flush=True)
        if ps.job_started():  # its peers are past the meetings it would wait at: refuse rather than stall them
            ps.client.close()
            raise UsageError(f"worker {part.rank} came to a running job (its {part.size} workers had all joined): "
                             f"hvdkit train --mode ps starts its workers together and goes on without those that "
                             f"die; add workers to a running job through hvdkit.ps.worker.PSWorker instead")
        shim.join()  # every worker starts from the servers' parameters (the first to arrive sets them)
        ps.meet("hvdkit.ps.joined")  # and all start together (async would not wait)
        if writer is not None and ps.epoch:
            print(f"hvdkit train: resuming from {config.checkpoint} at epoch {ps.epoch} (the servers' checkpoint "
                  f"of update {ps.updates}; the workers' optimizer state starts afresh)", flush=True)
        meter = StepMeter(ps, part.dense_bytes)
        before, record = ps.stats(), None
        for epoch in range(ps.epoch, config.epochs):
            totals = metrics.EpochTotals()
            meter.start()
            part.train_epoch(epoch, totals, meter)
            if ps.mode.name == "backup":  # nobody waits for this worker at the meeting below
                ps.pause()
            before, mine = _epoch_stats(ps, before)
            gathered = [value for _, value in ps.meet(f"hvdkit.ps.epoch.{epoch}",
                                                      {"ps": mine, "sums": metrics.summed_values(totals)})]
            if not ps.mode.pushes_gradients:  # (sync workers hold the same parameters already)
                shim.join()
            if writer is not None:
                record = _record(config, part, epoch, totals, gathered)
                writer.write(record)
                print(format_epoch(record), flush=True)
            if config.checkpoint:  # the chief has the servers save; nobody pushes until they did
                if writer is not None:
                    shim.save(epoch + 1)
                ps.meet(f"hvdkit.ps.saved.{epoch}")
        shim.leave()
        if started:  # every rank left before rank 0 stops its servers
            part.allgather_object(None, "hvdkit.ps.left")
        if writer is not None:
            metrics.finish(writer, record)
    finally:
        if group is not None:
            stop_servers(group, config.log_dir)
    return 0


def _record(config, part, epoch, totals, gathered):
    """The chief's record of ``epoch``: the allreduce job's fields summed over the workers at the epoch's meeting
    (``gathered``: their totals and stats), the test accuracy it scores itself, and the servers' side."""
    sums = [sum(column) for column in zip(*(g["sums"] for g in gathered))]
    return dict(metrics.epoch_record(epoch, totals, part.accuracy(), lambda _: sums, len(gathered)),
                **ps_fields(config, [g["ps"] for g in gathered]))


def train(config):
    """A rank's entry point: the framework's part, then :func:`run`."""
    if config.framework == "tensorflow":
        from hvdkit.training import ps_tf as framework
    else:
        from hvdkit.training import ps_torch as framework
    return run(config, framework.Part(config))
