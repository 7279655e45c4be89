"""Where ``hvdkit train`` reports: a progress bar and per-epoch lines on rank 0,
``metrics.jsonl`` and TensorBoard events in the log directory. Other ranks log
only warnings and errors, tagged with their rank."""
import json
import os
import sys
import time
import types


def rank_tag(rank):
    return f"[rank {rank}]"


class MetricsWriter:
    """Appends one JSON object per epoch to ``metrics.jsonl`` and mirrors the
    numeric fields to TensorBoard. Only rank 0 creates one."""

    __slots__ = ("path", "_file", "_tensorboard")

    def __init__(self, log_dir):
        os.makedirs(log_dir, exist_ok=True)
        self.path = os.path.join(log_dir, "metrics.jsonl")  # one record per epoch
        self._file = open(self.path, "a", buffering=1)
        self._tensorboard = _tensorboard_writer(log_dir)  # None when tensorboard is absent

    def write(self, record):
        record = dict(record, time=time.time())
        self._file.write(json.dumps(record) + "\n")
        if self._tensorboard is not None:
            for key, value in record.items():
                if key not in ("epoch", "time") and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, record["epoch"])
            self._tensorboard.flush()

    def close(self):
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def _tensorboard_writer(log_dir):
    if "tensorflow" not in sys.modules:
        # TensorBoard's writer imports all of TensorFlow (seconds, and its
        # banners on every rank) unless its documented no-TensorFlow switch,
        # the module ``tensorboard.compat.notf``, exists.
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=log_dir)


def epoch_record(epoch, loss, accuracy, sums, size, steps):
    """An epoch's record from ``sums`` (samples, seconds, bytes sent, dense bytes), each summed over
    the ``size`` ranks; ``steps`` is one rank's."""
    samples, seconds, sent, dense = sums
    seconds_per_rank = seconds / size
    return {
        "epoch": epoch,
        "loss": loss,
        "test_accuracy": accuracy,
        "samples_per_sec": samples / seconds_per_rank if seconds_per_rank else 0.0,
        "samples_per_sec_per_rank": samples / seconds_per_rank / size if seconds_per_rank else 0.0,
        "bytes_per_step": sent / size / max(steps, 1),
        "compression_ratio": dense / sent if sent else 1.0,
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
    """The line rank 0 prints after each epoch."""
    return (f"epoch {record['epoch']:>3}  loss {record['loss']:.4f}  "
            f"test acc {100 * record['test_accuracy']:.2f}%  "
            f"{record['samples_per_sec']:.0f} samples/s ({record['samples_per_sec_per_rank']:.0f}/rank)  "
            f"{_human_bytes(record['bytes_per_step'])}/step sent  "
            f"ratio {record['compression_ratio']:.1f}x")


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
