"""What both training loops' checkpoints share, framework-neutral: where training stands
(:class:`Position`), the payload format, the flags a resume must not change, and the collective
save and load of ``--checkpoint DIR`` (:mod:`hvdkit.state.checkpoint`, with the loop's codec).

The torch (:mod:`hvdkit.training.torch_state`) and TensorFlow (:mod:`hvdkit.training.tf_state`)
payloads differ in what they hold; the checks before any of it is put back are these, once.
"""
import dataclasses

from hvdkit.state import checkpoint
from hvdkit.state.checkpoint import CheckpointError

__all__ = ["FORMAT", "MUST_MATCH", "Position", "check_config", "check_saved", "load", "refuse_change", "save",
           "saved_value"]

FORMAT = 1  # of the shared payload both loops write

# Flags whose change would make the saved state mean something else (the data position, the
# optimizer's hyperparameters restored from the checkpoint, the exchange state's layout, which layers
# each rank's file holds: a K-stage pipeline saves each rank's own stage). --microbatches and
# --schedule may change (see hvdkit.training.pipeline_loop.check_chunks for the one exception): the
# loss of each micro-batch is divided by their number, so a step's gradient is the same for any.
MUST_MATCH = ("model", "dataset", "seed", "batch_size", "lr", "momentum", "compression", "hierarchical",
              "ranks_per_node", "average_every", "average_warmup", "pipeline_stages")


@dataclasses.dataclass
class Position:
    """Where training stands: the next step is step ``step`` of epoch ``epoch``."""

    epoch: int = 0
    step: int = 0  # steps of ``epoch`` already taken
    global_step: int = 0  # optimizer steps since the start of training (names the checkpoint)


def refuse_change(directory, name, before, now, why=""):
    flag = "--" + name.replace("_", "-")
    raise CheckpointError(f"the checkpoint in {directory!r} was saved with {flag} {before}, this run has "
                          f"{flag} {now}{why}: resume with the same value, or use a new --checkpoint directory")


def saved_value(saved, config, name):
    """The flag's value in a checkpoint's config; the flag's default where the checkpoint predates it
    (that run behaved as the default does, e.g. --pipeline-stages 1)."""
    if name in saved:
        return saved[name]
    return {f.name: f.default for f in dataclasses.fields(config)}[name]


def check_config(saved, config, directory):
    """Refuse to resume under flags that change what the saved state means, naming the flag."""
    for name in MUST_MATCH:
        before, now = saved_value(saved, config, name), getattr(config, name)
        if before != now:
            refuse_change(directory, name, before, now)


def check_saved(shared, config):
    """The shared payload's format, framework and flags must fit this run; returns its Position."""
    directory = config.checkpoint
    if shared.get("format") != FORMAT:
        raise CheckpointError(f"the checkpoint in {directory!r} has format {shared.get('format')!r}; "
                              f"this hvdkit reads format {FORMAT}")
    framework = shared["config"].get("framework")
    if framework != config.framework:
        raise CheckpointError(f"the checkpoint in {directory!r} was written by hvdkit train --framework {framework}, "
                              f"this run has --framework {config.framework}: resume it with the framework that "
                              f"wrote it, or use a new --checkpoint directory")
    check_config(shared["config"], config, directory)
    return Position(**shared["position"])


def _allgather(hvd, what):
    return lambda obj: hvd.allgather_object(obj, name=f"hvdkit.state.checkpoint.{what}")


def load(config, codec, hvd, topology):
    """Collective, at start: (shared payload, this rank's payload) of the newest save in
    ``config.checkpoint``, or None (no --checkpoint, or nothing saved yet)."""
    if not config.checkpoint:
        return None
    found = checkpoint.load_sharded(config.checkpoint, topology.rank, topology.size, _allgather(hvd, "load"),
                                    codec=codec)
    return None if found is None else found[1:]


def save(config, position, shared, local, codec, hvd, topology):
    """Collective: every rank writes its file of the checkpoint at ``position`` (rank 0 the shared one too)."""
    checkpoint.save_sharded(config.checkpoint, position.global_step, topology.rank, local, _allgather(hvd, "save"),
                            shared=shared if topology.rank == 0 else None, codec=codec)
