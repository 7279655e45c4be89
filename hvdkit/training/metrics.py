"""Where ``hvdkit train`` reports, for both frameworks: what an epoch adds up
(:class:`EpochTotals`), its record, a progress bar and per-epoch lines on rank
0, ``metrics.jsonl`` and TensorBoard events in the log directory. Other ranks
log only warnings and errors, tagged with their rank. Imports no framework:
the loops pass in their own cross-rank sum and event writer's framework."""
import json
import os
import sys
import time

from hvdkit.training import events


def rank_tag(rank):
    return f"[rank {rank}]"


class MetricsWriter:
    """Appends one JSON object per epoch to ``metrics.jsonl`` and mirrors the numeric fields to
    TensorBoard, through ``framework``'s writer (:mod:`hvdkit.training.events`). Only rank 0 creates one."""

    __slots__ = ("path", "_file", "_events")

    def __init__(self, log_dir, framework):
        os.makedirs(log_dir, exist_ok=True)
        self._events = events.open_writer(framework, log_dir)  # None for torch without tensorboard
        self.path = os.path.join(log_dir, "metrics.jsonl")  # one record per epoch
        self._file = open(self.path, "a", buffering=1)

    def write(self, record):
        record = dict(record, time=time.time())
        self._file.write(json.dumps(record) + "\n")
        if self._events is not None:
            self._events.scalars({key: value for key, value in record.items()
                                  if key not in ("epoch", "time") and isinstance(value, (int, float))},
                                 record["epoch"])

    def close(self):
        self._file.close()
        if self._events is not None:
            self._events.close()


class EpochTotals:
    """What one epoch accumulates on this rank, summed across ranks at its end (:func:`epoch_record`).

    The torch loop adds each step itself; the Keras loop's callback adds them from ``fit``'s batch
    hooks. A mid-epoch checkpoint saves it (``to_dict``), so a resumed epoch reports the whole epoch."""

    __slots__ = ("loss_sum", "steps", "samples", "seconds", "bytes_sent", "dense_bytes", "intra_node_bytes",
                 "cross_node_bytes", "dense_cross_node_bytes")

    def __init__(self):
        self.loss_sum = 0.0  # sum of per-step mean losses
        self.steps = 0
        self.samples = 0  # training samples this rank processed
        self.seconds = 0.0  # wall time in training steps (evaluation excluded)
        self.bytes_sent = 0  # payload bytes this rank put on the wire
        self.dense_bytes = 0  # bytes an uncompressed exchange would have sent
        # Estimated wire bytes by link class (the slow one is between nodes), and what Horovod's flat
        # dense ring would have sent between nodes: the figure that says what compression saved there.
        self.intra_node_bytes = 0
        self.cross_node_bytes = 0
        self.dense_cross_node_bytes = 0

    def add_step(self, samples, seconds, traffic, loss=None):
        """One optimizer step: its samples, wall time, traffic (:func:`step_traffic`: bytes sent, dense
        bytes, then optionally wire bytes inside the node, between nodes and the dense ring's between
        nodes) and mean loss (None where the framework reports a running mean instead: :meth:`set_mean_loss`)."""
        sent, dense, *links = traffic
        intra, cross, dense_cross = links or (0, 0, 0)
        self.bytes_sent += sent
        self.dense_bytes += dense
        self.intra_node_bytes += intra
        self.cross_node_bytes += cross
        self.dense_cross_node_bytes += dense_cross
        self.seconds += seconds
        if loss is not None:
            self.loss_sum += loss
        self.steps += 1
        self.samples += samples

    def set_mean_loss(self, mean):
        """The mean loss of the steps so far, as Keras reports it (``logs["loss"]``): the sum it stands for."""
        self.loss_sum = mean * self.steps

    def to_dict(self):
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, saved):
        totals = cls()
        for name in cls.__slots__:
            setattr(totals, name, saved.get(name, 0))  # checkpoints from before the link classes lack them
        return totals


def step_traffic(local_sgd, stats, model_bytes):
    """(payload bytes this rank sent, bytes of the dense gradients they replaced, estimated wire bytes
    inside its node, between nodes, and the flat dense ring's between nodes) in the last step.

    ``local_sgd``: the step's ``hvdkit.averaging.PeriodicAverager`` or None; ``stats``: the gradient
    exchange's statistics of the step (None when it sent nothing). A local-SGD step sends nothing, or
    the fp32 model when it averaged; either way it stands in for one dense gradient exchange (its
    link classes are not counted)."""
    if local_sgd is not None and local_sgd.steps > local_sgd.warmup_steps:  # the step just taken was local
        return (model_bytes if local_sgd.last_scope else 0), model_bytes, 0, 0, 0
    if stats is None:
        return 0, 0, 0, 0, 0
    return (stats.bytes_sent, stats.dense_bytes, stats.intra_node_bytes, stats.cross_node_bytes,
            stats.dense_cross_node_bytes)


def summed_values(totals):
    """What ``epoch_record`` sums over the ranks, from one rank's ``totals``: a list of floats."""
    return [totals.loss_sum / max(totals.steps, 1), totals.samples, totals.seconds, totals.bytes_sent,
            totals.dense_bytes, totals.intra_node_bytes, totals.cross_node_bytes, totals.dense_cross_node_bytes]


def epoch_record(epoch, totals, accuracy, sum_over_ranks, size):
    """An epoch's record from this rank's ``totals`` and the test ``accuracy``. ``sum_over_ranks(values)``
    sums a list of floats (``summed_values``) over the ``size`` ranks (one float64 allreduce, in the loop's
    framework)."""
    loss, samples, seconds, sent, dense, intra, cross, dense_cross = sum_over_ranks(summed_values(totals))
    seconds_per_rank = seconds / size
    steps = totals.steps
    per_step = size * max(steps, 1)
    return {
        "epoch": epoch,
        "loss": loss / size,
        "test_accuracy": accuracy,
        "samples_per_sec": samples / seconds_per_rank if seconds_per_rank else 0.0,
        "samples_per_sec_per_rank": samples / seconds_per_rank / size if seconds_per_rank else 0.0,
        "bytes_per_step": sent / size / max(steps, 1),
        "compression_ratio": dense / sent if sent else 1.0,
        "intra_node_bytes_per_step": intra / per_step,
        "cross_node_bytes_per_step": cross / per_step,
        "cross_node_ratio": dense_cross / cross if cross else 1.0,
        "world_size": size,
        "steps": steps,
    }


def finish(writer, record):
    """Rank 0's end of a run: close the metrics files and print the final accuracy."""
    writer.close()
    if record is not None:
        print(f"hvdkit train: final test accuracy {100 * record['test_accuracy']:.2f}% "
              f"(metrics in {writer.path})", flush=True)


def format_epoch(record):
    """The line rank 0 prints after each epoch. Across nodes the ratio is the one on the slow link: the flat
    dense ring's bytes between nodes per byte this run sent there (a dense hierarchical run sends more
    in all, counting its node stages, but fewer between nodes)."""
    line = (f"epoch {record['epoch']:>3}  loss {record['loss']:.4f}  "
            f"test acc {100 * record['test_accuracy']:.2f}%  "
            f"{record['samples_per_sec']:.0f} samples/s ({record['samples_per_sec_per_rank']:.0f}/rank)  "
            f"{_human_bytes(record['bytes_per_step'])}/step sent")
    cross = record.get("cross_node_bytes_per_step", 0)
    if cross:
        return (line + f", {_human_bytes(cross)} between nodes  "
                f"ratio {record['cross_node_ratio']:.1f}x between nodes")
    return line + f"  ratio {record['compression_ratio']:.1f}x"


def _human_bytes(count):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024


def progress(iterable, total, rank, description):
    """A tqdm bar on rank 0 when stderr is a terminal; the plain iterable elsewhere."""
    if rank != 0 or not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=description, leave=False, dynamic_ncols=True)
